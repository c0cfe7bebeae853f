//! Safetensors checkpoints: reading them through a memory map, the engine's f32 weights,
//! the deterministic random checkpoint of [`schema`], and small tensor files.
//!
//! The header is parsed here, not only by the `safetensors` crate, so that every error names
//! the tensor and the byte positions involved; the crate then checks the same file as a
//! second opinion, so nothing is accepted that the reference implementation rejects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::de::{IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{error::Category, Value};

use super::profile::{DecoderConfig, ModelConfig, Profile};
use super::schema::{self, Group, Init, TensorSpec};
use crate::error::{fmt_shape, path_str, Error, Result};
use crate::rng;
use crate::tensor::Tensor;

/// Elements per parallel task when generating, converting or encoding values.
const BLOCK: usize = 1 << 16;
/// Elements generated and written at a time by the streaming writer.
const WRITE_BLOCK: usize = 1 << 22;
/// The largest header the safetensors crate accepts.
const MAX_HEADER: u64 = 100_000_000;

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

    /// Decodes little-endian `bytes` into `out` as f32.
    fn decode(self, bytes: &[u8], out: &mut [f32]) {
        let size = self.size_bytes();
        for (b, o) in bytes.chunks_exact(size).zip(out.iter_mut()) {
            *o = match self {
                DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                DType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            };
        }
    }

    fn encode_par(self, values: &[f32], out: &mut [u8]) {
        values
            .par_chunks(BLOCK)
            .zip(out.par_chunks_mut(BLOCK * self.size_bytes()))
            .for_each(|(v, o)| self.encode(v, o));
    }

    fn decode_par(self, bytes: &[u8], out: &mut [f32]) {
        bytes
            .par_chunks(BLOCK * self.size_bytes())
            .zip(out.par_chunks_mut(BLOCK))
            .for_each(|(b, o)| self.decode(b, o));
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

/// Where one tensor lives in a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// The tensor's bytes, as offsets into the whole file.
    pub bytes: Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A safetensors file, memory-mapped, with its header parsed and validated once.
pub struct Checkpoint {
    path: PathBuf,
    map: Mmap,
    /// In file (offset) order.
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("bytes", &self.map.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Maps `path` and validates its header: every tensor's dtype, shape and byte range
    /// must agree, and the ranges must tile the data section exactly.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: a memory map aliases the file, so `Mmap::map` is unsafe: if another process
        // truncates the file while it is mapped, touching a page past the new end raises
        // SIGBUS and kills this process; if it rewrites the file, the bytes behind the
        // `&[u8]` we hand out change, which Rust's aliasing rules forbid. Nothing in the
        // engine writes a checkpoint it reads, and a checkpoint must not be modified or
        // truncated while an engine loads it. The header is parsed once, below, and every
        // later read is bounds-checked against this map's fixed length, so a file changed
        // behind our back gives wrong values or that SIGBUS, never an out-of-bounds read.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let fail = |msg: String| Error::Checkpoint {
            path: path_str(path),
            msg,
        };
        let (tensors, metadata) = parse_file(&map).map_err(fail)?;
        SafeTensors::read_metadata(&map)
            .map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            map,
            tensors,
            index,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The header's `__metadata__` (empty when it has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's header entry and its bytes, as stored (for upload to a device).
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.find(name, "a tensor of that name".into())?;
        Ok((info, &self.map[info.bytes.clone()]))
    }

    /// A tensor of shape `expected_shape`, converted to f32.
    pub fn read_f32(&self, name: &str, expected_shape: &[usize]) -> Result<Tensor> {
        self.decode(self.check(name, expected_shape)?)
    }

    /// Checks that `name` exists with `expected_shape` and a dtype the engine reads.
    pub fn check(&self, name: &str, expected_shape: &[usize]) -> Result<&TensorInfo> {
        let info = self.find(name, format!("shape {}", fmt_shape(expected_shape)))?;
        if info.shape != expected_shape {
            return Err(self.tensor_error(
                name,
                format!("shape {}", fmt_shape(expected_shape)),
                format!("shape {}", fmt_shape(&info.shape)),
            ));
        }
        self.dtype_of(info)?;
        Ok(info)
    }

    fn find(&self, name: &str, expected: String) -> Result<&TensorInfo> {
        self.info(name).ok_or_else(|| {
            let found = format!("none (the checkpoint has {} tensors)", self.tensors.len());
            self.tensor_error(name, expected, found)
        })
    }

    fn dtype_of(&self, info: &TensorInfo) -> Result<DType> {
        DType::from_safetensors(info.dtype).ok_or_else(|| {
            let expected = "dtype f16, bf16 or f32".to_string();
            self.tensor_error(&info.name, expected, info.dtype.to_string())
        })
    }

    fn decode(&self, info: &TensorInfo) -> Result<Tensor> {
        let dtype = self.dtype_of(info)?;
        let mut data = vec![0.0; info.numel()];
        dtype.decode_par(&self.map[info.bytes.clone()], &mut data);
        Ok(Tensor {
            shape: info.shape.clone(),
            data,
        })
    }

    fn tensor_error(&self, name: &str, expected: String, found: String) -> Error {
        Error::Tensor {
            path: path_str(&self.path),
            tensor: name.to_string(),
            expected,
            found,
        }
    }
}

