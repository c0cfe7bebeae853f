//! The precisions a checkpoint stores tensors in, and their conversion to and from f32.

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::Dtype;

use super::BLOCK;
use crate::error::{Error, Result};

/// The precisions a checkpoint can store weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::F16, DType::BF16, DType::F32];

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
        }
    }

    /// The safetensors dtype.
    pub fn to_safetensors(self) -> Dtype {
        match self {
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
            DType::F32 => Dtype::F32,
        }
    }

    /// The engine's dtype for a safetensors dtype, if it is one the engine reads.
    pub fn from_safetensors(dtype: Dtype) -> Option<DType> {
        match dtype {
            Dtype::F16 => Some(DType::F16),
            Dtype::BF16 => Some(DType::BF16),
            Dtype::F32 => Some(DType::F32),
            _ => None,
        }
    }

    /// `x` rounded to this precision (round to nearest, ties to even), as f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::BF16 => bf16::from_f32(x).to_f32(),
            DType::F32 => x,
        }
    }

    /// Little-endian encoding of `values` into `out` (`size_bytes` per value).
    fn encode(self, values: &[f32], out: &mut [u8]) {
        let size = self.size_bytes();
        for (x, o) in values.iter().zip(out.chunks_exact_mut(size)) {
            match self {
                DType::F16 => o.copy_from_slice(&f16::from_f32(*x).to_le_bytes()),
                DType::BF16 => o.copy_from_slice(&bf16::from_f32(*x).to_le_bytes()),
                DType::F32 => o.copy_from_slice(&x.to_le_bytes()),
            }
        }
    }

    /// Decodes little-endian `bytes` into `out` as f32; returns the index (in `out`) of the
    /// first value that is NaN or infinite, found in the same pass.
    fn decode(self, bytes: &[u8], out: &mut [f32]) -> Option<usize> {
        let size = self.size_bytes();
        let mut bad = None;
        for (i, (b, o)) in bytes.chunks_exact(size).zip(out.iter_mut()).enumerate() {
            *o = match self {
                DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                DType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            };
            if bad.is_none() && !o.is_finite() {
                bad = Some(i);
            }
        }
        bad
    }

    pub(super) fn encode_par(self, values: &[f32], out: &mut [u8]) {
        values
            .par_chunks(BLOCK)
            .zip(out.par_chunks_mut(BLOCK * self.size_bytes()))
            .for_each(|(v, o)| self.encode(v, o));
    }

    /// [`decode`](Self::decode) in parallel blocks; returns the flat index of the first
    /// non-finite value, if any.
    pub(super) fn decode_par(self, bytes: &[u8], out: &mut [f32]) -> Option<usize> {
        bytes
            .par_chunks(BLOCK * self.size_bytes())
            .zip(out.par_chunks_mut(BLOCK))
            .enumerate()
            .filter_map(|(k, (b, o))| self.decode(b, o).map(|i| k * BLOCK + i))
            .min()
    }

    /// The flat index of the first NaN or infinity among the little-endian values `bytes`,
    /// without converting them (for tensors uploaded as stored).
    pub(super) fn first_non_finite(self, bytes: &[u8]) -> Option<usize> {
        let size = self.size_bytes();
        bytes
            .par_chunks(BLOCK * size)
            .enumerate()
            .filter_map(|(k, block)| {
                block
                    .chunks_exact(size)
                    .position(|b| match self {
                        // Exponent all ones: infinity or NaN.
                        DType::F16 => u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00,
                        DType::BF16 => u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80,
                        DType::F32 => {
                            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000
                                == 0x7f80_0000
                        }
                    })
                    .map(|i| k * BLOCK + i)
            })
            .min()
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
        })
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<DType> {
        DType::ALL
            .into_iter()
            .find(|d| d.to_string() == s)
            .ok_or_else(|| Error::Invalid(format!("dtype `{s}`: expected one of f16, bf16, f32")))
    }
}
