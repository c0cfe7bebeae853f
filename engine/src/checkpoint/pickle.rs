//! Reading PyTorch `.pt`/`.pth` checkpoints without Python: the zip container written by
//! `torch.save` (since PyTorch 1.6: `<name>/data.pkl`, `<name>/data/<key>` storages,
//! `<name>/version`, optionally `<name>/byteorder`), a restricted unpickler that knows only
//! tensors, storages and plain containers (`pickle/vm.rs`), and [`convert`] to safetensors.
//!
//! Choices: the zip directory is read here (`pickle/zip.rs`, stored entries and zip64 only,
//! which is all `torch.save` writes) rather than with a zip crate: no new dependency, no
//! decompressor reachable from untrusted input. The legacy pre-1.6 format (a pickle stream
//! followed by raw storages) is refused with [`PtError::Legacy`]; every released Wan-family
//! checkpoint is a zip. Nested dicts are flattened with dotted names (`generator_ema` ->
//! `model` -> `blocks.0...` becomes `generator_ema.model.blocks.0...`); values that are not
//! tensors (a training `step`, strings) are listed as skipped. Views (storage offset,
//! strides) are materialised contiguous. No allocation exceeds what the file justifies: a
//! tensor may not be larger than the file, nor all tensors together more than
//! `OUTPUT_FACTOR` times it.

mod torch;
mod vm;
mod zip;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use memmap2::Mmap;

use super::atomic::PendingFile;
use crate::error::{Error, Result};
use torch::TensorRef;
use vm::{Pickle, Value};

/// All tensors together may hold at most this many times the input file's bytes (views of
/// one storage, such as tied weights, are written once per name).
pub const OUTPUT_FACTOR: u64 = 8;
/// Containers nested deeper than this are refused.
pub const MAX_DEPTH: usize = 64;

/// Element types of torch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl PtDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            PtDtype::F64 | PtDtype::I64 => 8,
            PtDtype::F32 | PtDtype::I32 => 4,
            PtDtype::F16 | PtDtype::BF16 | PtDtype::I16 => 2,
            PtDtype::I8 | PtDtype::U8 | PtDtype::Bool => 1,
        }
    }

    /// The safetensors dtype name.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            PtDtype::F64 => "F64",
            PtDtype::F32 => "F32",
            PtDtype::F16 => "F16",
            PtDtype::BF16 => "BF16",
            PtDtype::I64 => "I64",
            PtDtype::I32 => "I32",
            PtDtype::I16 => "I16",
            PtDtype::I8 => "I8",
            PtDtype::U8 => "U8",
            PtDtype::Bool => "BOOL",
        }
    }
}

/// Why a `.pt` file was refused. Every variant names what was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PtError {
    #[error("zip container: {0}")]
    Zip(String),
    #[error("the legacy (pre-1.6, non-zip) torch.save format is not supported; re-save the checkpoint with torch >= 1.6")]
    Legacy,
    #[error("not a torch.save archive: {0}")]
    Layout(String),
    #[error("{what} truncated at byte {at}")]
    Truncated { what: &'static str, at: usize },
    #[error("pickle opcode 0x{op:02x} at byte {at} is not allowed (only data opcodes are)")]
    Opcode { op: u8, at: usize },
    #[error("pickle global `{module}.{name}` is not allowed (only torch tensor rebuilds, torch storage types and collections.OrderedDict)")]
    Global { module: String, name: String },
    #[error("pickle REDUCE refused: {0}")]
    Reduce(String),
    #[error("pickle BUILD of a {state} state on a {target} is not allowed (only an OrderedDict's attributes)")]
    Build { target: String, state: String },
    #[error("malformed pickle at byte {at}: {msg}")]
    Malformed { at: usize, msg: String },
    #[error("containers nested deeper than {0} levels (or a container that contains itself)")]
    TooDeep(usize),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("storage `{key}`: {msg}")]
    Storage { key: String, msg: String },
    #[error("tensor `{name}`: {msg}")]
    View { name: String, msg: String },
    #[error("the pickle's root is a {0}, expected a dict of tensors")]
    Root(String),
    #[error("no tensor name starts with the prefix `{0}`")]
    Prefix(String),
}

