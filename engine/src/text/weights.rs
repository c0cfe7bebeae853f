//! Where an encoder's tensors come from: a Hugging Face folder (`model.safetensors`, or the
//! shards listed by `model.safetensors.index.json`), or tensors generated in memory. Every
//! read checks the shape and names the tensor, the expected and the found shape.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::error::{fmt_shape, path_str, Error, Result};
use crate::tensor::Tensor;

/// The single-file weights of a Hugging Face folder.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Tensors by transformers name.
pub enum TensorSource {
    /// Memory-mapped safetensors files; `index` maps a name to its file.
    Files {
        origin: String,
        files: Vec<Checkpoint>,
        index: HashMap<String, usize>,
    },
    /// Tensors held in memory (random encoders), `origin` names them in errors.
    Memory {
        origin: String,
        tensors: BTreeMap<String, Tensor>,
    },
}

impl TensorSource {
    /// The weights of the model folder `dir`.
    pub fn open(dir: &Path) -> Result<TensorSource> {
        let single = dir.join(SINGLE_FILE);
        let index_path = dir.join(INDEX_FILE);
        let origin = path_str(dir);
        if single.is_file() {
            let ckpt = Checkpoint::open(&single)?;
            let index = ckpt.names().map(|n| (n.to_string(), 0)).collect();
            return Ok(TensorSource::Files {
                origin,
                files: vec![ckpt],
                index,
            });
        }
        if !index_path.is_file() {
            return Err(Error::Invalid(format!(
                "text encoder folder {origin}: expected {SINGLE_FILE} or {INDEX_FILE} with its shards, found neither"
            )));
        }
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!("{}: not valid JSON: {e}", path_str(&index_path)))
        })?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: expected an object `weight_map` (tensor name -> shard file)",
                    path_str(&index_path)
                ))
            })?;
        let mut shard_names: Vec<String> = Vec::new();
        let mut index = HashMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: weight_map[`{name}`]: expected a file name, found {file}",
                    path_str(&index_path)
                ))
            })?;
            let i = match shard_names.iter().position(|s| s == file) {
                Some(i) => i,
                None => {
                    shard_names.push(file.to_string());
                    shard_names.len() - 1
                }
            };
            index.insert(name.clone(), i);
        }
        let files = shard_names
            .iter()
            .map(|s| {
                let p: PathBuf = dir.join(s);
                if !p.is_file() {
                    return Err(Error::Invalid(format!(
                        "text encoder folder {origin}: shard {s} listed in {INDEX_FILE} is missing"
                    )));
                }
                Checkpoint::open(&p)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TensorSource::Files {
            origin,
            files,
            index,
        })
    }

    fn origin(&self) -> &str {
        match self {
            TensorSource::Files { origin, .. } | TensorSource::Memory { origin, .. } => origin,
        }
    }

    /// Whether a tensor of that name exists.
    pub fn has(&self, name: &str) -> bool {
        match self {
            TensorSource::Files { files, index, .. } => index
                .get(name)
                .is_some_and(|&i| files[i].info(name).is_some()),
            TensorSource::Memory { tensors, .. } => tensors.contains_key(name),
        }
    }

    /// The shape of a tensor, when it exists.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            TensorSource::Files { files, index, .. } => index
                .get(name)
                .and_then(|&i| files[i].info(name))
                .map(|t| t.shape.clone()),
            TensorSource::Memory { tensors, .. } => tensors.get(name).map(|t| t.shape.clone()),
        }
    }

    /// Tensor `name` of shape `shape` in f32.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self {
            TensorSource::Files { files, index, .. } => match index.get(name) {
                Some(&i) => files[i].read_f32(name, shape),
                None => Err(self.missing(name, shape)),
            },
            TensorSource::Memory { origin, tensors } => {
                let t = tensors.get(name).ok_or_else(|| self.missing(name, shape))?;
                if t.shape != shape {
                    return Err(Error::Tensor {
                        path: origin.clone(),
                        tensor: name.into(),
                        expected: format!("shape {}", fmt_shape(shape)),
                        found: format!("shape {}", fmt_shape(&t.shape)),
                    });
                }
                Ok(t.clone())
            }
        }
    }

    /// The first of `names` that exists (tied embeddings have several names).
    pub fn get_any(&self, names: &[&str], shape: &[usize]) -> Result<Tensor> {
        let name = names.iter().find(|n| self.has(n)).unwrap_or(&names[0]);
        self.get(name, shape)
    }

    fn missing(&self, name: &str, shape: &[usize]) -> Error {
        Error::Tensor {
            path: self.origin().to_string(),
            tensor: name.into(),
            expected: format!("a tensor of shape {}", fmt_shape(shape)),
            found: "none".into(),
        }
    }
}

/// How a folder names an encoder's tensors: a tensor the engine calls `from` + rest is
/// stored as `to` + rest (`("text_model.", "")`: the CLIPTextModel layout of transformers
/// 5.x, without the `text_model.` prefix). `("", "")` is the engine's own naming.
pub type Prefix = (&'static str, &'static str);

/// A [`TensorSource`] read through the layout detected for it: every name given is the
/// engine's (transformers 4.x) name, mapped to the name the folder stores.
pub struct Layout<'a> {
    src: &'a TensorSource,
    prefix: Prefix,
}

