//! Adaptive noise for Wan-family video-to-video (docs/wan.md "Adaptive noise"): the
//! motion-aware noise controller of StreamDiffusionV2 [`chenfengxu714/StreamDiffusionV2`
//! `streamv2v/inference.py`, `compute_noise_scale_and_step`; paper arXiv 2511.07399 section
//! 4.1]. Each input video frame's motion is the RMS of its difference from the frame before
//! (pixels scaled to [-1, 1]); a chunk's motion is the largest over its frames, `d = min(1,
//! motion / 0.2)`, and the chunk's noise level follows
//! `s_j = 0.9 (s - 0.1 d) + 0.1 s_{j-1}` from the stream's strength `s` (the first chunk at
//! `s` itself): more motion, less noise, so a fast input keeps more of itself.

/// The motion that counts as full (`d = 1`): StreamDiffusionV2's divisor.
pub const FULL_MOTION: f64 = 0.2;
/// How far full motion lowers the level below the strength.
pub const RANGE: f64 = 0.1;
/// The weight of the new target against the previous chunk's level.
pub const LAMBDA: f64 = 0.9;

/// The RMS difference of two RGB8 frames of the same size, in units of pixels scaled to
/// [-1, 1] (`x / 127.5 - 1`), summed in f64.
pub fn frame_motion(frame: &[u8], before: &[u8]) -> f32 {
    let n = frame.len().min(before.len());
    if n == 0 {
        return 0.0;
    }
    let sum: f64 = frame
        .iter()
        .zip(before)
        .map(|(&a, &b)| {
            let d = (f64::from(a) - f64::from(b)) / 127.5;
            d * d
        })
        .sum();
    (sum / n as f64).sqrt() as f32
}

/// The motion of each latent frame encoded from `frames` video frames' motions: 4 frames a
/// latent frame, the first 1 alone when `lone_first` (the Wan VAE encoder at the stream's
/// start); each the largest of its frames'.
pub(super) fn latent_motion(frames: &[f32], lone_first: bool) -> Vec<f32> {
    let (head, rest) = frames.split_at(if lone_first { frames.len().min(1) } else { 0 });
    std::iter::once(head)
        .filter(|g| !g.is_empty())
        .chain(rest.chunks(4))
        .map(|g| g.iter().copied().fold(0.0, f32::max))
        .collect()
}

/// The controller's state: the strength it starts from and the last chunk's level.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseController {
    strength: f64,
    level: Option<f64>,
}

impl NoiseController {
    pub fn new(strength: f64) -> NoiseController {
        NoiseController {
            strength,
            level: None,
        }
    }

    /// The noise level of the next chunk, whose frames' largest motion is `motion` (ignored
    /// for the stream's first chunk, which starts at the strength).
    pub fn next_level(&mut self, motion: f32) -> f64 {
        let level = match self.level {
            None => self.strength,
            Some(before) => {
                let d = (f64::from(motion) / FULL_MOTION).clamp(0.0, 1.0);
                LAMBDA * (self.strength - RANGE * d) + (1.0 - LAMBDA) * before
            }
        };
        self.level = Some(level);
        level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn motion_is_the_rms_difference_in_unit_range() {
        assert_eq!(frame_motion(&[7, 9, 200], &[7, 9, 200]), 0.0);
        // Black to white is a difference of 2 in [-1, 1] units.
        assert!((frame_motion(&[255; 6], &[0; 6]) - 2.0).abs() < 1e-6);
        let m = frame_motion(&[10, 20], &[0, 20]);
        assert!((f64::from(m) - ((10.0f64 / 127.5).powi(2) / 2.0).sqrt()).abs() < 1e-7);
    }

    #[test]
    fn latent_frames_take_the_largest_motion_of_their_frames() {
        let m = [0.0, 0.5, 0.1, 0.2, 0.3, 0.05, 0.0, 0.01];
        assert_eq!(latent_motion(&m, false), vec![0.5, 0.3]);
        // The Wan VAE encoder's first chunk: frame 0 alone, then groups of 4.
        assert_eq!(latent_motion(&m[..5], true), vec![0.0, 0.5]);
        assert_eq!(latent_motion(&m[..1], true), vec![0.0]);
    }

    #[test]
    fn levels_follow_the_rule() {
        let mut c = NoiseController::new(0.8);
        assert_eq!(c.next_level(1.0), 0.8, "the first chunk starts at the strength");
        // Still input keeps the level at the strength.
        assert!((c.next_level(0.0) - 0.8).abs() < 1e-12);
        // Full motion (0.2 or more): 0.9 (0.8 - 0.1) + 0.1 * 0.8.
        let l = c.next_level(0.5);
        assert!((l - 0.71).abs() < 1e-12, "{l}");
        let l2 = c.next_level(0.2);
        assert!((l2 - (0.63 + 0.071)).abs() < 1e-12, "{l2}");
        // Half motion from there.
        let l3 = c.next_level(0.1);
        assert!((l3 - (0.9 * (0.8 - 0.1 * 0.5) + 0.1 * l2)).abs() < 1e-8, "{l3}");
    }
}
