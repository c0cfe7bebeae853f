//! `streamdit forward`: one model call on tensors from a file (the golden-test hook).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use streamdit::conditioning as text;
use streamdit::{files, DType};
use streamdit::{Error, Result};

use crate::common::ModelArgs;

#[derive(Args)]
pub(crate) struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors with `x [F,C,H,W]`, `tau [F]`, `text [Lt,Dtxt]`, `text_mask [Lt]`, and with
    /// guidance optionally `negative_text`, `negative_text_mask` (default: the empty prompt).
    #[arg(long)]
    input: PathBuf,
    /// Where to write `v [F,C,H,W]` (f32 safetensors).
    #[arg(long, short)]
    out: PathBuf,
    /// Classifier-free guidance scale (1 disables CFG).
    #[arg(long, default_value_t = 1.0)]
    guidance: f32,
}

pub(crate) fn forward(args: ForwardArgs) -> Result<()> {
    let engine = args.model.engine()?;
    if engine.profile().family == streamdit::Family::Wan {
        return Err(Error::Invalid(format!(
            "forward runs StreamDiT's one-call graph; a call of profile `{}` (wan family) \
             needs a KV cache: use `generate --trace` for golden tensors or `profile` to time \
             a call",
            engine.profile().name
        )));
    }
    let m = engine.profile().model.clone();
    let mut tensors = files::read_tensors(&args.input)?;
    let has_negative = tensors.contains_key("negative_text");
    let path = args.input.display().to_string();
    let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = tensors.remove(name).ok_or_else(|| Error::Tensor {
            path: path.clone(),
            tensor: name.into(),
            expected: format!("shape {shape:?}"),
            found: "no such tensor".into(),
        })?;
        if t.shape != shape {
            return Err(Error::Tensor {
                path: path.clone(),
                tensor: name.into(),
                expected: format!("shape {shape:?}"),
                found: format!("shape {:?}", t.shape),
            });
        }
        Ok(t.data)
    };
    let frame_shape = [
        m.latent_frames,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    ];
    let x = take("x", &frame_shape)?;
    let tau = take("tau", &[m.latent_frames])?;
    let cond = text::TextInput {
        text: streamdit::Tensor::new(
            vec![m.text_len, m.text_dim],
            take("text", &[m.text_len, m.text_dim])?,
        )?,
        mask: take("text_mask", &[m.text_len])?,
    };
    let mut backend = engine.create_backend(args.guidance)?;
    // A negative condition in the file is used as given (a wrong shape is an error, never
    // a silent fall back to the empty prompt); without one, the empty prompt's.
    let negative = match (backend.graph().batch == 2, has_negative) {
        (true, true) => Some(text::TextInput {
            text: streamdit::Tensor::new(
                vec![m.text_len, m.text_dim],
                take("negative_text", &[m.text_len, m.text_dim])?,
            )?,
            mask: take("negative_text_mask", &[m.text_len])?,
        }),
        (true, false) => Some(engine.encode_prompt("")?),
        (false, _) => None,
    };
    let unused: Vec<&str> = tensors.keys().map(String::as_str).collect();
    if !unused.is_empty() {
        eprintln!(
            "streamdit: warning: {path} holds tensors this call does not use: {}{}",
            unused.join(", "),
            if has_negative {
                " (a negative condition is used only with --guidance other than 1)"
            } else {
                ""
            }
        );
    }
    let branches: Vec<&text::TextInput> = std::iter::once(&cond).chain(&negative).collect();
    let (text, mask) = text::stack(&branches);
    backend.set_text(&text, &mask)?;
    let mut v = vec![0.0; x.len()];
    let t = Instant::now();
    backend.forward(&x, &tau, &mut v)?;
    eprintln!(
        "streamdit: model call in {:.1} ms on {}",
        t.elapsed().as_secs_f64() * 1e3,
        backend.name()
    );
    let v = streamdit::Tensor::new(frame_shape.to_vec(), v)?;
    files::write_tensors(&args.out, &[("v", &v)], DType::F32)
}