/// The tensors an engine computes with, as f32.
pub struct Weights {
    /// Where the weights came from, for messages.
    source: String,
    tensors: BTreeMap<String, Tensor>,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weights")
            .field("source", &self.source)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Weights {
    /// Reads every tensor of [`schema::checkpoint_tensors`] whose group is in `groups`,
    /// reporting the first missing, mis-shaped or mis-typed one in canonical order.
    pub fn load(path: impl AsRef<Path>, cfg: &ModelConfig, groups: &[Group]) -> Result<Weights> {
        let specs: Vec<TensorSpec> = schema::checkpoint_tensors(cfg)
            .into_iter()
            .filter(|s| groups.contains(&s.group))
            .collect();
        Self::read_specs(path.as_ref(), &specs)
    }

    /// The tensors `specs` from the checkpoint at `path`, every one checked (name, shape,
    /// dtype) before any is read, so the first bad one in `specs` order is reported.
    fn read_specs(path: &Path, specs: &[TensorSpec]) -> Result<Weights> {
        let ckpt = Checkpoint::open(path)?;
        for spec in specs {
            ckpt.check(&spec.name, &spec.shape)?;
        }
        let tensors = specs
            .par_iter()
            .map(|s| Ok((s.name.clone(), ckpt.read_f32(&s.name, &s.shape)?)))
            .collect::<Result<_>>()?;
        Ok(Weights {
            source: path_str(ckpt.path()),
            tensors,
        })
    }

    /// The deterministic random weights of every tensor in the schema, each value rounded
    /// to `dtype`: equal, bit for bit, to [`write_random_checkpoint`] with the same
    /// arguments read back.
    pub fn random(cfg: &ModelConfig, seed: u64, dtype: DType) -> Weights {
        Self::random_groups(
            cfg,
            seed,
            dtype,
            &[Group::Dit, Group::Preview, Group::TextEmbed],
        )
    }

    /// [`random`](Self::random) restricted to the tensors of `groups` (each keeps its
    /// schema position, so its values are the same): a device that generates the DiT
    /// weights itself needs only the small host-side tensors.
    pub fn random_groups(cfg: &ModelConfig, seed: u64, dtype: DType, groups: &[Group]) -> Weights {
        let tensors = schema::checkpoint_tensors(cfg)
            .par_iter()
            .enumerate()
            .filter(|(_, spec)| groups.contains(&spec.group))
            .map(|(index, spec)| random_tensor(seed, index as u32, spec, dtype))
            .collect();
        Weights {
            source: format!("random weights (seed {seed}, {dtype})"),
            tensors,
        }
    }

    /// The decoder's tensors ([`schema::decoder_tensors`]) from the checkpoint at `path`,
    /// reporting the first missing, mis-shaped or mis-typed one in canonical order.
    pub fn load_decoder(
        path: impl AsRef<Path>,
        dec: &DecoderConfig,
        latent_channels: usize,
    ) -> Result<Weights> {
        let specs = schema::decoder_tensors(dec, latent_channels)?;
        Self::read_specs(path.as_ref(), &specs)
    }

    /// The deterministic random decoder weights, each value rounded to `dtype`: equal, bit
    /// for bit, to the decoder tensors [`write_random_profile_checkpoint`] writes.
    pub fn random_decoder(
        dec: &DecoderConfig,
        latent_channels: usize,
        seed: u64,
        dtype: DType,
    ) -> Result<Weights> {
        let tensors = schema::decoder_tensors(dec, latent_channels)?
            .par_iter()
            .enumerate()
            .map(|(j, spec)| random_tensor(seed, schema::DECODER_COUNTER + j as u32, spec, dtype))
            .collect();
        Ok(Weights {
            source: format!("random weights (seed {seed}, {dtype})"),
            tensors,
        })
    }

    /// Weights from tensors already in memory; `source` names them in errors.
    pub fn from_tensors(source: impl Into<String>, tensors: BTreeMap<String, Tensor>) -> Weights {
        Weights {
            source: source.into(),
            tensors,
        }
    }

    /// Moves the tensors out, by name.
    pub fn into_tensors(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }

    /// Where the weights came from: a path, or a description of the random init.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::Tensor {
            path: self.source.clone(),
            tensor: name.to_string(),
            expected: "a tensor of that name".into(),
            found: format!("none (the weights hold {} tensors)", self.tensors.len()),
        })
    }

    /// Tensors by name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// The named tensor of `spec` drawn with Philox counter word `counter`, each value rounded