/// One tensor of a checkpoint: where its elements are, not yet read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtTensor {
    /// Dotted name, nested dict keys joined with `.`.
    pub name: String,
    pub dtype: PtDtype,
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
    /// Offset of element 0 in its storage, in elements.
    pub offset: usize,
    /// Storage key (`data/<key>` in the archive) and its byte range in the file.
    pub storage: String,
    storage_range: (usize, usize),
}

impl PtTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The index of a `torch.save` archive: its tensors, and the non-tensor leaves skipped.
#[derive(Debug, Clone)]
pub struct PtIndex {
    pub tensors: Vec<PtTensor>,
    /// `(dotted name, kind)` of every leaf that is not a tensor.
    pub skipped: Vec<(String, String)>,
    file_len: usize,
}

/// Reads the archive directory and the pickle of `bytes` (a whole `.pt` file).
pub fn read_index(bytes: &[u8]) -> Result<PtIndex, PtError> {
    if !zip::looks_like_zip(bytes) {
        // The legacy format starts with a pickled magic number (protocol 2: 0x80 0x02 0x8a).
        return Err(if bytes.starts_with(&[0x80, 0x02, 0x8a]) {
            PtError::Legacy
        } else {
            PtError::Zip("the file does not start with a zip local header".into())
        });
    }
    let entries = zip::entries(bytes)?;
    let pkl = entries
        .iter()
        .filter(|e| e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1)
        .collect::<Vec<_>>();
    let pkl = match pkl.as_slice() {
        [one] => *one,
        [] => return Err(PtError::Layout("no `<name>/data.pkl` entry".into())),
        _ => return Err(PtError::Layout("several `<name>/data.pkl` entries".into())),
    };
    let root_dir = &pkl.name[..pkl.name.len() - "data.pkl".len()];
    if let Some(bo) = entries
        .iter()
        .find(|e| e.name == format!("{root_dir}byteorder"))
    {
        let order = &bytes[bo.start..bo.start + bo.len];
        if order != b"little" {
            return Err(PtError::Layout(format!(
                "byte order `{}` (only little-endian archives are read)",
                String::from_utf8_lossy(order)
            )));
        }
    }
    let storages: BTreeMap<&str, (usize, usize)> = entries
        .iter()
        .filter_map(|e| {
            let key = e.name.strip_prefix(root_dir)?.strip_prefix("data/")?;
            Some((key, (e.start, e.len)))
        })
        .collect();
    let pickle = vm::load(&bytes[pkl.start..pkl.start + pkl.len])?;
    let mut walk = Walk {
        p: &pickle,
        budget: pkl.len.saturating_mul(4).saturating_add(1024),
        tensors: Vec::new(),
        skipped: Vec::new(),
    };
    let root = pickle
        .root
        .as_ref()
        .ok_or(PtError::Root("nothing".into()))?;
    match root {
        Value::Dict(_) => walk.visit("", root, 0)?,
        other => return Err(PtError::Root(other.kind().into())),
    }
    let mut tensors = Vec::with_capacity(walk.tensors.len());
    for (name, t) in walk.tensors {
        let range = *storages
            .get(t.storage.key.as_str())
            .ok_or_else(|| PtError::Storage {
                key: t.storage.key.clone(),
                msg: format!(
                    "tensor `{name}` names it, but the archive has no `{root_dir}data/{}`",
                    t.storage.key
                ),
            })?;
        tensors.push(check_view(name, &t, range, bytes.len())?);
    }
    Ok(PtIndex {
        tensors,
        skipped: walk.skipped,
        file_len: bytes.len(),
    })
}

