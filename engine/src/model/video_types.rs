//! The small value types of the Wan-family op lists ([`super::video_ops`]): the RGB range of
//! a decoder's output, a per-stream cache, and a tensor the op list reads with its role for
//! random initialisation.

/// The range of the decoder's RGB output, which fixes the byte mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RgbRange {
    /// `[0, 1]`: byte `round(clamp(v, 0, 1) * 255)` (TAEHV).
    Unit,
    /// `[-1, 1]`: byte `round(clamp((v + 1) / 2, 0, 1) * 255)` (the Wan VAE).
    Signed,
}

impl RgbRange {
    /// The byte of output value `v` (NaN maps to 0).
    pub fn to_byte(self, v: f32) -> u8 {
        let unit = match self {
            RgbRange::Unit => v,
            RgbRange::Signed => (v + 1.0) / 2.0,
        };
        (unit.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// A per-stream cache: `frames` frames of `[height, width, channels]`, zeros at the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSpec {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl CacheSpec {
    pub fn elems(&self) -> usize {
        self.frames * self.height * self.width * self.channels
    }
}

/// What a tensor is, for random initialisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// An RMS-norm gain (around 1).
    Gain,
    /// A weight whose output sums `fan_in` inputs: `std = gain / sqrt(fan_in)`.
    Weight { fan_in: usize, gain: f32 },
    /// A small bias.
    Bias,
    /// The last convolution's bias, around `mean` (the mean colour).
    OutBias { mean: f32 },
}

/// One tensor a decoder reads.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}
