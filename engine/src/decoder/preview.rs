//! The preview decoder: a per-pixel linear map from latent channels to RGB, upscaled by
//! nearest neighbour. Cheap enough to run on every chunk, and shaped like the real decoder's
//! output so sinks and players can be tested without it.

use crate::decoder::{to_byte, Decoder};
use crate::error::{fmt_shape, Error, Result};
use crate::model::profile::{ModelConfig, VideoConfig};
use crate::tensor::Tensor;

/// Linear latent-to-RGB preview: `rgb_k = sum_c weight[k][c] * latent[c] + bias[k]` per latent
/// pixel, mapped to bytes like docs/tae.md's output (`round(clamp((v + 1) / 2, 0, 1) * 255)`),
/// each latent pixel shown as a `spatial_upsample`-square block and each latent frame as
/// `temporal_upsample` video frames.
#[derive(Debug, Clone)]
pub struct Preview {
    /// `[3, C]`, row-major.
    weight: Vec<f32>,
    /// `[3]`.
    bias: [f32; 3],
    channels: usize,
    height: usize,
    width: usize,
    spatial: usize,
    temporal: usize,
    /// One latent frame's RGB bytes at latent resolution, `[H, W, 3]` (reused).
    small: Vec<u8>,
}

impl Preview {
    /// A preview decoder from `weight [3, C]` and `bias [3]` for latents of `model`'s shape.
    pub fn new(
        weight: &Tensor,
        bias: &Tensor,
        model: &ModelConfig,
        video: &VideoConfig,
    ) -> Result<Preview> {
        let channels = model.latent_channels;
        if model.frame_elems() == 0 || video.spatial_upsample == 0 || video.temporal_upsample == 0 {
            return Err(Error::Invalid(format!(
                "preview decoder: latent C*H*W = {} and upsampling ({}, {}) must be positive",
                model.frame_elems(),
                video.spatial_upsample,
                video.temporal_upsample
            )));
        }
        check_shape("preview.weight", weight, &[3, channels])?;
        check_shape("preview.bias", bias, &[3])?;
        Ok(Preview {
            weight: weight.data.clone(),
            bias: [bias.data[0], bias.data[1], bias.data[2]],
            channels,
            height: model.latent_height,
            width: model.latent_width,
            spatial: video.spatial_upsample,
            temporal: video.temporal_upsample,
            small: vec![0; model.latent_height * model.latent_width * 3],
        })
    }

    /// Elements of one latent frame, `C * H * W`.
    fn frame_elems(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Fills `self.small` with the RGB bytes of one latent frame `[C, H, W]`.
    fn fill_small_rgb(&mut self, latent: &[f32]) {
        let plane = self.height * self.width;
        for p in 0..plane {
            for k in 0..3 {
                let row = &self.weight[k * self.channels..(k + 1) * self.channels];
                let v = row
                    .iter()
                    .enumerate()
                    .fold(self.bias[k], |acc, (c, &w)| acc + w * latent[c * plane + p]);
                self.small[p * 3 + k] = to_byte(v);
            }
        }
    }
}

fn check_shape(name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
        return Err(Error::shape(name, fmt_shape(shape), fmt_shape(&t.shape)));
    }
    Ok(())
}

impl Decoder for Preview {
    fn frame_size(&self) -> (usize, usize) {
        (self.width * self.spatial, self.height * self.spatial)
    }

    fn frames_per_latent(&self) -> usize {
        self.temporal
    }