/// Checks that a view lies inside its storage and its storage inside the file.
fn check_view(
    name: String,
    t: &TensorRef,
    range: (usize, usize),
    file_len: usize,
) -> Result<PtTensor, PtError> {
    let s = &t.storage;
    let bad = |msg: String| PtError::View {
        name: name.clone(),
        msg,
    };
    let declared = s
        .numel
        .checked_mul(s.dtype.size())
        .ok_or_else(|| PtError::Storage {
            key: s.key.clone(),
            msg: format!("{} elements overflow", s.numel),
        })?;
    if declared > range.1 {
        return Err(PtError::Storage {
            key: s.key.clone(),
            msg: format!(
                "declares {} elements ({declared} bytes) but holds {} bytes",
                s.numel, range.1
            ),
        });
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {:?} overflows", t.shape)))?;
    let bytes = numel.checked_mul(s.dtype.size()).filter(|&b| b <= file_len);
    if bytes.is_none() {
        return Err(bad(format!(
            "shape {:?} needs more bytes than the whole file ({file_len})",
            t.shape
        )));
    }
    if numel > 0 {
        // The last element a view touches: offset + sum (size - 1) * stride.
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&d, &st)| {
                a.checked_add((d - 1).checked_mul(st)?)
            })
            .ok_or_else(|| bad("view offsets overflow".into()))?;
        if last >= s.numel {
            return Err(bad(format!(
                "view (offset {}, shape {:?}, stride {:?}) reaches element {last} of a storage of {}",
                t.offset, t.shape, t.stride, s.numel
            )));
        }
    }
    Ok(PtTensor {
        name,
        dtype: s.dtype,
        shape: t.shape.clone(),
        stride: t.stride.clone(),
        offset: t.offset,
        storage: s.key.clone(),
        storage_range: range,
    })
}

/// The flattening walk over the pickle's containers, bounded in depth and in visits.
struct Walk<'p> {
    p: &'p Pickle,
    budget: usize,
    tensors: Vec<(String, TensorRef)>,
    skipped: Vec<(String, String)>,
}

impl Walk<'_> {
    fn visit(&mut self, name: &str, v: &Value, depth: usize) -> Result<(), PtError> {
        if depth > MAX_DEPTH {
            return Err(PtError::TooDeep(MAX_DEPTH));
        }
        self.budget = self.budget.checked_sub(1).ok_or_else(|| {
            PtError::TooLarge(
                "more values than the pickle's size allows (shared containers?)".into(),
            )
        })?;
        let join = |k: &str| {
            if name.is_empty() {
                k.to_string()
            } else {
                format!("{name}.{k}")
            }
        };
        match v {
            Value::Dict(d) => {
                for (k, x) in &self.p.dicts[*d] {
                    let key = match k {
                        Value::Str(s) => s.to_string(),
                        Value::Int(i) => i.to_string(),
                        other => {
                            return Err(PtError::Malformed {
                                at: 0,
                                msg: format!("dict key of type {} under `{name}`", other.kind()),
                            })
                        }
                    };
                    self.visit(&join(&key), x, depth + 1)?;
                }
            }
            Value::List(l) => {
                for (i, x) in self.p.lists[*l].iter().enumerate() {
                    self.visit(&join(&i.to_string()), x, depth + 1)?;
                }
            }
            Value::Tuple(t) => {
                for (i, x) in self.p.tuples[*t].iter().enumerate() {
                    self.visit(&join(&i.to_string()), x, depth + 1)?;
                }
            }
            Value::Tensor(t) => self.tensors.push((name.to_string(), (**t).clone())),
            other => self
                .skipped
                .push((name.to_string(), other.kind().to_string())),
        }
        Ok(())
    }
}