/// to `dtype`.
fn random_tensor(seed: u64, counter: u32, spec: &TensorSpec, dtype: DType) -> (String, Tensor) {
    let mut data = vec![0.0; spec.numel()];
    fill_counter(seed, counter, spec, 0, &mut data);
    data.par_chunks_mut(BLOCK).for_each(|chunk| {
        for x in chunk {
            *x = dtype.round(*x);
        }
    });
    let tensor = Tensor {
        shape: spec.shape.clone(),
        data,
    };
    (spec.name.clone(), tensor)
}

/// Fills `out` with elements `[start, start + out.len())` of random tensor number `index`
/// (its position in the schema), in f32.
fn fill_random(seed: u64, index: usize, spec: &TensorSpec, start: usize, out: &mut [f32]) {
    fill_counter(seed, index as u32, spec, start, out)
}

/// [`fill_random`] for the tensor with Philox counter word `counter`.
fn fill_counter(seed: u64, counter: u32, spec: &TensorSpec, start: usize, out: &mut [f32]) {
    out.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(k, chunk)| init_range(seed, counter, spec, start + k * BLOCK, chunk));
}

/// Elements `[start, start + out.len())` of a tensor initialised by `spec.init`.
fn init_range(seed: u64, counter: u32, spec: &TensorSpec, start: usize, out: &mut [f32]) {
    match &spec.init {
        Init::Uniform { mean, half_width } => {
            rng::init_uniform(seed, counter, start as u64, *mean, *half_width, out)
        }
        Init::Rows(rows) => {
            // Row r of a [rows, cols] tensor is elements [r*cols, (r+1)*cols).
            let cols = spec.shape.iter().skip(1).product::<usize>().max(1);
            let mut done = 0;
            while done < out.len() {
                let pos = start + done;
                let row = pos / cols;
                let take = ((row + 1) * cols - pos).min(out.len() - done);
                let (mean, half_width) = rows[row];
                let seg = &mut out[done..done + take];
                rng::init_uniform(seed, counter, pos as u64, mean, half_width, seg);
                done += take;
            }
        }
    }
}

