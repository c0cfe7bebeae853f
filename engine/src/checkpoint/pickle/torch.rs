//! The torch side of the restricted unpickler: the globals it may name, the storages of
//! persistent ids, and the two callables it may REDUCE (tensor and parameter rebuilds).

use std::rc::Rc;

use super::vm::{Pickle, Value};
use super::{PtDtype, PtError};

/// The callables a pickle may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(PtDtype),
}

/// A storage named by a persistent id `('storage', type, key, location, numel)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    pub dtype: PtDtype,
    pub key: String,
    pub numel: usize,
}

/// A tensor view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

pub fn global(module: &str, name: &str) -> Result<Global, PtError> {
    let dtype = |d| Ok(Global::Storage(d));
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", "FloatStorage") => dtype(PtDtype::F32),
        ("torch", "DoubleStorage") => dtype(PtDtype::F64),
        ("torch", "HalfStorage") => dtype(PtDtype::F16),
        ("torch", "BFloat16Storage") => dtype(PtDtype::BF16),
        ("torch", "LongStorage") => dtype(PtDtype::I64),
        ("torch", "IntStorage") => dtype(PtDtype::I32),
        ("torch", "ShortStorage") => dtype(PtDtype::I16),
        ("torch", "CharStorage") => dtype(PtDtype::I8),
        ("torch", "ByteStorage") => dtype(PtDtype::U8),
        ("torch", "BoolStorage") => dtype(PtDtype::Bool),
        _ => Err(PtError::Global {
            module: module.to_string(),
            name: name.to_string(),
        }),
    }
}

fn as_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} {i} is negative")),
        other => Err(format!("{what} is a {}, expected an int", other.kind())),
    }
}

fn usizes(p: &Pickle, v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(t) => p.tuples[*t].iter().map(|x| as_usize(x, what)).collect(),
        other => Err(format!("{what} is a {}, expected a tuple", other.kind())),
    }
}

/// `('storage', storage_type, key, location, numel)`.
pub fn persistent_storage(p: &Pickle, pid: &Value) -> Result<StorageRef, String> {
    let t = match pid {
        Value::Tuple(t) if p.tuples[*t].len() == 5 => &p.tuples[*t],
        other => {
            return Err(format!(
                "persistent id is a {}, expected a 5-tuple",
                other.kind()
            ))
        }
    };
    match &t[0] {
        Value::Str(s) if &**s == "storage" => {}
        _ => return Err("persistent id does not start with 'storage'".into()),
    }
    let dtype = match &t[1] {
        Value::Global(Global::Storage(d)) => *d,
        other => {
            return Err(format!(
                "storage type is a {}, expected a torch storage class",
                other.kind()
            ))
        }
    };
    let key = match &t[2] {
        Value::Str(s) => s.to_string(),
        other => return Err(format!("storage key is a {}, expected a str", other.kind())),
    };
    let numel = as_usize(&t[4], "storage size")?;
    Ok(StorageRef { dtype, key, numel })
}

pub fn reduce(p: &Pickle, f: &Value, args: &Value) -> Result<Value, PtError> {
    let args = match args {
        Value::Tuple(t) => &p.tuples[*t],
        other => {
            return Err(PtError::Reduce(format!(
                "arguments are a {}, expected a tuple",
                other.kind()
            )))
        }
    };
    match f {
        Value::Global(Global::RebuildTensorV2) if (6..=7).contains(&args.len()) => {
            let storage = match &args[0] {
                Value::Storage(s) => (**s).clone(),
                other => {
                    return Err(PtError::Reduce(format!(
                        "_rebuild_tensor_v2 storage is a {}",
                        other.kind()
                    )))
                }
            };
            let bad = |m: String| PtError::Reduce(format!("_rebuild_tensor_v2: {m}"));
            let offset = as_usize(&args[1], "storage offset").map_err(bad)?;
            let shape = usizes(p, &args[2], "size").map_err(bad)?;
            let stride = usizes(p, &args[3], "stride").map_err(bad)?;
            if shape.len() != stride.len() {
                return Err(bad(format!(
                    "{} sizes but {} strides",
                    shape.len(),
                    stride.len()
                )));
            }
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage,
                offset,
                shape,
                stride,
            })))
        }
        Value::Global(Global::RebuildParameter) if args.len() == 3 => match &args[0] {
            Value::Tensor(t) => Ok(Value::Tensor(t.clone())),
            other => Err(PtError::Reduce(format!(
                "_rebuild_parameter of a {}",
                other.kind()
            ))),
        },
        Value::Global(g) => Err(PtError::Reduce(format!(
            "{g:?} with {} arguments",
            args.len()
        ))),
        other => Err(PtError::Reduce(format!(
            "a {} is not callable",
            other.kind()
        ))),
    }
}
