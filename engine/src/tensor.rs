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