/// Writes the random checkpoint of [`Weights::random`]: every tensor of the schema, all
/// groups, in canonical order, generated and written a block at a time so that even
/// `streamdit-4b` never sits in memory. Returns the file size in bytes.
pub fn write_random_checkpoint(
    cfg: &ModelConfig,
    seed: u64,
    dtype: DType,
    path: &Path,
) -> Result<u64> {
    let specs = schema::checkpoint_tensors(cfg);
    let entries: Vec<(&str, &[usize])> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    let dims = dims_metadata(cfg);
    let metadata = [
        ("format", "pt".to_string()),
        ("streamdit.seed", seed.to_string()),
        ("streamdit.dtype", dtype.to_string()),
        ("streamdit.dims", dims),
    ];
    write_file(path, &entries, dtype, &metadata, |index, start, out| {
        fill_random(seed, index, &specs[index], start, out)
    })
}

/// The DiT dimensions a random checkpoint records in its metadata.
fn dims_metadata(cfg: &ModelConfig) -> String {
    format!(
        "C={} F={} H={} W={} D={} L={} heads={} Dff={} window={:?} Lt={} Dtxt={}",
        cfg.latent_channels,
        cfg.latent_frames,
        cfg.latent_height,
        cfg.latent_width,
        cfg.dim,
        cfg.depth,
        cfg.heads,
        cfg.ffn_dim,
        cfg.window,
        cfg.text_len,
        cfg.text_dim
    )
}

/// [`write_random_checkpoint`] followed by the decoder's tensors of `profile`
/// ([`Weights::random_decoder`]): the whole checkpoint `streamdit weights init` writes.
/// Returns the file size in bytes.
pub fn write_random_profile_checkpoint(
    profile: &Profile,
    seed: u64,
    dtype: DType,
    path: &Path,
) -> Result<u64> {
    let cfg = &profile.model;
    let mut specs: Vec<(u32, TensorSpec)> = schema::checkpoint_tensors(cfg)
        .into_iter()
        .enumerate()
        .map(|(i, s)| (i as u32, s))
        .collect();
    let decoder = schema::decoder_tensors(&profile.decoder, cfg.latent_channels)?;
    specs.extend(
        decoder
            .into_iter()
            .enumerate()
            .map(|(j, s)| (schema::DECODER_COUNTER + j as u32, s)),
    );
    let entries: Vec<(&str, &[usize])> = specs
        .iter()
        .map(|(_, s)| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    let metadata = [
        ("format", "pt".to_string()),
        ("streamdit.seed", seed.to_string()),
        ("streamdit.dtype", dtype.to_string()),
        ("streamdit.dims", dims_metadata(cfg)),
        ("streamdit.profile", profile.name.clone()),
    ];
    write_file(path, &entries, dtype, &metadata, |index, start, out| {
        let (counter, spec) = &specs[index];
        fill_counter(seed, *counter, spec, start, out)
    })
}

/// Writes `tensors`, in the given order, as a safetensors file in `dtype`.
pub fn write_tensors(path: &Path, tensors: &[(&str, &Tensor)], dtype: DType) -> Result<()> {
    let mut seen = HashSet::new();
    for (name, t) in tensors {
        if *name == "__metadata__" || !seen.insert(*name) {
            return Err(Error::Invalid(format!(
                "{}: cannot write tensor `{name}`: the name is reserved or used twice",
                path_str(path)
            )));
        }
        let numel = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if numel != Some(t.data.len()) {
            return Err(Error::shape(
                format!("tensor `{name}` written to {}", path_str(path)),
                format!(
                    "{} elements for shape {}",
                    numel.map_or("too many".into(), |n| n.to_string()),
                    fmt_shape(&t.shape)
                ),
                format!("{} elements", t.data.len()),
            ));
        }
    }
    let entries: Vec<(&str, &[usize])> = tensors
        .iter()
        .map(|(n, t)| (*n, t.shape.as_slice()))
        .collect();
    let metadata = [("format", "pt".to_string())];
    write_file(path, &entries, dtype, &metadata, |index, start, out| {
        out.copy_from_slice(&tensors[index].1.data[start..start + out.len()])
    })?;
    Ok(())
}

/// Reads every tensor of a safetensors file as f32.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let ckpt = Checkpoint::open(path)?;
    ckpt.tensors
        .iter()
        .map(|info| Ok((info.name.clone(), ckpt.decode(info)?)))
        .collect()
}

