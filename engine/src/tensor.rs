//! A plain host tensor of f32 values, row-major: what the CPU backend computes with and
//! what crosses the public API (latents, text context, model outputs).

use crate::error::{fmt_shape, Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from a shape and matching data.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "tensor data",
                format!("{n} elements for shape {}", fmt_shape(&shape)),
                format!("{} elements", data.len()),
            ));
        }
        Ok(Tensor { shape, data })
    }

    /// A zero tensor.
    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Checks the shape, naming `what` in the error.
    pub fn expect_shape(&self, what: &str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(Error::shape(what, fmt_shape(shape), fmt_shape(&self.shape)));
        }
        Ok(())
    }
}

/// The first value of `data` that is NaN or infinite, with its flat index.
pub fn first_non_finite(data: &[f32]) -> Option<(usize, f32)> {
    data.iter()
        .position(|x| !x.is_finite())
        .map(|i| (i, data[i]))
}

/// `index` of a row-major tensor of `shape` as a multi-index, `[i, j, ...]`.
pub fn multi_index(shape: &[usize], index: usize) -> String {
    let mut rest = index;
    let mut out = vec![0; shape.len()];
    for (o, &d) in out.iter_mut().zip(shape).rev() {
        if d > 0 {
            *o = rest % d;
            rest /= d;
        }
    }
    fmt_shape(&out)
}

/// Describes a non-finite value found at flat `index` of a tensor of `shape`:
/// `NaN at index 7 ([0, 1, 3])`.
pub fn describe_non_finite(value: f32, index: usize, shape: &[usize]) -> String {
    format!("{value} at index {index} ({})", multi_index(shape, index))
}

/// An error unless every value of `data` (a tensor of `shape`) is finite; the error names
/// `what`, the first bad value and its flat and multi-index.
pub fn check_finite(what: &str, shape: &[usize], data: &[f32]) -> Result<()> {
    match first_non_finite(data) {
        None => Ok(()),
        Some((i, x)) => Err(Error::Invalid(format!(
            "{what}: expected finite values, found {}",
            describe_non_finite(x, i, shape)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_index_is_row_major() {
        assert_eq!(multi_index(&[2, 3, 4], 0), "[0, 0, 0]");
        assert_eq!(multi_index(&[2, 3, 4], 23), "[1, 2, 3]");
        assert_eq!(multi_index(&[2, 3, 4], 13), "[1, 0, 1]");
        assert_eq!(multi_index(&[5], 4), "[4]");
    }

    #[test]
    fn check_finite_names_the_first_bad_value() {
        let mut data = vec![0.0f32; 12];
        assert!(check_finite("x", &[3, 4], &data).is_ok());
        data[9] = f32::INFINITY;
        data[6] = f32::NAN;
        let e = check_finite("x", &[3, 4], &data).unwrap_err().to_string();
        assert!(
            e.contains("x: expected finite values, found NaN at index 6 ([1, 2])"),
            "{e}"
        );
    }
}
