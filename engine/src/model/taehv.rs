//! The TAEHV decoder (`madebyollin/taehv`, checkpoint `taew2_1` for Wan 2.1 latents) as a
//! [`VideoGraph`]; `docs/taehv.md` defines it and gives the source of every fact.
//!
//! Tensor names are the ones the released checkpoint uses, `decoder.{i}.*` with `i` the
//! index of the layer in taehv.py's `nn.Sequential`. One reordering, exact: taehv.py runs
//! `Upsample(2) -> TGrow -> conv`; a 1x1 convolution commutes with nearest upsampling, so
//! the list runs `TGrow -> conv with the upsampling folded in`, a quarter of TGrow's work.

use crate::error::{Error, Result};

use super::video_ops::{Builder, ConvFlags, RgbRange, VideoGraph, VideoOp};

/// The latent soft clamp: `tanh(x / 3) * 3` (taehv.py `Clamp`).
pub const SOFT_CLAMP: f32 = 3.0;
/// Largest latent height or width the decoder accepts (8192 output pixels).
pub const MAX_LATENT_SIDE: usize = 1024;

/// Gain of a MemBlock's first convolution's random weights: half its input (the memory) is
/// zero on a stream's first frame.
const MEM_GAIN: f32 = 1.8;
/// Gain of a MemBlock's last convolution's random weights: the residual it adds is smaller
/// than the block's input, so nine blocks stay O(1).
const RES_GAIN: f32 = 0.7;
/// Gain of each stage's last convolution's random weights (its input is a ReLU's).
const STAGE_GAIN: f32 = 1.2;
/// Gain of the output convolution's random weights: RGB spread around 0.5.
const OUT_GAIN: f32 = 0.25;

/// A TAEHV decoder's hyper-parameters (taehv.py `TAEHV.__init__`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaehvConfig {
    /// Latent channels (16 for `taew2_1`).
    pub latent_channels: usize,
    /// `n_f`: the widths of the three stages and of the last convolution, `(256, 128, 64,
    /// 64)` in every released base decoder.
    pub widths: [usize; 4],
    /// Per stage: whether its TGrow doubles the frame rate (`(false, true, true)`).
    pub time_upscale: [bool; 3],
    /// Per stage: whether it doubles H and W (`(true, true, true)`).
    pub space_upscale: [bool; 3],
}

impl TaehvConfig {
    /// `taew2_1`: the TAEHV decoder for Wan 2.1 latents (16 channels, 4x time, 8x space).
    pub fn taew2_1() -> TaehvConfig {
        TaehvConfig {
            latent_channels: 16,
            widths: [256, 128, 64, 64],
            time_upscale: [false, true, true],
            space_upscale: [true, true, true],
        }
    }

    /// Video frames per latent frame: `2^(stages with time upscaling)`.
    pub fn time_factor(&self) -> usize {
        1 << self.time_upscale.iter().filter(|&&t| t).count()
    }

    /// Pixels per latent pixel along each axis.
    pub fn space_factor(&self) -> usize {
        1 << self.space_upscale.iter().filter(|&&s| s).count()
    }
}

/// Index in taehv.py's `decoder` `nn.Sequential` of MemBlock `j` of stage `i`; the stage's
/// Upsample, TGrow and conv follow at `+3`, `+4`, `+5` from its first MemBlock.
fn memblock_index(stage: usize, j: usize) -> usize {
    3 + 6 * stage + j
}