impl PtIndex {
    /// The tensor's elements, contiguous (row-major), little-endian, in its own dtype.
    pub fn read(&self, bytes: &[u8], t: &PtTensor) -> Result<Vec<u8>, PtError> {
        if bytes.len() != self.file_len {
            return Err(PtError::Layout(
                "the bytes differ from the file this index was read from".into(),
            ));
        }
        let es = t.dtype.size();
        let storage = &bytes[t.storage_range.0..t.storage_range.0 + t.storage_range.1];
        let numel = t.numel();
        let mut out = Vec::with_capacity(numel * es);
        if numel == 0 {
            return Ok(out);
        }
        // Walk the index space row-major; `check_view` proved every offset in bounds.
        let rank = t.shape.len();
        let mut idx = vec![0usize; rank];
        let mut at = t.offset;
        let inner = if rank == 0 { 1 } else { t.shape[rank - 1] };
        let inner_stride = if rank == 0 { 1 } else { t.stride[rank - 1] };
        loop {
            if inner_stride == 1 {
                out.extend_from_slice(&storage[at * es..(at + inner) * es]);
            } else {
                for k in 0..inner {
                    let e = at + k * inner_stride;
                    out.extend_from_slice(&storage[e * es..(e + 1) * es]);
                }
            }
            // Advance the outer indices (all but the last).
            let mut d = rank.saturating_sub(1);
            loop {
                if d == 0 {
                    return Ok(out);
                }
                d -= 1;
                idx[d] += 1;
                at += t.stride[d];
                if idx[d] < t.shape[d] {
                    break;
                }
                at -= t.stride[d] * t.shape[d];
                idx[d] = 0;
            }
        }
    }
}

/// Options of [`convert`].
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Keep only the tensors whose dotted name starts with this prefix, and strip it (for
    /// example `generator_ema.model.` for Self-Forcing's EMA weights). `None` keeps all.
    pub prefix: Option<String>,
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConvertReport {
    /// `(name, dtype, shape)` of every tensor written, in file order.
    pub tensors: Vec<(String, PtDtype, Vec<usize>)>,
    /// Leaves of the pickle that were not tensors, `(name, kind)`.
    pub skipped: Vec<(String, String)>,
    /// Tensors left out by the prefix.
    pub filtered_out: usize,
    /// Bytes of tensor data written.
    pub data_bytes: u64,
}

/// The mapped file, its index and the tensors chosen by `opts` (renamed, sorted by name,
/// checked for duplicate names and for the output bound).
struct Chosen {
    map: Mmap,
    index: PtIndex,
    /// `(output name, index into index.tensors)`.
    chosen: Vec<(String, usize)>,
    filtered_out: usize,
}

/// Maps `input`, reads its index and chooses the tensors whose names `keep` accepts after
/// the prefix of `opts` is stripped.
fn choose(input: &Path, opts: &ConvertOptions, keep: &dyn Fn(&str) -> bool) -> Result<Chosen> {
    let file = File::open(input).map_err(|e| Error::io(input, e))?;
    // SAFETY: a memory map aliases the file, so `Mmap::map` is unsafe: if another process
    // truncates the file while it is mapped, touching a page past the new end raises SIGBUS;
    // if it rewrites it, the bytes behind our `&[u8]` change, which Rust's aliasing rules
    // forbid. A checkpoint must not be modified while it is converted. Every read below is
    // bounds-checked against the map's fixed length, so a file changed behind our back gives
    // wrong values or that SIGBUS, never an out-of-bounds read.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(input, e))?;
    let fail = |e: PtError| pt_error(input, e);
    let index = read_index(&map).map_err(fail)?;
    let mut chosen: Vec<(String, usize)> = Vec::new();
    let mut filtered_out = 0;
    for (i, t) in index.tensors.iter().enumerate() {
        let name = match &opts.prefix {
            Some(p) => match t.name.strip_prefix(p.as_str()) {
                Some(rest) if !rest.is_empty() => rest,
                _ => {
                    filtered_out += 1;
                    continue;
                }
            },
            None => t.name.as_str(),
        };
        if keep(name) {
            chosen.push((name.to_string(), i));
        } else {
            filtered_out += 1;
        }
    }
    if let (Some(p), true) = (&opts.prefix, chosen.is_empty()) {
        return Err(fail(PtError::Prefix(p.clone())));
    }
    chosen.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = chosen.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(fail(PtError::Layout(format!(
            "two tensors are both named `{}`",
            w[0].0
        ))));
    }
    let total: u64 = chosen
        .iter()
        .map(|&(_, i)| (index.tensors[i].numel() * index.tensors[i].dtype.size()) as u64)
        .sum();
    if total > OUTPUT_FACTOR * map.len() as u64 + 65536 {
        return Err(fail(PtError::TooLarge(format!(
            "{total} bytes of tensors from a {}-byte file",
            map.len()
        ))));
    }
    Ok(Chosen {
        map,
        index,
        chosen,
        filtered_out,
    })
}

