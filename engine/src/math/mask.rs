//! Text masks: one per branch, 1 for a real token and 0 for padding.

use crate::error::{Error, Result};

/// Rejects a mask that is not 0/1 or has a branch without a single 1.
pub fn validate_mask(mask: &[f32], batch: usize, text_len: usize) -> Result<()> {
    if let Some(v) = mask.iter().find(|&&v| v != 0.0 && v != 1.0) {
        return Err(Error::Invalid(format!(
            "text_mask: expected values 0 or 1, found {v}"
        )));
    }
    for b in 0..batch {
        if !mask[b * text_len..(b + 1) * text_len].contains(&1.0) {
            return Err(Error::Invalid(format!(
                "text_mask of branch {b}: expected at least one 1 (every encoder emits an end token), found none"
            )));
        }
    }
    Ok(())
}
