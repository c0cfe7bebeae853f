//! The Wan 2.1 VAE decoder (`Wan-Video/Wan2.1` `wan/modules/vae.py`) as a [`VideoGraph`];
//! `docs/wan_vae.md` defines it and gives the source of every fact.
//!
//! Canonical tensor names are the original checkpoint's (`Wan2.1_VAE.pth`, and ComfyUI's
//! `wan_2.1_vae.safetensors`, which keeps them): `conv2.*`, `decoder.conv1.*`,
//! `decoder.middle.{0,1,2}.*`, `decoder.upsamples.{k}.*`, `decoder.head.{0,2}.*`.
//! [`diffusers_name`] maps each to diffusers' `AutoencoderKLWan` name.

use crate::error::{Error, Result};

use super::taehv::check_size;
use super::video_ops::{Builder, ConvFlags, RgbRange, VideoGraph, VideoOp};

/// Per-channel mean of the VAE's latents (wan/modules/vae.py `WanVAE.__init__`, diffusers
/// `AutoencoderKLWan` `latents_mean`).
pub const LATENT_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
/// Per-channel standard deviation of the VAE's latents (same sources, `latents_std`).
pub const LATENT_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

/// Gain of the output convolution's random weights: RGB spread inside `[-1, 1]`.
const OUT_GAIN: f32 = 0.7;

/// A Wan VAE decoder's hyper-parameters (vae.py `_video_vae` and `Decoder3d`).
#[derive(Debug, Clone, PartialEq)]
pub struct WanVaeConfig {
    /// Latent channels `z_dim` (16).
    pub z_dim: usize,
    /// Base width `dim` (96).
    pub dim: usize,
    /// Width multipliers `dim_mult` (`[1, 2, 4, 4]`); the decoder walks them backwards.
    pub dim_mult: [usize; 4],
    /// Residual blocks per encoder stage (2); the decoder has one more per stage.
    pub num_res_blocks: usize,
    /// Per decoder stage: whether its upsampling doubles the frame rate
    /// (`temperal_downsample[::-1]` = `(true, true, false)`).
    pub temporal_upsample: [bool; 3],
    /// De-normalisation applied to the incoming latents: `z * std + mean`.
    pub latent_mean: Vec<f32>,
    pub latent_std: Vec<f32>,
}

impl WanVaeConfig {
    /// The Wan 2.1 VAE (`Wan2.1_VAE.pth`; Wan 2.2 A14B and Qwen-Image reuse it).
    pub fn wan2_1() -> WanVaeConfig {
        WanVaeConfig {
            z_dim: 16,
            dim: 96,
            dim_mult: [1, 2, 4, 4],
            num_res_blocks: 2,
            temporal_upsample: [true, true, false],
            latent_mean: LATENT_MEAN.to_vec(),
            latent_std: LATENT_STD.to_vec(),
        }
    }

    /// Decoder stage widths `dims = dim * [dim_mult[-1]] + dim_mult[::-1]` (384, 384, 384,
    /// 192, 96).
    pub fn dims(&self) -> [usize; 5] {
        let m = self.dim_mult;
        [m[3], m[3], m[2], m[1], m[0]].map(|u| u * self.dim)
    }

    /// Residual blocks per decoder stage.
    fn blocks_per_stage(&self) -> usize {
        self.num_res_blocks + 1
    }
}

fn conv3d(bias: bool, gain: f32) -> ConvFlags {
    ConvFlags {
        upsample: false,
        bias,
        conv3d: true,
        gain,
    }
}

/// `ResidualBlock(in, cout)` at prefix `p`.
pub fn residual(b: &mut Builder, p: &str, cout: usize) {
    b.save();
    for (norm, conv) in [("0", "2"), ("3", "6")] {
        b.push(VideoOp::RmsNorm {
            name: format!("{p}.residual.{norm}"),
            ch: b.channels,
            silu: true,
            gamma_rank: 4,
        });
        b.conv(
            format!("{p}.residual.{conv}"),
            cout,
            [3, 3],
            conv3d(true, 1.0),
        );
    }
    b.add_saved(&format!("{p}.shortcut"), conv3d(true, 1.0));
}

/// `AttentionBlock(ch)` at prefix `p`: one head over the frame's pixels.
pub fn attention(b: &mut Builder, p: &str) {
    let ch = b.channels;
    b.save();
    b.push(VideoOp::RmsNorm {
        name: format!("{p}.norm"),
        ch,
        silu: false,
        gamma_rank: 3,
    });
    b.push(VideoOp::Attention {
        qkv: format!("{p}.to_qkv"),
        proj: format!("{p}.proj"),
        ch,
        heads: 1,
    });
    b.add_saved("", conv3d(false, 1.0));
}

