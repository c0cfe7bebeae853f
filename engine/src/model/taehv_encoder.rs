//! The TAEHV encoder (`madebyollin/taehv`, checkpoint `taew2_1`) as a [`VideoGraph`]: RGB
//! video frames in `[0, 1]` to raw (not normalised) Wan 2.1 latents; `docs/taehv.md`
//! ("The encoder") defines it and gives the source of every fact.
//!
//! Tensor names are the released ones, `encoder.{i}.*` with `i` the index of the layer in
//! taehv.py's `TAEHV.encoder` `nn.Sequential`. The graph's input is the video frame: its
//! `latent_*` fields describe that input (3 channels at full size) and `upscale` is 1.

use crate::error::{Error, Result};

use super::taehv::check_size;
use super::video_ops::{Builder, ConvFlags, Frames, RgbRange, VideoGraph, VideoOp};

/// Gain of a MemBlock's first convolution's random weights (half its input, the memory, is
/// zero on a stream's first frame).
const MEM_GAIN: f32 = 1.8;
/// Gain of a MemBlock's last convolution's random weights: the residual stays smaller than
/// the block's input, so nine blocks stay O(1).
const RES_GAIN: f32 = 0.7;

/// A TAEHV encoder's hyper-parameters (taehv.py `TAEHV.__init__`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaehvEncoderConfig {
    /// Latent channels of the output (16 for `taew2_1`).
    pub latent_channels: usize,
    /// The width of every hidden layer (64 in taehv.py, fixed there).
    pub width: usize,
    /// Per stage: whether its TPool halves the frame rate (`encoder_time_downscale`,
    /// `(true, true, false)` by default).
    pub time_downscale: [bool; 3],
}

impl TaehvEncoderConfig {
    /// `taew2_1`'s encoder: 16 latent channels, width 64, 4x time and 8x space.
    pub fn taew2_1() -> TaehvEncoderConfig {
        TaehvEncoderConfig {
            latent_channels: 16,
            width: 64,
            time_downscale: [true, true, false],
        }
    }

    /// Video frames per latent frame: `2^(stages with time downscaling)`.
    pub fn time_factor(&self) -> usize {
        1 << self.time_downscale.iter().filter(|&&t| t).count()
    }

    /// Pixels per latent pixel along each axis (every stage halves H and W).
    pub const SPACE_FACTOR: usize = 8;
}

/// Index in taehv.py's `encoder` `nn.Sequential` of stage `i`'s TPool; its stride-2
/// convolution follows at `+1`, its three MemBlocks at `+2 .. +4`.
fn tpool_index(stage: usize) -> usize {
    2 + 5 * stage
}

fn flags(bias: bool, gain: f32) -> ConvFlags {
    ConvFlags {
        upsample: false,
        bias,
        conv3d: false,
        gain,
    }
}

/// `MemBlock(n, n)` named `{prefix}.conv.{0,2,4}`: `relu(conv.4(relu(conv.2(relu(conv.0([x,
/// past]))))) + x)`.
fn memblock(b: &mut Builder, prefix: &str, n: usize) {
    b.save();
    b.with_past();
    b.conv(format!("{prefix}.conv.0"), n, [1, 3], flags(true, MEM_GAIN));
    b.push(VideoOp::Relu);
    b.conv(format!("{prefix}.conv.2"), n, [1, 3], flags(true, std::f32::consts::SQRT_2));
    b.push(VideoOp::Relu);
    b.conv(format!("{prefix}.conv.4"), n, [1, 3], flags(true, RES_GAIN));
    b.add_saved("", flags(false, 1.0));
    b.push(VideoOp::Relu);
}

/// TAEHV's `TPool(ch, stride)` named `{name}.weight`: `stride` frames side by side in
/// channels, then a 1x1 convolution back to `ch` channels, no bias.
fn temporal_pool(b: &mut Builder, name: String, stride: usize) {
    let ch = b.channels;
    b.channels = stride * ch;
    let conv = b.conv_spec(name, ch, [1, 1], flags(false, 1.0));
    b.channels = ch;
    b.push(VideoOp::TemporalPool { conv, stride });
}

