//! Checkpoints of the Wan-family decoders: telling what kind of decoder a file holds (and
//! which tensor said so), reading a [`VideoGraph`]'s tensors from a safetensors file in the
//! released names, and the deterministic random weights in the same names.
//!
//! `.pth` files (`torch.save` zip archives) are read directly through the restricted
//! unpickler of `checkpoint::pickle`, as a safetensors image in memory.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::{self as checkpoint, Checkpoint, DType, Weights};
use crate::model::video_ops::{Role, VideoGraph, VideoTensor};
use crate::error::{path_str, Error, Result};
use crate::rng;
use crate::tensor::Tensor;

/// Philox counter word of a TAEHV decoder's first random tensor (tensor `j` of
/// [`VideoGraph::tensors`] uses `TAEHV_COUNTER + j`): a range of its own.
pub const TAEHV_COUNTER: u32 = 0x0200_0000;
/// The same for the TAEHV encoder (`encoder.{i}.*`).
pub const TAEHV_ENCODER_COUNTER: u32 = 0x0210_0000;
/// The same for the Wan VAE decoder.
pub const WAN_VAE_COUNTER: u32 = 0x0300_0000;
/// The same for the Wan VAE encoder (`encoder.*`, `conv1.*`).
pub const WAN_VAE_ENCODER_COUNTER: u32 = 0x0310_0000;

/// The decoder kinds a checkpoint can hold, as far as this engine tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    /// A TAEHV base decoder (`taew2_1`, `taehv`, `taew2_2`, ...): `decoder.{i}.*`.
    Taehv,
    /// A TAEHV "super" decoder (`taew2_2_super`, `taehv1_5_super`), not supported.
    TaehvSuper,
    /// The Wan VAE in the original names (`Wan2.1_VAE.pth`, ComfyUI's safetensors).
    WanVae,
    /// The Wan VAE in diffusers' names (`AutoencoderKLWan`).
    WanVaeDiffusers,
    /// The StreamDiT temporal autoencoder of docs/tae.md.
    StreamDitTae,
}

impl DecoderKind {
    pub fn describe(self) -> &'static str {
        match self {
            DecoderKind::Taehv => "a TAEHV decoder (taew2_1 and its siblings)",
            DecoderKind::TaehvSuper => "a TAEHV super decoder (not supported)",
            DecoderKind::WanVae => "a Wan VAE (original names)",
            DecoderKind::WanVaeDiffusers => "a Wan VAE (diffusers names)",
            DecoderKind::StreamDitTae => "the StreamDiT TAE decoder of docs/tae.md",
        }
    }
}

/// One tensor name that only a decoder of that kind has, checked in this order (the
/// StreamDiT TAE also has `decoder.conv_in.weight`, so its own telltales come first).
const TELLTALES: [(&str, DecoderKind); 6] = [
    ("decoder.conv_in_t.weight", DecoderKind::StreamDitTae),
    ("decoder.mid.res.0.conv1.weight", DecoderKind::StreamDitTae),
    ("decoder.conv1.weight", DecoderKind::WanVae),
    ("decoder.conv_in.weight", DecoderKind::WanVaeDiffusers),
    ("decoder.0.weight", DecoderKind::TaehvSuper),
    ("decoder.1.weight", DecoderKind::Taehv),
];

/// What kind of decoder a checkpoint with tensors `names` holds, with the tensor that told.
pub fn identify<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<(DecoderKind, String)> {
    let names: std::collections::HashSet<&str> = names.into_iter().collect();
    TELLTALES
        .iter()
        .find(|(name, _)| names.contains(name))
        .map(|(name, kind)| (*kind, name.to_string()))
}

/// Whether `path` is a `torch.save` zip archive (`.pth`, `.pt`): its first bytes are a zip
/// local header, or its extension says so (then a legacy archive gets its named error).
fn is_torch_archive(path: &Path) -> Result<bool> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "pth" | "pt" | "ckpt" | "bin") {
        return Ok(true);
    }
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = std::io::Read::read(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
    Ok(n == 4 && head == *b"PK\x03\x04")
}