/// `Resample(ch, upsample3d | upsample2d)` at prefix `p`.
pub fn resample(b: &mut Builder, p: &str, temporal: bool) {
    let ch = b.channels;
    if temporal {
        let time_conv = b.conv_spec(format!("{p}.time_conv"), 2 * ch, [3, 1], conv3d(true, 1.0));
        b.push(VideoOp::TemporalUp {
            conv: time_conv,
            stride: 2,
            keep_first: true,
        });
    }
    let flags = ConvFlags {
        upsample: true,
        bias: true,
        conv3d: false,
        gain: 1.0,
    };
    b.conv(format!("{p}.resample.1"), ch / 2, [1, 3], flags);
}

/// The Wan VAE decoder of `cfg` for latents `[T, z_dim, height, width]` in the DiT's
/// normalised space (it de-normalises them first).
pub fn graph(cfg: &WanVaeConfig, height: usize, width: usize) -> Result<VideoGraph> {
    let dims = cfg.dims();
    if cfg.z_dim == 0
        || dims.iter().any(|&d| d == 0 || d % 2 != 0)
        || cfg.latent_mean.len() != cfg.z_dim
        || cfg.latent_std.len() != cfg.z_dim
    {
        return Err(Error::Invalid(format!(
            "Wan VAE decoder: z_dim must be positive with one mean and std per channel, and every width even; found z_dim {}, widths {dims:?}, {} means, {} stds",
            cfg.z_dim,
            cfg.latent_mean.len(),
            cfg.latent_std.len()
        )));
    }
    check_size("Wan VAE decoder", height, width)?;
    let mut b = Builder::new(cfg.z_dim, height, width);
    b.push(VideoOp::Denormalize {
        mean: cfg.latent_mean.clone(),
        std: cfg.latent_std.clone(),
    });
    b.conv("conv2".into(), cfg.z_dim, [1, 1], conv3d(true, 1.0));
    b.conv("decoder.conv1".into(), dims[0], [3, 3], conv3d(true, 1.0));
    residual(&mut b, "decoder.middle.0", dims[0]);
    attention(&mut b, "decoder.middle.1");
    residual(&mut b, "decoder.middle.2", dims[0]);
    let mut k = 0;
    for stage in 0..4 {
        for _ in 0..cfg.blocks_per_stage() {
            residual(&mut b, &format!("decoder.upsamples.{k}"), dims[stage + 1]);
            k += 1;
        }
        if stage < 3 {
            resample(
                &mut b,
                &format!("decoder.upsamples.{k}"),
                cfg.temporal_upsample[stage],
            );
            k += 1;
        }
    }
    b.push(VideoOp::RmsNorm {
        name: "decoder.head.0".into(),
        ch: b.channels,
        silu: true,
        gamma_rank: 4,
    });
    b.conv("decoder.head.2".into(), 3, [3, 3], conv3d(true, OUT_GAIN));
    b.finish("Wan VAE decoder", RgbRange::Signed, 8)
}

/// diffusers' name of a tensor inside a residual block (`residual.2.weight` -> `conv1.weight`).
pub fn diffusers_leaf(rest: &str) -> String {
    [
        ("residual.0.", "norm1."),
        ("residual.2.", "conv1."),
        ("residual.3.", "norm2."),
        ("residual.6.", "conv2."),
        ("shortcut.", "conv_shortcut."),
    ]
    .iter()
    .find_map(|(a, b)| rest.strip_prefix(a).map(|r| format!("{b}{r}")))
    .unwrap_or_else(|| rest.to_string())
}

/// diffusers' name of a tensor of the middle blocks, `rest` following `middle.`.
pub fn diffusers_middle(rest: &str) -> String {
    let (i, rest) = rest.split_once('.').unwrap_or((rest, ""));
    match i {
        "1" => format!("mid_block.attentions.0.{rest}"),
        "2" => format!("mid_block.resnets.1.{}", diffusers_leaf(rest)),
        _ => format!("mid_block.resnets.0.{}", diffusers_leaf(rest)),
    }
}