fn pt_error(input: &Path, e: PtError) -> Error {
    Error::Checkpoint {
        path: input.display().to_string(),
        msg: e.to_string(),
    }
}

impl Chosen {
    /// The safetensors header of the chosen tensors (JSON padded with spaces to a multiple
    /// of 8 bytes, as the safetensors crate writes it) and the bytes of their data.
    fn header(&self) -> Result<(Vec<u8>, u64)> {
        let mut header = serde_json::Map::new();
        let mut off = 0u64;
        for (name, i) in &self.chosen {
            let t = &self.index.tensors[*i];
            let n = (t.numel() * t.dtype.size()) as u64;
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": t.dtype.safetensors_name(),
                    "shape": t.shape,
                    "data_offsets": [off, off + n],
                }),
            );
            off += n;
        }
        let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
            .map_err(|e| Error::Invalid(format!("safetensors header: {e}")))?;
        while json.len() % 8 != 0 {
            json.push(b' ');
        }
        Ok((json, off))
    }
}

/// The tensors of the `torch.save` checkpoint `input` whose names `keep` accepts, as the
/// bytes of a safetensors file in anonymous memory (each tensor in its own dtype): what
/// [`convert`] would write, for [`super::Checkpoint::from_image`] to read without a file.
pub fn safetensors_image(input: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Mmap> {
    let c = choose(input, &ConvertOptions::default(), keep)?;
    let (json, data) = c.header()?;
    let len = 8 + json.len() + data as usize;
    let mut image = memmap2::MmapMut::map_anon(len).map_err(|e| Error::io(input, e))?;
    image[..8].copy_from_slice(&(json.len() as u64).to_le_bytes());
    image[8..8 + json.len()].copy_from_slice(&json);
    let mut at = 8 + json.len();
    for (_, i) in &c.chosen {
        let bytes = c
            .index
            .read(&c.map, &c.index.tensors[*i])
            .map_err(|e| pt_error(input, e))?;
        image[at..at + bytes.len()].copy_from_slice(&bytes);
        at += bytes.len();
    }
    image.make_read_only().map_err(|e| Error::io(input, e))
}

/// Converts the `torch.save` checkpoint `input` into a safetensors file `output`, each tensor
/// in its original dtype, names sorted, tensors materialised one at a time.
pub fn convert(input: &Path, output: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let c = choose(input, opts, &|_| true)?;
    let mut report = ConvertReport {
        skipped: c.index.skipped.clone(),
        filtered_out: c.filtered_out,
        ..ConvertReport::default()
    };
    let (json, off) = c.header()?;
    // The output appears only once every tensor is written.
    let out = PendingFile::create(output)?;
    let mut w = BufWriter::new(out);
    let io = |e| Error::io(output, e);
    w.write_all(&(json.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&json).map_err(io)?;
    for (name, i) in &c.chosen {
        let t = &c.index.tensors[*i];
        let data = c.index.read(&c.map, t).map_err(|e| pt_error(input, e))?;
        w.write_all(&data).map_err(io)?;
        report
            .tensors
            .push((name.clone(), t.dtype, t.shape.clone()));
    }
    w.into_inner()
        .map_err(|e| Error::io(output, e.into_error()))?
        .commit()?;
    report.data_bytes = off;
    Ok(report)
}
