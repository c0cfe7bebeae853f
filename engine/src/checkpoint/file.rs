//! Reading a safetensors file through a memory map, and writing one block by block.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use serde_json::Value;

use super::atomic::PendingFile;
use super::header::{parse_file, TensorInfo};
use super::DType;
use crate::error::{fmt_shape, path_str, Error, Result};
use crate::tensor::{describe_non_finite, Tensor};

/// Elements generated and written at a time by the streaming writer.
const WRITE_BLOCK: usize = 1 << 22;

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
        // A directory opens like a file on Linux, and mapping it then fails with "No such
        // device": say what it is instead.
        if file.metadata().map_err(|e| Error::io(path, e))?.is_dir() {
            return Err(Error::Checkpoint {
                path: path_str(path),
                msg: "is a directory; expected a safetensors file".into(),
            });
        }
        // SAFETY: a memory map aliases the file, so `Mmap::map` is unsafe: if another process
        // truncates the file while it is mapped, touching a page past the new end raises
        // SIGBUS and kills this process; if it rewrites the file, the bytes behind the
        // `&[u8]` we hand out change, which Rust's aliasing rules forbid. Nothing in the
        // engine writes a checkpoint it reads, and a checkpoint must not be modified or
        // truncated while an engine loads it. The header is parsed once, below, and every
        // later read is bounds-checked against this map's fixed length, so a file changed
        // behind our back gives wrong values or that SIGBUS, never an out-of-bounds read.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Checkpoint::from_image(path, map)
    }

    /// A checkpoint over `map`, the bytes of a safetensors file that `path` names (a file
    /// mapped by [`Checkpoint::open`], or a `.pth` converted in memory); the header is
    /// validated as `open` does.
    pub fn from_image(path: &Path, map: Mmap) -> Result<Checkpoint> {
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

    /// A tensor's header entry and its bytes, as stored (for upload to a device); an error
    /// when a value is NaN or infinite, as [`Checkpoint::read_f32`].
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.find(name, "a tensor of that name".into())?;
        let bytes = &self.map[info.bytes.clone()];
        if let Some(dtype) = DType::from_safetensors(info.dtype) {
            if let Some(i) = dtype.first_non_finite(bytes) {
                let size = dtype.size_bytes();
                let mut value = [0.0];
                let _ = dtype.decode_par(&bytes[i * size..(i + 1) * size], &mut value);
                return Err(self.non_finite(info, value[0], i));
            }
        }
        Ok((info, bytes))
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
        // The size comes from the file: allocate fallibly rather than abort.
        let numel = info.numel();
        let mut data = Vec::new();
        data.try_reserve_exact(numel).map_err(|e| {
            self.tensor_error(
                &info.name,
                format!("{numel} f32 values that fit in memory"),
                format!("an allocation failure ({e})"),
            )
        })?;
        data.resize(numel, 0.0);
        if let Some(i) = dtype.decode_par(&self.map[info.bytes.clone()], &mut data) {
            return Err(self.non_finite(info, data[i], i));
        }
        Ok(Tensor {
            shape: info.shape.clone(),
            data,
        })
    }

    /// A weight holding NaN or infinity: the tensor, the value and where it is.
    fn non_finite(&self, info: &TensorInfo, value: f32, index: usize) -> Error {
        self.tensor_error(
            &info.name,
            "finite values".into(),
            describe_non_finite(value, index, &info.shape),
        )
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
pub(super) fn write_file(
    path: &Path,
    entries: &[(&str, &[usize])],
    dtype: DType,
    metadata: &[(&str, String)],
    mut fill: impl FnMut(usize, usize, &mut [f32]),
) -> Result<u64> {
    // The file appears under `path` only once every block is written.
    let file = PendingFile::create(path)?;
    let (send, blocks) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let mut written = 0;
            for block in blocks {
                out.write_all(&block)?;
                written += block.len() as u64;
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            Ok((written, file))
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
    let (written, mut file) = written.map_err(|e: std::io::Error| Error::io(path, e))?;
    file.commit()?;
    Ok(written)
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