/// Writes a safetensors file: the header, then each entry's values, which `fill(entry,
/// start, out)` produces a block at a time (the encoder rounds them to `dtype`). A writer
/// thread drains each block while the next one is generated. Returns the file size.
fn write_file(
    path: &Path,
    entries: &[(&str, &[usize])],
    dtype: DType,
    metadata: &[(&str, String)],
    mut fill: impl FnMut(usize, usize, &mut [f32]),
) -> Result<u64> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let (send, blocks) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let mut written = 0;
            for block in blocks {
                out.write_all(&block)?;
                written += block.len() as u64;
            }
            out.flush()?;
            Ok(written)
        });
        // A failed send means the writer stopped on an error, which `join` returns.
        let mut values = Vec::new();
        if send.send(header_bytes(entries, dtype, metadata)).is_ok() {
            'entries: for (index, (_, shape)) in entries.iter().enumerate() {
                let numel: usize = shape.iter().product();
                for start in (0..numel).step_by(WRITE_BLOCK) {
                    values.resize(WRITE_BLOCK.min(numel - start), 0.0);
                    fill(index, start, &mut values);
                    let mut bytes = vec![0; values.len() * dtype.size_bytes()];
                    dtype.encode_par(&values, &mut bytes);
                    if send.send(bytes).is_err() {
                        break 'entries;
                    }
                }
            }
        }
        drop(send);
        writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    written.map_err(|e: std::io::Error| Error::io(path, e))
}

/// The 8-byte little-endian header length and the JSON header, padded with spaces to a
/// multiple of 8 bytes; tensors are laid out contiguously in `entries` order.
fn header_bytes(
    entries: &[(&str, &[usize])],
    dtype: DType,
    metadata: &[(&str, String)],
) -> Vec<u8> {
    let mut json = String::from("{");
    let mut offset = 0;
    for (name, shape) in entries {
        let end = offset + shape.iter().product::<usize>() * dtype.size_bytes();
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        json.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}},",
            Value::from(*name),
            dtype.to_safetensors(),
            dims.join(",")
        ));
        offset = end;
    }
    let meta: Vec<String> = metadata
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(*k), Value::from(v.as_str())))
        .collect();
    json.push_str(&format!("\"__metadata__\":{{{}}}}}", meta.join(",")));
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

type Header = (Vec<TensorInfo>, BTreeMap<String, String>);