/// The diffusers (`AutoencoderKLWan`) name of a canonical tensor name of `cfg`'s decoder.
pub fn diffusers_name(cfg: &WanVaeConfig, name: &str) -> String {
    let sub = diffusers_leaf;
    if let Some(rest) = name.strip_prefix("conv2.") {
        return format!("post_quant_conv.{rest}");
    }
    if let Some(rest) = name.strip_prefix("decoder.conv1.") {
        return format!("decoder.conv_in.{rest}");
    }
    if let Some(rest) = name.strip_prefix("decoder.head.0.") {
        return format!("decoder.norm_out.{rest}");
    }
    if let Some(rest) = name.strip_prefix("decoder.head.2.") {
        return format!("decoder.conv_out.{rest}");
    }
    if let Some(rest) = name.strip_prefix("decoder.middle.") {
        return format!("decoder.{}", diffusers_middle(rest));
    }
    if let Some(rest) = name.strip_prefix("decoder.upsamples.") {
        let (k, rest) = rest.split_once('.').unwrap_or((rest, ""));
        if let Ok(k) = k.parse::<usize>() {
            let per = cfg.blocks_per_stage() + 1;
            let (stage, j) = (k / per, k % per);
            return if j < cfg.blocks_per_stage() {
                format!("decoder.up_blocks.{stage}.resnets.{j}.{}", sub(rest))
            } else {
                format!("decoder.up_blocks.{stage}.upsamplers.0.{rest}")
            };
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::video_ops::MAX_ACTIVATION_ELEMS;

    #[test]
    fn wan2_1_has_the_released_shapes() {
        let cfg = WanVaeConfig::wan2_1();
        let g = graph(&cfg, 60, 104).unwrap();
        assert_eq!(g.frame_size(), (832, 480));
        let t = g.tensors();
        let find = |n: &str| t.iter().find(|x| x.name == n).map(|x| x.shape.clone());
        assert_eq!(find("conv2.weight"), Some(vec![16, 16, 1, 1, 1]));
        assert_eq!(find("decoder.conv1.weight"), Some(vec![384, 16, 3, 3, 3]));
        assert_eq!(
            find("decoder.middle.0.residual.0.gamma"),
            Some(vec![384, 1, 1, 1])
        );
        assert_eq!(find("decoder.middle.1.norm.gamma"), Some(vec![384, 1, 1]));
        assert_eq!(
            find("decoder.middle.1.to_qkv.weight"),
            Some(vec![1152, 384, 1, 1])
        );
        assert_eq!(
            find("decoder.upsamples.3.time_conv.weight"),
            Some(vec![768, 384, 3, 1, 1])
        );
        assert_eq!(
            find("decoder.upsamples.3.resample.1.weight"),
            Some(vec![192, 384, 3, 3])
        );
        assert_eq!(
            find("decoder.upsamples.4.shortcut.weight"),
            Some(vec![384, 192, 1, 1, 1])
        );
        assert_eq!(find("decoder.upsamples.11.time_conv.weight"), None);
        assert_eq!(
            find("decoder.upsamples.11.resample.1.weight"),
            Some(vec![96, 192, 3, 3])
        );
        assert_eq!(
            find("decoder.upsamples.14.residual.6.weight"),
            Some(vec![96, 96, 3, 3, 3])
        );
        assert_eq!(find("decoder.head.2.weight"), Some(vec![3, 96, 3, 3, 3]));
        assert_eq!(g.parameters(), 73_295_603);
        // conv1, two per residual block (14), head.2, and the two time_conv caches.
        assert_eq!(g.caches.len(), 1 + 28 + 1 + 2);
        // The largest activation: the full-size 96-channel frames (4 per latent frame).
        assert_eq!(g.largest_activation(1, false).0, 4 * 480 * 832 * 96);
        assert!(g.largest_activation(usize::MAX / 4, false).0 > MAX_ACTIVATION_ELEMS);
        assert_eq!(g.frames_out(1, true), 1);
        assert_eq!(g.frames_out(3, true), 9);
        assert_eq!(g.frames_out(3, false), 12);
    }

    #[test]
    fn diffusers_names() {
        let cfg = WanVaeConfig::wan2_1();
        for (a, b) in [
            ("conv2.bias", "post_quant_conv.bias"),
            ("decoder.conv1.weight", "decoder.conv_in.weight"),
            (
                "decoder.middle.0.residual.0.gamma",
                "decoder.mid_block.resnets.0.norm1.gamma",
            ),
            (
                "decoder.middle.1.to_qkv.weight",
                "decoder.mid_block.attentions.0.to_qkv.weight",
            ),
            (
                "decoder.middle.2.residual.6.bias",
                "decoder.mid_block.resnets.1.conv2.bias",
            ),
            (
                "decoder.upsamples.3.time_conv.weight",
                "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
            ),
            (
                "decoder.upsamples.4.shortcut.weight",
                "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "decoder.upsamples.14.residual.3.gamma",
                "decoder.up_blocks.3.resnets.2.norm2.gamma",
            ),
            ("decoder.head.0.gamma", "decoder.norm_out.gamma"),
            ("decoder.head.2.bias", "decoder.conv_out.bias"),
        ] {
            assert_eq!(diffusers_name(&cfg, a), b);
        }
    }
}
