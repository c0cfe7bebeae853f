//! The safetensors header, parsed and validated so that every error names the tensor and
//! the byte positions involved.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;

use safetensors::Dtype;
use serde::de::{IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{error::Category, Value};

use crate::error::fmt_shape;

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

/// The largest header the safetensors crate accepts.
const MAX_HEADER: u64 = 100_000_000;

type Header = (Vec<TensorInfo>, BTreeMap<String, String>);

/// Parses and validates the header of a whole safetensors file held in `buf`. Tensors come
/// back in offset order with absolute byte ranges, every range checked against `buf`.
pub(super) fn parse_file(buf: &[u8]) -> std::result::Result<Header, String> {
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
    let data_len = file_len - data_start;
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
        if s != end {
            // A tensor moved out of the file breaks the tiling where it used to be: blame
            // it rather than its neighbour.
            if let Some(out) = out_of_range(&tensors, data_len) {
                return Err(out);
            }
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

/// An error naming the first tensor (in offset order) whose data offsets reach past the
/// `data_len` bytes of the data section, if any.
fn out_of_range(tensors: &[TensorInfo], data_len: usize) -> Option<String> {
    tensors.iter().find(|t| t.bytes.end > data_len).map(|t| {
        format!(
            "header: tensor `{}` has data offsets [{}, {}], past the end of the data section ({data_len} bytes)",
            t.name, t.bytes.start, t.bytes.end
        )
    })
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