/// Parses and validates the header of a whole safetensors file held in `buf`. Tensors come
/// back in offset order with absolute byte ranges, every range checked against `buf`.
fn parse_file(buf: &[u8]) -> std::result::Result<Header, String> {
    let file_len = buf.len();
    let prefix = buf.first_chunk::<8>().ok_or_else(|| {
        format!("file is {file_len} bytes, shorter than the 8-byte header length")
    })?;
    let header_len = u64::from_le_bytes(*prefix);
    if header_len > MAX_HEADER {
        return Err(format!(
            "header length {header_len} exceeds the safetensors limit of {MAX_HEADER} bytes"
        ));
    }
    let data_start = 8 + header_len as usize;
    let header = buf.get(8..data_start).ok_or_else(|| {
        format!("file is {file_len} bytes but the header length says the header ends at byte {data_start}")
    })?;
    let header =
        std::str::from_utf8(header).map_err(|e| format!("header is not valid UTF-8: {e}"))?;
    // serde_json stops at 128 levels of nesting (its recursion limit; a real header nests
    // 3 deep), so a hostile header cannot overflow the stack.
    let Entries(fields) = serde_json::from_str(header).map_err(|e| match e.classify() {
        Category::Data => format!("header is not a JSON object: {e}"),
        _ => format!("header is not valid JSON: {e}"),
    })?;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::new();
    let mut seen = HashSet::new();
    for (name, value) in fields {
        if !seen.insert(name.clone()) {
            return Err(format!("header lists `{name}` twice"));
        }
        if name == "__metadata__" {
            metadata = BTreeMap::deserialize(value)
                .map_err(|_| "header: `__metadata__` must map strings to strings")?;
        } else {
            tensors.push(tensor_info(name, value)?);
        }
    }
    tensors.sort_by_key(|t| (t.bytes.start, t.bytes.end));
    let mut end = 0;
    for i in 0..tensors.len() {
        let t = &tensors[i];
        let (s, e) = (t.bytes.start, t.bytes.end);
        let name = &t.name;
        if e < s {
            return Err(format!(
                "header: tensor `{name}` has data offsets [{s}, {e}], which end before they start"
            ));
        }
        if s < end {
            let other = &tensors[i - 1].name;
            return Err(format!("header: tensor `{name}` has data offsets [{s}, {e}], overlapping tensor `{other}`, which ends at {end}"));
        }
        if s > end {
            return Err(format!("header: tensor `{name}` has data offsets [{s}, {e}], leaving a gap after offset {end} (the data must be contiguous)"));
        }
        let bits = t
            .shape
            .iter()
            .try_fold(t.dtype.bitsize(), |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                format!(
                    "header: tensor `{name}` has shape {}, too large",
                    fmt_shape(&t.shape)
                )
            })?;
        if bits % 8 != 0 || e - s != bits / 8 {
            return Err(format!(
                "header: tensor `{name}` of dtype {} and shape {} needs {bits} bits but its data offsets [{s}, {e}] hold {} bytes",
                t.dtype,
                fmt_shape(&t.shape),
                e - s
            ));
        }
        end = e;
    }
    let data_len = file_len - data_start;
    if end > data_len {
        // `end > data_len` implies at least one tensor.
        let last = &tensors[tensors.len() - 1].name;
        let stop = data_start as u128 + end as u128;
        return Err(format!(
            "file is {file_len} bytes but header says tensor `{last}` ends at byte {stop}"
        ));
    }
    if end < data_len {
        let stop = data_start + end;
        return Err(format!(
            "file is {file_len} bytes but its header and tensor data end at byte {stop} ({} bytes left over)",
            file_len - stop
        ));
    }
    for t in &mut tensors {
        t.bytes = data_start + t.bytes.start..data_start + t.bytes.end;
    }
    Ok((tensors, metadata))
}

/// One tensor's header entry, with offsets relative to the data section. Fields are
/// checked one at a time so that each message names the tensor and the field; fields other
/// than the three are ignored, as the reference does.
fn tensor_info(name: String, value: Value) -> std::result::Result<TensorInfo, String> {
    let Value::Object(fields) = value else {
        return Err(format!(
            "header: tensor `{name}` is not an object with dtype, shape and data_offsets"
        ));
    };
    let field = |key: &str| {
        fields
            .get(key)
            .ok_or_else(|| format!("header: tensor `{name}` has no `{key}`"))
    };
    let dtype = match field("dtype")? {
        Value::String(s) => Dtype::deserialize(s.as_str().into_deserializer()).map_err(
            |_: serde::de::value::Error| format!("header: tensor `{name}` has unknown dtype `{s}`"),
        )?,
        _ => {
            return Err(format!(
                "header: tensor `{name}` has a `dtype` that is not a string"
            ))
        }
    };
    let shape = Vec::<usize>::deserialize(field("shape")?).map_err(|_| {
        format!("header: tensor `{name}` has a `shape` that is not a list of unsigned integers")
    })?;
    let [start, end] = <[usize; 2]>::deserialize(field("data_offsets")?).map_err(|_| {
        format!("header: tensor `{name}` has `data_offsets` that are not two unsigned integers")
    })?;
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        bytes: start..end,
    })
}

/// A header object's entries in file order. Unlike a `serde_json` map, which keeps only the
/// last of two entries with the same name, it keeps both, so that they can be reported.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(de: D) -> std::result::Result<Entries, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        de.deserialize_map(EntriesVisitor)
    }
}