/// A decoder or encoder checkpoint: a safetensors file, or a `torch.save` archive
/// (`taew2_1.pth`, `Wan2.1_VAE.pth`) read by the restricted unpickler into a safetensors
/// image in memory, keeping from the archive the tensors `keep` accepts (a
/// safetensors file is mapped whole).
fn open_keeping(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Checkpoint> {
    if is_torch_archive(path)? {
        let image = checkpoint::pickle::safetensors_image(path, keep)?;
        Checkpoint::from_image(path, image)
    } else {
        Checkpoint::open(path)
    }
}

/// Opens `path` and checks it holds one of `accepted`; the error names the tensor that
/// shows what the file is instead.
pub fn open_kind(
    path: &Path,
    family: &str,
    accepted: &[DecoderKind],
) -> Result<(Checkpoint, DecoderKind)> {
    open_kind_keeping(path, family, accepted, &|name| !name.starts_with("encoder."))
}

/// [`open_kind`] reading from a `torch.save` archive only the tensors `keep` accepts (an
/// encoder's, and the tensor that tells the kind).
pub fn open_kind_keeping(
    path: &Path,
    family: &str,
    accepted: &[DecoderKind],
    keep: &dyn Fn(&str) -> bool,
) -> Result<(Checkpoint, DecoderKind)> {
    let ckpt = open_keeping(path, keep)?;
    match identify(ckpt.names()) {
        Some((kind, _)) if accepted.contains(&kind) => Ok((ckpt, kind)),
        Some((kind, tensor)) => Err(Error::Checkpoint {
            path: path_str(path),
            msg: format!(
                "not a {family} checkpoint: its tensor `{tensor}` belongs to {}",
                kind.describe()
            ),
        }),
        None => Err(Error::Checkpoint {
            path: path_str(path),
            msg: format!(
                "not a {family} checkpoint: none of its {} tensors is a decoder tensor this engine knows (looked for {})",
                ckpt.len(),
                TELLTALES.map(|t| format!("`{}`", t.0)).join(", ")
            ),
        }),
    }
}

/// Reads every tensor of `specs` from `ckpt`, tensor `s` stored as `stored(s.name)`, each
/// checked (name, shape, dtype) before any is read, so the first bad one in `specs` order
/// is reported under its stored name. The weights keep the canonical names.
pub fn read(
    ckpt: &Checkpoint,
    specs: &[VideoTensor],
    stored: impl Fn(&str) -> String + Sync,
) -> Result<Weights> {
    for s in specs {
        ckpt.check(&stored(&s.name), &s.shape)?;
    }
    let tensors: BTreeMap<String, Tensor> = specs
        .par_iter()
        .map(|s| Ok((s.name.clone(), ckpt.read_f32(&stored(&s.name), &s.shape)?)))
        .collect::<Result<_>>()?;
    Ok(Weights::from_tensors(path_str(ckpt.path()), tensors))
}

/// The deterministic random weights of `graph` (tensor `j` drawn with Philox counter word
/// `counter + j`), each value rounded to `dtype`.
pub fn random(graph: &VideoGraph, seed: u64, counter: u32, dtype: DType) -> Weights {
    let tensors = graph
        .tensors()
        .into_par_iter()
        .enumerate()
        .map(|(j, t)| {
            let (mean, half_width) = init_range(t.role);
            let mut data = vec![0.0; t.shape.iter().product()];
            rng::init_uniform(seed, counter + j as u32, 0, mean, half_width, &mut data);
            data.iter_mut().for_each(|x| *x = dtype.round(*x));
            (
                t.name,
                Tensor {
                    shape: t.shape,
                    data,
                },
            )
        })
        .collect();
    Weights::from_tensors(
        format!("random {} weights (seed {seed}, {dtype})", graph.family),
        tensors,
    )
}

/// Writes `weights` (every tensor of `graph`, in its order) to a safetensors file in
/// `dtype`, stored under `stored(name)`: the file `weights init` would write.
pub fn write(
    path: &Path,
    graph: &VideoGraph,
    weights: &Weights,
    dtype: DType,
    stored: impl Fn(&str) -> String,
) -> Result<()> {
    let specs = graph.tensors();
    let names: Vec<String> = specs.iter().map(|s| stored(&s.name)).collect();
    let mut refs = Vec::with_capacity(specs.len());
    for (s, name) in specs.iter().zip(&names) {
        refs.push((name.as_str(), weights.get(&s.name)?));
    }
    checkpoint::write_tensors(path, &refs, dtype)
}

/// `(mean, half_width)` of a uniform draw for `role`: weights `std = gain / sqrt(fan_in)`,
/// gains around 1, small biases.
fn init_range(role: Role) -> (f32, f32) {
    const SQRT3: f32 = 1.732_050_8;
    match role {
        Role::Gain => (1.0, 0.2),
        Role::Weight { fan_in, gain } => (0.0, SQRT3 * gain / (fan_in.max(1) as f32).sqrt()),
        Role::Bias => (0.0, 0.02),
        Role::OutBias { mean } => (mean, 0.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_each_kind_by_one_tensor() {
        let cases: [(&[&str], Option<DecoderKind>); 6] = [
            (
                &["encoder.0.weight", "decoder.1.weight"],
                Some(DecoderKind::Taehv),
            ),
            (&["decoder.0.weight"], Some(DecoderKind::TaehvSuper)),
            (
                &["conv2.weight", "decoder.conv1.weight"],
                Some(DecoderKind::WanVae),
            ),
            (
                &["post_quant_conv.weight", "decoder.conv_in.weight"],
                Some(DecoderKind::WanVaeDiffusers),
            ),
            (
                &["decoder.conv_in.weight", "decoder.conv_in_t.weight"],
                Some(DecoderKind::StreamDitTae),
            ),
            (&["blocks.0.attn.qkv.weight"], None),
        ];
        for (names, want) in cases {
            assert_eq!(
                identify(names.iter().copied()).map(|k| k.0),
                want,
                "{names:?}"
            );
        }
    }
}
