//! The Wan 2.1 VAE encoder (`Wan-Video/Wan2.1` `wan/modules/vae.py` `Encoder3d`, then the
//! quant conv `conv1` and the latent normalisation) as a [`VideoGraph`]: RGB video frames in
//! `[-1, 1]` to the DiT's normalised latents. `docs/wan_vae.md` ("The encoder") defines it
//! and gives the source of every fact.
//!
//! Tensor names are the original checkpoint's (`Wan2.1_VAE.pth`): `encoder.conv1.*`,
//! `encoder.downsamples.{k}.*`, `encoder.middle.{0,1,2}.*`, `encoder.head.{0,2}.*`, `conv1.*`;
//! [`diffusers_name`] maps each to diffusers' `AutoencoderKLWan` name. The graph's input is
//! the video frame: its `latent_*` fields describe that input (3 channels at full size) and
//! `upscale` is 1.

use crate::error::{Error, Result};

use super::taehv::check_size;
use super::video_ops::{Builder, ConvFlags, Frames, RgbRange, VideoGraph, VideoOp};
use super::wan_vae::{attention, diffusers_leaf, diffusers_middle, residual, WanVaeConfig};

/// Pixels per latent pixel along each axis (three stride-2 stages).
pub const SPACE_FACTOR: usize = 8;
/// Video frames per latent frame after the first (two stages halve the frame rate).
pub const TIME_FACTOR: usize = 4;

fn flags(conv3d: bool) -> ConvFlags {
    ConvFlags {
        upsample: false,
        bias: true,
        conv3d,
        gain: 1.0,
    }
}

/// Per encoder stage: whether its resample halves the frame rate (`temperal_downsample`,
/// the decoder's `temporal_upsample` reversed: `(false, true, true)`).
pub fn temporal_downsample(cfg: &WanVaeConfig) -> [bool; 3] {
    let t = cfg.temporal_upsample;
    [t[2], t[1], t[0]]
}

/// Encoder stage widths `dims = dim * [1] + dim_mult` (96, 96, 192, 384, 384).
pub fn dims(cfg: &WanVaeConfig) -> [usize; 5] {
    let m = cfg.dim_mult;
    [1, m[0], m[1], m[2], m[3]].map(|u| u * cfg.dim)
}

/// `Resample(ch, downsample2d | downsample3d)` at prefix `p`: the stride-2 3x3 convolution
/// after a zero pad on the right and bottom (`resample.1`), then for `downsample3d` the
/// stride-2 temporal convolution (`time_conv`, 3 taps, one cached frame).
fn downsample(b: &mut Builder, p: &str, temporal: bool) {
    let ch = b.channels;
    let mut c = b.conv_spec(format!("{p}.resample.1"), ch, [1, 3], flags(false));
    c.downsample = true;
    c.pad_after = true;
    b.push(VideoOp::Conv(c));
    if temporal {
        let mut t = b.conv_spec(format!("{p}.time_conv"), ch, [1, 1], flags(true));
        t.taps_t = 3;
        t.cache = Some(b.cache(1, ch));
        b.push(VideoOp::TemporalDown { conv: t });
    }
}

/// The Wan VAE encoder of `cfg` for video frames of `height x width` pixels (multiples of
/// 8): input `[T, height, width, 3]` in `[-1, 1]` (`T = 1 + 4k` for a stream's first chunk,
/// `4k` after), output `[1 + k or k, height/8, width/8, z_dim]` normalised latents.
pub fn graph(cfg: &WanVaeConfig, height: usize, width: usize) -> Result<VideoGraph> {
    let d = dims(cfg);
    let temporal = temporal_downsample(cfg);
    if cfg.z_dim == 0
        || d.contains(&0)
        || cfg.latent_mean.len() != cfg.z_dim
        || cfg.latent_std.len() != cfg.z_dim
        || temporal.iter().filter(|&&t| t).count() != 2
    {
        return Err(Error::Invalid(format!(
            "Wan VAE encoder: z_dim and every width must be positive, with one mean and std per \
             channel and two stages halving the frame rate; found z_dim {}, widths {d:?}, {} \
             means, {} stds, temporal downsampling {temporal:?}",
            cfg.z_dim,
            cfg.latent_mean.len(),
            cfg.latent_std.len()
        )));
    }
    if height % SPACE_FACTOR != 0 || width % SPACE_FACTOR != 0 {
        return Err(Error::shape(
            "Wan VAE encoder frame height and width",
            format!("multiples of {SPACE_FACTOR}"),
            format!("{height} x {width}"),
        ));
    }
    check_size(
        "Wan VAE encoder",
        height / SPACE_FACTOR,
        width / SPACE_FACTOR,
    )?;
    let mut b = Builder::new(3, height, width);
    // The first latent frame comes from one video frame, every later one from four.
    b.frames = Frames {
        per_latent: TIME_FACTOR,
        first_less: TIME_FACTOR - 1,
    };
    b.conv("encoder.conv1".into(), d[0], [3, 3], flags(true));
    let mut k = 0;
    for stage in 0..4 {
        for _ in 0..cfg.num_res_blocks {
            residual(&mut b, &format!("encoder.downsamples.{k}"), d[stage + 1]);
            k += 1;
        }
        if stage < 3 {
            downsample(&mut b, &format!("encoder.downsamples.{k}"), temporal[stage]);
            k += 1;
        }
    }
    residual(&mut b, "encoder.middle.0", d[4]);
    attention(&mut b, "encoder.middle.1");
    residual(&mut b, "encoder.middle.2", d[4]);
    b.push(VideoOp::RmsNorm {
        name: "encoder.head.0".into(),
        ch: b.channels,
        silu: true,
        gamma_rank: 4,
    });
    let z2 = 2 * cfg.z_dim;
    b.conv("encoder.head.2".into(), z2, [3, 3], flags(true));
    b.conv("conv1".into(), z2, [1, 1], flags(true));
    b.push(VideoOp::Normalize {
        mean: cfg.latent_mean.clone(),
        std: cfg.latent_std.clone(),
    });
    // `Signed` only centres the random output bias at 0; the output is latents, not RGB.
    let g = b.finish("Wan VAE encoder", RgbRange::Signed, 1)?;
    debug_assert_eq!(g.out_frames, Frames::LATENT);
    Ok(g)
}