impl<'a> Layout<'a> {
    /// The first of `layouts` under which `telltale` (an engine name) exists in `src`; an
    /// error naming every name tried when none does.
    pub fn detect(src: &'a TensorSource, telltale: &str, layouts: &[Prefix]) -> Result<Layout<'a>> {
        let found = layouts
            .iter()
            .find(|&&p| src.has(&Self::map(p, telltale)));
        match found {
            Some(&prefix) => Ok(Layout { src, prefix }),
            None => {
                let tried: Vec<String> = layouts
                    .iter()
                    .map(|&p| format!("`{}`", Self::map(p, telltale)))
                    .collect();
                Err(Error::Tensor {
                    path: src.origin().to_string(),
                    tensor: telltale.into(),
                    expected: format!("a tensor named {}", tried.join(" or ")),
                    found: "none".into(),
                })
            }
        }
    }

    fn map((from, to): Prefix, name: &str) -> String {
        match name.strip_prefix(from) {
            Some(rest) => format!("{to}{rest}"),
            None => name.to_string(),
        }
    }

    /// The stored name of engine name `name`.
    pub fn stored(&self, name: &str) -> String {
        Self::map(self.prefix, name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.src.has(&self.stored(name))
    }

    /// Tensor `name` (an engine name) of shape `shape` in f32.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.src.get(&self.stored(name), shape)
    }

    /// The first of `names` that exists (tied embeddings have several names).
    pub fn get_any(&self, names: &[&str], shape: &[usize]) -> Result<Tensor> {
        let name = names.iter().find(|n| self.has(n)).unwrap_or(&names[0]);
        self.get(name, shape)
    }

    /// Checks that the weights hold exactly the `declared` layers of the config (field
    /// `field`): layer `i` exists when `layer_tensor(i)` does. Counting stops at the first
    /// missing layer, so a config of a billion layers costs one look-up more than the file
    /// holds.
    pub fn check_layers(
        &self,
        field: &str,
        declared: usize,
        layer_tensor: impl Fn(usize) -> String,
    ) -> Result<()> {
        let held = (0..).take_while(|&i| self.has(&layer_tensor(i))).count();
        if held != declared {
            return Err(Error::Invalid(format!(
                "{}: config.json: field `{field}` declares {declared} layers but the weights hold {held} (tensor `{}` {})",
                self.src.origin(),
                self.stored(&layer_tensor(declared.min(held))),
                if held > declared { "exists" } else { "is missing" }
            )));
        }
        Ok(())
    }
}

/// Reads `config.json` of a model folder.
pub fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(Error::Invalid(format!(
            "text encoder folder {}: expected config.json, found none",
            path_str(dir)
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", path_str(&path))))
}

/// The largest value the engine accepts for an integer field of a text encoder's
/// `config.json`: far above every released T5, umT5 and CLIP, and small enough that the
/// model's sizes cannot overflow or ask for more memory than a machine has before the
/// weights file is even read (the profile's own bounds are in `crate::model::limits`).
pub fn config_limit(key: &str) -> usize {
    use crate::model::limits::{MAX_DEPTH, MAX_FFN, MAX_HEADS, MAX_TEXT_LEN, MAX_WIDTH};
    match key {
        "num_layers" | "num_decoder_layers" | "num_hidden_layers" => MAX_DEPTH,
        "num_heads" | "num_attention_heads" => MAX_HEADS,
        "d_ff" | "intermediate_size" => MAX_FFN,
        "vocab_size" => 1 << 22,
        "max_position_embeddings" | "relative_attention_max_distance" => MAX_TEXT_LEN,
        "relative_attention_num_buckets" => 4_096,
        // d_model, d_kv, hidden_size and anything else.
        _ => MAX_WIDTH,
    }
}

/// Typed access to a config object, naming the file and field in errors.
pub struct ConfigReader<'a> {
    pub origin: &'a str,
    pub json: &'a Value,
}

impl ConfigReader<'_> {
    fn bad(&self, key: &str, expected: &str, found: Option<&Value>) -> Error {
        let found = found.map_or("nothing".to_string(), |v| v.to_string());
        Error::Invalid(format!(
            "{}: config.json: field `{key}`: expected {expected}, found {found}",
            self.origin
        ))
    }

    /// A positive integer field, at most [`config_limit`] of the key.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.json.get(key);
        let max = config_limit(key);
        match v.and_then(Value::as_u64) {
            Some(n) if n > 0 && n <= max as u64 => Ok(n as usize),
            Some(n) if n > 0 => Err(self.bad(
                key,
                &format!("at most {max} (the engine's limit)"),
                v,
            )),
            _ => Err(self.bad(key, "a positive integer", v)),
        }
    }

    /// A positive integer field, or `default` when absent.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.usize(key),
        }
    }

    /// A positive number field, or `default` when absent.
    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => Ok(x as f32),
                _ => Err(self.bad(key, "a positive number", Some(v))),
            },
        }
    }

    /// A string field, or `default` when absent.
    pub fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.bad(key, "a string", Some(v))),
        }
    }

    /// An error for a field whose value is not one of `allowed`.
    pub fn unknown(&self, key: &str, allowed: &str) -> Error {
        self.bad(key, &format!("one of {allowed}"), self.json.get(key))
    }
}