    fn decode(&mut self, latents: &[f32], out: &mut Vec<u8>) -> Result<()> {
        let elems = self.frame_elems();
        if !latents.chunks_exact(elems).remainder().is_empty() {
            return Err(Error::shape(
                "preview latents",
                format!("a multiple of C*H*W = {elems} elements"),
                format!("{} elements", latents.len()),
            ));
        }
        let frame = [self.channels, self.height, self.width];
        super::check_latents("preview latents", latents, frame)?;
        let (fw, fh) = self.frame_size();
        let frame_bytes = fw * fh * 3;
        out.reserve(latents.len() / elems * self.temporal * frame_bytes);
        for latent in latents.chunks_exact(elems) {
            self.fill_small_rgb(latent);
            let start = out.len();
            for y in 0..fh {
                let src_row = &self.small[(y / self.spatial) * self.width * 3..][..self.width * 3];
                for px in src_row.chunks_exact(3) {
                    for _ in 0..self.spatial {
                        out.extend_from_slice(px);
                    }
                }
            }
            for _ in 1..self.temporal {
                out.extend_from_within(start..start + frame_bytes);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(channels: usize, height: usize, width: usize) -> (ModelConfig, VideoConfig) {
        let model = ModelConfig {
            latent_channels: channels,
            latent_frames: 2,
            latent_height: height,
            latent_width: width,
            dim: 8,
            depth: 1,
            heads: 1,
            ffn_dim: 8,
            window: [1, 1, 1],
            text_len: 1,
            text_dim: 1,
        };
        let video = VideoConfig {
            fps: 16.0,
            temporal_upsample: 4,
            spatial_upsample: 8,
        };
        (model, video)
    }

    /// Two channels, a 1x2 latent: weight picks channel 0 for red, channel 1 for green, and
    /// their difference for blue; bias shifts blue by 0.5.
    fn preview_2ch() -> Preview {
        let (model, video) = configs(2, 1, 2);
        let weight = Tensor::new(vec![3, 2], vec![1.0, 0.0, 0.0, 1.0, 1.0, -1.0]).unwrap();
        let bias = Tensor::new(vec![3], vec![0.0, 0.0, 0.5]).unwrap();
        Preview::new(&weight, &bias, &model, &video).unwrap()
    }

    #[test]
    fn known_latent_gives_exact_bytes() {
        let mut p = preview_2ch();
        assert_eq!(p.frame_size(), (16, 8));
        assert_eq!(p.frames_per_latent(), 4);
        // latent [C=2, H=1, W=2]: channel 0 = [-1, 0.5], channel 1 = [0, 3]
        let latent = [-1.0, 0.5, 0.0, 3.0];
        let mut out = Vec::new();
        p.decode(&latent, &mut out).unwrap();
        // pixel 0: r = -1 -> 0; g = 0 -> 127.5 -> 128; b = -1 - 0 + 0.5 = -0.5 -> 63.75 -> 64
        // pixel 1: r = 0.5 -> 191.25 -> 191; g = 3 -> 255; b = 0.5 - 3 + 0.5 = -2 -> 0
        let left = [0u8, 128, 64];
        let right = [191u8, 255, 0];
        let row: Vec<u8> = [left; 8]
            .concat()
            .into_iter()
            .chain([right; 8].concat())
            .collect();
        let frame: Vec<u8> = row.repeat(8);
        assert_eq!(frame.len(), 16 * 8 * 3);
        assert_eq!(out, frame.repeat(4));
    }

    #[test]
    fn rows_follow_latent_rows() {
        // One channel, 2x1 latent (two rows), identity weight on all colours.
        let (model, video) = configs(1, 2, 1);
        let weight = Tensor::new(vec![3, 1], vec![1.0; 3]).unwrap();
        let bias = Tensor::zeros(vec![3]);
        let mut p = Preview::new(&weight, &bias, &model, &video).unwrap();
        let mut out = Vec::new();
        p.decode(&[1.0, -1.0], &mut out).unwrap();
        let (w, h) = p.frame_size();
        assert_eq!((w, h), (8, 16));
        for y in 0..h {
            let expected = if y < 8 { 255 } else { 0 };
            assert!(
                out[y * w * 3..(y + 1) * w * 3]
                    .iter()
                    .all(|&v| v == expected),
                "row {y}"
            );
        }
    }

    #[test]
    fn frames_per_latent_and_length() {
        let mut p = preview_2ch();
        let mut out = vec![7u8; 5];
        let n = 3;
        let latents: Vec<f32> = (0..n * 4).map(|i| i as f32 / 10.0 - 0.5).collect();
        p.decode(&latents, &mut out).unwrap();
        let frame = 16 * 8 * 3;
        assert_eq!(out.len(), 5 + n * p.frames_per_latent() * frame);
        assert_eq!(&out[..5], &[7; 5], "appends, keeps what was there");
        // Frames of one latent repeat; consecutive latents differ.
        let frames: Vec<&[u8]> = out[5..].chunks(frame).collect();
        assert_eq!(frames[0], frames[3]);
        assert_ne!(frames[3], frames[4]);
        assert_eq!(frames[4], frames[7]);
    }

    #[test]
    fn rejects_bad_shapes() {
        let (model, video) = configs(2, 1, 2);
        let good_w = Tensor::zeros(vec![3, 2]);
        let good_b = Tensor::zeros(vec![3]);
        let err = Preview::new(&Tensor::zeros(vec![3, 4]), &good_b, &model, &video).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("preview.weight") && msg.contains("[3, 2]") && msg.contains("[3, 4]"),
            "{msg}"
        );
        let err = Preview::new(&good_w, &Tensor::zeros(vec![4]), &model, &video).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("preview.bias") && msg.contains("[3]") && msg.contains("[4]"),
            "{msg}"
        );
        let mut p = Preview::new(&good_w, &good_b, &model, &video).unwrap();
        assert!(p.decode(&[0.0; 5], &mut Vec::new()).is_err());
        let (empty, _) = configs(2, 0, 2);
        assert!(Preview::new(&good_w, &good_b, &empty, &video).is_err());
    }

    #[test]
    fn byte_mapping() {
        assert_eq!(to_byte(-1.0), 0);
        assert_eq!(to_byte(-7.0), 0);
        assert_eq!(to_byte(1.0), 255);
        assert_eq!(to_byte(9.0), 255);
        assert_eq!(to_byte(0.0), 128);
        assert_eq!(to_byte(f32::NAN), 0);
    }
}