/// The diffusers (`AutoencoderKLWan`) name of a canonical tensor name of the encoder.
pub fn diffusers_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("conv1.") {
        return format!("quant_conv.{rest}");
    }
    let Some(rest) = name.strip_prefix("encoder.") else {
        return name.to_string();
    };
    let mapped = if let Some(r) = rest.strip_prefix("conv1.") {
        format!("conv_in.{r}")
    } else if let Some(r) = rest.strip_prefix("head.0.") {
        format!("norm_out.{r}")
    } else if let Some(r) = rest.strip_prefix("head.2.") {
        format!("conv_out.{r}")
    } else if let Some(r) = rest.strip_prefix("middle.") {
        diffusers_middle(r)
    } else if let Some(r) = rest.strip_prefix("downsamples.") {
        // One flat list in both namings: residual blocks and resamples by the same index.
        let (k, r) = r.split_once('.').unwrap_or((r, ""));
        format!("down_blocks.{k}.{}", diffusers_leaf(r))
    } else {
        rest.to_string()
    };
    format!("encoder.{mapped}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan2_1_encoder_has_the_released_shapes() {
        let g = graph(&WanVaeConfig::wan2_1(), 480, 832).unwrap();
        let t = g.tensors();
        let find = |n: &str| t.iter().find(|x| x.name == n).map(|x| x.shape.clone());
        assert_eq!(find("encoder.conv1.weight"), Some(vec![96, 3, 3, 3, 3]));
        assert_eq!(
            find("encoder.downsamples.0.residual.0.gamma"),
            Some(vec![96, 1, 1, 1])
        );
        assert_eq!(
            find("encoder.downsamples.2.resample.1.weight"),
            Some(vec![96, 96, 3, 3])
        );
        assert_eq!(find("encoder.downsamples.2.time_conv.weight"), None);
        assert_eq!(
            find("encoder.downsamples.3.shortcut.weight"),
            Some(vec![192, 96, 1, 1, 1])
        );
        assert_eq!(
            find("encoder.downsamples.5.time_conv.weight"),
            Some(vec![192, 192, 3, 1, 1])
        );
        assert_eq!(
            find("encoder.downsamples.8.time_conv.weight"),
            Some(vec![384, 384, 3, 1, 1])
        );
        assert_eq!(
            find("encoder.downsamples.10.residual.6.weight"),
            Some(vec![384, 384, 3, 3, 3])
        );
        assert_eq!(find("encoder.downsamples.11.residual.6.weight"), None);
        assert_eq!(find("encoder.middle.1.norm.gamma"), Some(vec![384, 1, 1]));
        assert_eq!(find("encoder.head.2.weight"), Some(vec![32, 384, 3, 3, 3]));
        assert_eq!(find("conv1.weight"), Some(vec![32, 32, 1, 1, 1]));
        // conv1, two per residual block (8 + 2), head.2, and the two time_conv caches.
        assert_eq!(g.caches.len(), 1 + 20 + 1 + 2);
        let last = g.steps.last().unwrap().output();
        assert_eq!((last.1, last.2, last.3), (60, 104, 16));
        assert_eq!(g.steps[0].frames.count(3, true), 9);
        assert_eq!(g.steps[0].frames.count(3, false), 12);
        assert_eq!(g.frames_out(3, true), 3);
    }

    #[test]
    fn diffusers_names() {
        for (a, b) in [
            ("conv1.weight", "quant_conv.weight"),
            ("encoder.conv1.bias", "encoder.conv_in.bias"),
            (
                "encoder.downsamples.3.residual.2.weight",
                "encoder.down_blocks.3.conv1.weight",
            ),
            (
                "encoder.downsamples.5.time_conv.weight",
                "encoder.down_blocks.5.time_conv.weight",
            ),
            (
                "encoder.downsamples.2.resample.1.bias",
                "encoder.down_blocks.2.resample.1.bias",
            ),
            (
                "encoder.middle.1.to_qkv.weight",
                "encoder.mid_block.attentions.0.to_qkv.weight",
            ),
            (
                "encoder.middle.2.residual.3.gamma",
                "encoder.mid_block.resnets.1.norm2.gamma",
            ),
            ("encoder.head.0.gamma", "encoder.norm_out.gamma"),
            ("encoder.head.2.weight", "encoder.conv_out.weight"),
        ] {
            assert_eq!(diffusers_name(a), b);
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        let cfg = WanVaeConfig::wan2_1();
        for (h, w) in [(0, 8), (8, 0), (12, 8), (8, 20)] {
            assert!(graph(&cfg, h, w).is_err(), "{h} x {w}");
        }
    }
}