/// A 3x3 convolution with stride 2 in H and W, no bias (`conv(n, n, stride=2, bias=False)`).
fn conv_down(b: &mut Builder, name: String, cout: usize) {
    let mut c = b.conv_spec(name, cout, [1, 3], flags(false, std::f32::consts::SQRT_2));
    c.downsample = true;
    b.push(VideoOp::Conv(c));
}

/// The TAEHV encoder of `cfg` for video frames of `height x width` pixels (multiples of 8),
/// `time_factor()` frames per latent frame: input `[4n, height, width, 3]` in `[0, 1]`,
/// output `n` latent frames `[h/8, w/8, latent_channels]` (channels last).
pub fn graph(cfg: &TaehvEncoderConfig, height: usize, width: usize) -> Result<VideoGraph> {
    if cfg.latent_channels == 0 || cfg.width == 0 {
        return Err(Error::Invalid(format!(
            "TAEHV encoder: latent channels and width must be positive, found {} and {}",
            cfg.latent_channels, cfg.width
        )));
    }
    let f = TaehvEncoderConfig::SPACE_FACTOR;
    if height % f != 0 || width % f != 0 {
        return Err(Error::shape(
            "TAEHV encoder frame height and width",
            format!("multiples of {f}"),
            format!("{height} x {width}"),
        ));
    }
    check_size("TAEHV encoder", height / f, width / f)?;
    let n = cfg.width;
    let mut b = Builder::new(3, height, width);
    b.frames = Frames {
        per_latent: cfg.time_factor(),
        first_less: 0,
    };
    b.conv("encoder.0".into(), n, [1, 3], flags(true, 1.0));
    b.push(VideoOp::Relu);
    for stage in 0..3 {
        let i = tpool_index(stage);
        let stride = if cfg.time_downscale[stage] { 2 } else { 1 };
        temporal_pool(&mut b, format!("encoder.{i}.conv"), stride);
        conv_down(&mut b, format!("encoder.{}", i + 1), n);
        for j in 0..3 {
            memblock(&mut b, &format!("encoder.{}", i + 2 + j), n);
        }
    }
    b.conv("encoder.17".into(), cfg.latent_channels, [1, 3], flags(true, 1.0));
    // `Signed` only centres the random output bias at 0; the output is latents, not RGB.
    let g = b.finish("TAEHV encoder", RgbRange::Signed, 1)?;
    debug_assert_eq!(g.out_frames, Frames::LATENT);
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taew2_1_encoder_has_the_released_shapes() {
        let g = graph(&TaehvEncoderConfig::taew2_1(), 480, 832).unwrap();
        let t = g.tensors();
        let find = |n: &str| t.iter().find(|x| x.name == n).map(|x| x.shape.clone());
        assert_eq!(find("encoder.0.weight"), Some(vec![64, 3, 3, 3]));
        assert_eq!(find("encoder.0.bias"), Some(vec![64]));
        assert_eq!(find("encoder.2.conv.weight"), Some(vec![64, 128, 1, 1]));
        assert_eq!(find("encoder.3.weight"), Some(vec![64, 64, 3, 3]));
        assert_eq!(find("encoder.3.bias"), None);
        assert_eq!(find("encoder.4.conv.0.weight"), Some(vec![64, 128, 3, 3]));
        assert_eq!(find("encoder.7.conv.weight"), Some(vec![64, 128, 1, 1]));
        assert_eq!(find("encoder.12.conv.weight"), Some(vec![64, 64, 1, 1]));
        assert_eq!(find("encoder.16.conv.4.bias"), Some(vec![64]));
        assert_eq!(find("encoder.17.weight"), Some(vec![16, 64, 3, 3]));
        assert_eq!(find("encoder.17.bias"), Some(vec![16]));
        assert_eq!(g.caches.len(), 9);
        let last = g.steps.last().unwrap().output();
        assert_eq!((last.1, last.2, last.3), (60, 104, 16));
        assert_eq!(g.frames_out(3, true), 3);
        assert_eq!(g.steps[0].frames.count(3, true), 12);
    }

    #[test]
    fn rejects_bad_sizes() {
        let cfg = TaehvEncoderConfig::taew2_1();
        for (h, w) in [(0, 8), (8, 0), (12, 8), (8, 20)] {
            assert!(graph(&cfg, h, w).is_err(), "{h} x {w}");
        }
    }
}