/// The TAEHV decoder of `cfg` for latents `[T, latent_channels, height, width]`.
pub fn graph(cfg: &TaehvConfig, height: usize, width: usize) -> Result<VideoGraph> {
    if cfg.latent_channels == 0 || cfg.widths.contains(&0) {
        return Err(Error::Invalid(format!(
            "TAEHV decoder: latent channels and widths must be positive, found {} and {:?}",
            cfg.latent_channels, cfg.widths
        )));
    }
    check_size("TAEHV decoder", height, width)?;
    let conv = |upsample, bias, gain| ConvFlags {
        upsample,
        bias,
        conv3d: false,
        gain,
    };
    let mut b = Builder::new(cfg.latent_channels, height, width);
    b.push(VideoOp::SoftClamp { limit: SOFT_CLAMP });
    b.conv(
        "decoder.1".into(),
        cfg.widths[0],
        [1, 3],
        conv(false, true, 1.0),
    );
    b.push(VideoOp::Relu);
    let sqrt2 = std::f32::consts::SQRT_2;
    for stage in 0..3 {
        let n = cfg.widths[stage];
        for j in 0..3 {
            let p = format!("decoder.{}.conv", memblock_index(stage, j));
            // relu(conv.4(relu(conv.2(relu(conv.0([x, past]))))) + x)
            b.save();
            b.with_past();
            b.conv(format!("{p}.0"), n, [1, 3], conv(false, true, MEM_GAIN));
            b.push(VideoOp::Relu);
            b.conv(format!("{p}.2"), n, [1, 3], conv(false, true, sqrt2));
            b.push(VideoOp::Relu);
            b.conv(format!("{p}.4"), n, [1, 3], conv(false, true, RES_GAIN));
            b.add_saved("", conv(false, false, 1.0));
            b.push(VideoOp::Relu);
        }
        let first = memblock_index(stage, 0);
        let stride = if cfg.time_upscale[stage] { 2 } else { 1 };
        let tgrow = b.conv_spec(
            format!("decoder.{}.conv", first + 4),
            stride * n,
            [1, 1],
            conv(false, false, 1.0),
        );
        b.push(VideoOp::TemporalUp {
            conv: tgrow,
            stride,
            keep_first: false,
        });
        if stage == 2 && cfg.time_factor() > 1 {
            // decode_video's `x[:, frames_to_trim:]`: before the last two convolutions,
            // which work per frame, so the dropped frames are never computed.
            b.push(VideoOp::DropFirst {
                frames: cfg.time_factor() - 1,
            });
        }
        b.conv(
            format!("decoder.{}", first + 5),
            cfg.widths[stage + 1],
            [1, 3],
            conv(cfg.space_upscale[stage], false, STAGE_GAIN),
        );
    }
    b.push(VideoOp::Relu);
    b.conv("decoder.22".into(), 3, [1, 3], conv(false, true, OUT_GAIN));
    let g = b.finish("TAEHV decoder", RgbRange::Unit, cfg.space_factor())?;
    debug_assert_eq!(g.out_frames.per_latent, cfg.time_factor());
    Ok(g)
}

/// Rejects a zero or absurd latent size, naming `what`.
pub(crate) fn check_size(what: &str, height: usize, width: usize) -> Result<()> {
    let ok = |s: usize| (1..=MAX_LATENT_SIDE).contains(&s);
    if !ok(height) || !ok(width) {
        return Err(Error::shape(
            format!("{what} latent height and width"),
            format!("1 to {MAX_LATENT_SIDE} each"),
            format!("{height} x {width}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taew2_1_has_the_released_shapes() {
        let g = graph(&TaehvConfig::taew2_1(), 60, 104).unwrap();
        assert_eq!(g.frame_size(), (832, 480));
        let t = g.tensors();
        let find = |n: &str| t.iter().find(|x| x.name == n).map(|x| x.shape.clone());
        assert_eq!(find("decoder.1.weight"), Some(vec![256, 16, 3, 3]));
        assert_eq!(find("decoder.3.conv.0.weight"), Some(vec![256, 512, 3, 3]));
        assert_eq!(find("decoder.7.conv.weight"), Some(vec![256, 256, 1, 1]));
        assert_eq!(find("decoder.8.weight"), Some(vec![128, 256, 3, 3]));
        assert_eq!(find("decoder.8.bias"), None);
        assert_eq!(find("decoder.13.conv.weight"), Some(vec![256, 128, 1, 1]));
        assert_eq!(find("decoder.19.conv.weight"), Some(vec![128, 64, 1, 1]));
        assert_eq!(find("decoder.22.weight"), Some(vec![3, 64, 3, 3]));
        assert_eq!(g.parameters(), 9_844_611);
        assert_eq!(g.caches.len(), 9);
        // T latent frames give 4T - 3 video frames, then 4 per latent frame.
        assert_eq!(g.frames_out(2, true), 5);
        assert_eq!(g.frames_out(2, false), 8);
        assert_eq!(g.frames_out(1, true), 1);
    }

    #[test]
    fn rejects_absurd_sizes() {
        let cfg = TaehvConfig::taew2_1();
        for (h, w) in [(0, 4), (4, 0), (MAX_LATENT_SIDE + 1, 4)] {
            let e = graph(&cfg, h, w).unwrap_err().to_string();
            assert!(e.contains("latent height and width"), "{e}");
        }
    }
}
