//! Checkpoints: random weights round-trip through files bit for bit, files follow the
//! safetensors format, and every bad file gives an error that names the path, the tensor,
//! what was expected and what was found, without a panic.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use streamdit::checkpoint::{self, Checkpoint, DType, Weights};
use streamdit::model::streamdit::schema::{self, Group, Init};
use streamdit::model::ModelConfig;
use streamdit::{rng, Error, Profile, Tensor};

const ALL_GROUPS: [Group; 3] = [Group::Dit, Group::Preview, Group::TextEmbed];

/// A file under the temp dir with a name unique to this process and call, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "streamdit-checkpoint-{}-{n}-{tag}.safetensors",
            std::process::id()
        );
        TempFile(std::env::temp_dir().join(name))
    }

    fn with_bytes(tag: &str, bytes: &[u8]) -> TempFile {
        let file = TempFile::new(tag);
        std::fs::write(&file.0, bytes).unwrap();
        file
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tiny() -> ModelConfig {
    Profile::builtin("tiny").unwrap().model
}

fn assert_same_bits(a: &Weights, b: &Weights) {
    let names = |w: &Weights| w.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b));
    for (name, ta) in a.iter() {
        let tb = b.get(name).unwrap();
        assert_eq!(ta.shape, tb.shape, "{name}");
        let differ = ta
            .data
            .iter()
            .zip(&tb.data)
            .position(|(x, y)| x.to_bits() != y.to_bits());
        assert_eq!(
            differ, None,
            "tensor `{name}` differs at element {differ:?}"
        );
    }
}

/// The message of an `Error::Checkpoint`, after checking that it names `path`.
fn checkpoint_msg<T: Debug>(result: Result<T, Error>, path: &Path) -> String {
    match result {
        Err(e @ Error::Checkpoint { .. }) => {
            let text = e.to_string();
            let prefix = format!("checkpoint {}: ", path.display());
            assert!(
                text.starts_with(&prefix),
                "`{text}` does not name {}",
                path.display()
            );
            text[prefix.len()..].to_string()
        }
        other => panic!("expected Error::Checkpoint, got {other:?}"),
    }
}

/// The full message of an `Error::Tensor`.
fn tensor_msg<T: Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(e @ Error::Tensor { .. }) => e.to_string(),
        other => panic!("expected Error::Tensor, got {other:?}"),
    }
}

/// A file from a hand-written header and data.
fn raw_file(header: impl AsRef<[u8]>, data: &[u8]) -> Vec<u8> {
    let header = header.as_ref();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// Little-endian bytes of `values` in `dtype`.
fn le_bytes(values: &[f32], dtype: Dtype) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&x| match dtype {
            Dtype::F16 => f16::from_f32(x).to_le_bytes().to_vec(),
            Dtype::BF16 => bf16::from_f32(x).to_le_bytes().to_vec(),
            Dtype::F32 => x.to_le_bytes().to_vec(),
            Dtype::I32 => (x as i32).to_le_bytes().to_vec(),
            other => panic!("no encoding for {other}"),
        })
        .collect()
}

/// A file written by the reference implementation: `(name, dtype, shape, bytes)`.
fn reference_file(tag: &str, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> TempFile {
    let views = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()));
    TempFile::with_bytes(tag, &safetensors::serialize(views, None).unwrap())
}

/// Every tensor of `w` as f32 entries for [`reference_file`].
fn entries(w: &Weights) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    w.iter()
        .map(|(n, t)| {
            (
                n.to_string(),
                Dtype::F32,
                t.shape.clone(),
                le_bytes(&t.data, Dtype::F32),
            )
        })
        .collect()
}

/// Tiny, deterministic pseudo-random numbers for fuzzing (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Opens `path` and reads every tensor, turning a panic into a failure that says `what`.
fn open_and_read(path: &Path, what: &str) -> Result<BTreeMap<String, Tensor>, Error> {
    catch_unwind(AssertUnwindSafe(|| checkpoint::read_tensors(path)))
        .unwrap_or_else(|_| panic!("reading a checkpoint panicked: {what}"))
}

#[test]
fn random_checkpoint_round_trips_bit_for_bit_in_every_dtype() {
    let cfg = tiny();
    for dtype in DType::ALL {
        let file = TempFile::new("roundtrip");
        checkpoint::write_random_checkpoint(&cfg, 7, dtype, file.path()).unwrap();
        let loaded = Weights::load(file.path(), &cfg, &ALL_GROUPS).unwrap();
        assert_same_bits(&loaded, &Weights::random(&cfg, 7, dtype));
        assert_eq!(loaded.source(), file.path().display().to_string());

        let ckpt = Checkpoint::open(file.path()).unwrap();
        let names: Vec<&str> = ckpt.names().collect();
        let specs = schema::checkpoint_tensors(&cfg);
        let expected: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, expected, "file order is the canonical order");
        for spec in &specs {
            let info = ckpt.info(&spec.name).unwrap();
            assert_eq!(
                (info.dtype, &info.shape),
                (dtype.to_safetensors(), &spec.shape)
            );
        }
        assert_eq!(ckpt.metadata()["streamdit.seed"], "7");
        assert_eq!(ckpt.metadata()["format"], "pt");
        assert_eq!(ckpt.metadata()["streamdit.dtype"], dtype.to_string());
    }
}

#[test]
fn random_weights_depend_on_the_seed_and_dtype_only() {
    let cfg = tiny();
    let a = Weights::random(&cfg, 1, DType::F16);
    assert_same_bits(&a, &Weights::random(&cfg, 1, DType::F16));
    let b = Weights::random(&cfg, 2, DType::F16);
    for (name, t) in a.iter() {
        assert_ne!(
            t.data,
            b.get(name).unwrap().data,
            "`{name}` ignores the seed"
        );
    }
    // Each dtype is the f32 weights rounded to nearest even.
    let f32w = Weights::random(&cfg, 1, DType::F32);
    for (dtype, w) in [
        (DType::F16, &a),
        (DType::BF16, &Weights::random(&cfg, 1, DType::BF16)),
    ] {
        for (name, t) in w.iter() {
            let exact = &f32w.get(name).unwrap().data;
            let rounded: Vec<f32> = exact.iter().map(|&x| dtype.round(x)).collect();
            assert_eq!(t.data, rounded, "`{name}` in {dtype}");
        }
    }
    assert!(a
        .iter()
        .flat_map(|(_, t)| &t.data)
        .all(|x| f16::from_f32(*x).to_f32() == *x));
}

#[test]
fn random_weights_follow_the_schema_init() {
    let cfg = tiny();
    let seed = 3;
    let w = Weights::random(&cfg, seed, DType::F32);
    let specs = schema::checkpoint_tensors(&cfg);
    assert_eq!(w.len(), specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let t = w.get(&spec.name).unwrap();
        assert_eq!(t.shape, spec.shape, "{}", spec.name);
        let cols = spec.shape.iter().skip(1).product::<usize>();
        let law = |i: usize| match &spec.init {
            Init::Uniform { mean, half_width } => (*mean, *half_width),
            Init::Rows(rows) => {
                assert_eq!(rows.len(), spec.shape[0], "{}: one init per row", spec.name);
                rows[i / cols]
            }
        };
        // The counter word is the tensor's canonical position; rows share one index space.
        for (i, &x) in t.data.iter().enumerate() {
            let (mean, hw) = law(i);
            let want = rng::init_value(seed, index as u32, i as u64, mean, hw);
            assert_eq!(x.to_bits(), want.to_bits(), "{}[{i}]", spec.name);
            assert!(
                (x - mean).abs() <= hw,
                "{}[{i}] = {x} outside {mean} +- {hw}",
                spec.name
            );
        }
    }
    // docs/streamdit.md split6 order [sh1, sc1, g1, sh2, sc2, g2]: rows 2 and 5 are gates.
    for dtype in DType::ALL {
        let w = Weights::random(&cfg, seed, dtype);
        for l in 0..cfg.depth {
            let table = w.get(&format!("blocks.{l}.mod_table")).unwrap();
            for row in [2, 5] {
                let gate = &table.data[row * cfg.dim..(row + 1) * cfg.dim];
                assert!(
                    gate.iter().all(|&g| (0.09..=0.31).contains(&g)),
                    "blocks.{l}.mod_table row {row} in {dtype} has a gate near zero"
                );
            }
        }
    }
}

#[test]
fn writer_streams_a_valid_safetensors_file() {
    let cfg = tiny();
    let file = TempFile::new("stream");
    let written = checkpoint::write_random_checkpoint(&cfg, 11, DType::BF16, file.path()).unwrap();
    let bytes = std::fs::read(file.path()).unwrap();
    assert_eq!(written, bytes.len() as u64);

    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(header_len % 8, 0, "header padded to a multiple of 8");
    assert_eq!(bytes[8], b'{');
    let specs = schema::checkpoint_tensors(&cfg);
    let data: usize = specs.iter().map(|s| s.numel() * 2).sum();
    assert_eq!(bytes.len(), 8 + header_len + data);

    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let expected: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    assert_eq!(meta.offset_keys(), expected);
    assert_eq!(meta.metadata().as_ref().unwrap()["streamdit.seed"], "11");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let w = Weights::random(&cfg, 11, DType::BF16);
    for spec in &specs {
        let view = st.tensor(&spec.name).unwrap();
        assert_eq!(
            (view.dtype(), view.shape()),
            (Dtype::BF16, spec.shape.as_slice())
        );
        let want = le_bytes(&w.get(&spec.name).unwrap().data, Dtype::BF16);
        assert!(view.data() == want.as_slice(), "`{}` bytes", spec.name);
    }
}

#[test]
fn tensors_larger_than_one_write_block_round_trip() {
    // `text_embed.weight` [259, 16400] and `text_proj.1.weight` [256, 16400] exceed the
    // writer's 4Mi-element block, so they are generated and written in several pieces.
    let cfg = ModelConfig {
        text_dim: 16_400,
        ..tiny()
    };
    let file = TempFile::new("blocks");
    checkpoint::write_random_checkpoint(&cfg, 9, DType::F16, file.path()).unwrap();
    let loaded = Weights::load(file.path(), &cfg, &ALL_GROUPS).unwrap();
    assert_same_bits(&loaded, &Weights::random(&cfg, 9, DType::F16));
    assert_eq!(
        loaded.get("text_embed.weight").unwrap().shape,
        [259, 16_400]
    );
}

#[test]
fn load_reads_only_the_requested_groups() {
    let cfg = tiny();
    let file = TempFile::new("groups");
    checkpoint::write_random_checkpoint(&cfg, 5, DType::F16, file.path()).unwrap();
    let w = Weights::load(file.path(), &cfg, &[Group::Dit]).unwrap();
    let dit = schema::checkpoint_tensors(&cfg)
        .iter()
        .filter(|s| s.group == Group::Dit)
        .count();
    assert_eq!(w.len(), dit);
    let msg = tensor_msg(w.get("preview.weight"));
    assert!(
        msg.contains("tensor `preview.weight`") && msg.contains("found none"),
        "{msg}"
    );
    assert!(msg.contains(&file.path().display().to_string()), "{msg}");
    let w = Weights::load(file.path(), &cfg, &[Group::Preview]).unwrap();
    let names: Vec<&str> = w.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["preview.bias", "preview.weight"]);
}

#[test]
fn missing_and_misshapen_tensors_are_named_first_in_canonical_order() {
    let cfg = tiny();
    let good = entries(&Weights::random(&cfg, 1, DType::F32));
    let edit = |drop: &[&str], reshape: Option<(&str, Vec<usize>)>| {
        let mut t: Vec<_> = good
            .iter()
            .filter(|e| !drop.contains(&e.0.as_str()))
            .cloned()
            .collect();
        if let Some((name, shape)) = reshape {
            let e = t.iter_mut().find(|e| e.0 == name).unwrap();
            let n: usize = shape.iter().product();
            (e.2, e.3) = (shape, vec![0; n * 4]);
        }
        reference_file("bad", &t)
    };

    let file = edit(&["blocks.2.cross.kv.bias"], None);
    let msg = tensor_msg(Weights::load(file.path(), &cfg, &ALL_GROUPS));
    let n = good.len() - 1;
    assert_eq!(
        msg,
        format!(
            "checkpoint {}: tensor `blocks.2.cross.kv.bias`: expected shape [512], found none (the checkpoint has {n} tensors)",
            file.path().display()
        )
    );
    // Not needed by the Dit group alone: that load succeeds.
    let file = edit(&["text_embed.weight"], None);
    Weights::load(file.path(), &cfg, &[Group::Dit, Group::Preview]).unwrap();

    let file = edit(&[], Some(("blocks.3.attn.qkv.weight", vec![768, 255])));
    assert_eq!(
        tensor_msg(Weights::load(file.path(), &cfg, &ALL_GROUPS)),
        format!(
            "checkpoint {}: tensor `blocks.3.attn.qkv.weight`: expected shape [768, 256], found shape [768, 255]",
            file.path().display()
        )
    );

    // Several problems: the first in canonical order is reported, whatever the file order.
    let file = edit(
        &[
            "blocks.2.cross.kv.bias",
            "text_embed.weight",
            "blocks.0.ffn.w2.weight",
        ],
        Some(("blocks.1.attn.qkv.weight", vec![1])),
    );
    let msg = tensor_msg(Weights::load(file.path(), &cfg, &ALL_GROUPS));
    assert!(
        msg.contains("tensor `blocks.0.ffn.w2.weight`: expected shape [256, 768], found none"),
        "{msg}"
    );
}

#[test]
fn tensors_of_other_dtypes_are_rejected_by_name() {
    let cfg = tiny();
    let mut t = entries(&Weights::random(&cfg, 1, DType::F32));
    let e = t.iter_mut().find(|e| e.0 == "time_mod.bias").unwrap();
    e.1 = Dtype::I32;
    let file = reference_file("i32", &t);
    assert_eq!(
        tensor_msg(Weights::load(file.path(), &cfg, &ALL_GROUPS)),
        format!(
            "checkpoint {}: tensor `time_mod.bias`: expected dtype f16, bf16 or f32, found I32",
            file.path().display()
        )
    );

    let ids = [(String::from("ids"), Dtype::I64, vec![2], vec![0; 16])];
    let file = reference_file("i64", &ids);
    let ckpt = Checkpoint::open(file.path()).unwrap();
    let msg = tensor_msg(ckpt.read_f32("ids", &[2]));
    assert!(
        msg.ends_with("tensor `ids`: expected dtype f16, bf16 or f32, found I64"),
        "{msg}"
    );
    let (info, bytes) = ckpt.raw("ids").unwrap();
    assert_eq!((info.dtype, bytes.len()), (Dtype::I64, 16));
    let msg = tensor_msg(checkpoint::read_tensors(file.path()));
    assert!(msg.contains("found I64"), "{msg}");
    let msg = tensor_msg(ckpt.raw("nope"));
    assert!(
        msg.contains("tensor `nope`") && msg.contains("found none (the checkpoint has 1 tensors)"),
        "{msg}"
    );
}

#[test]
fn small_tensor_files_round_trip() {
    let a = Tensor::new(vec![2, 3], vec![1.0, -2.5, 1e-3, 65504.0, 1.2345678, -0.0]).unwrap();
    let scalar = Tensor::new(vec![], vec![0.1]).unwrap();
    let empty = Tensor::new(vec![0, 3], vec![]).unwrap();
    let odd_name = "we\"ird\\ name\n\u{e9}\u{1F600}";
    let list = [
        ("x", &a),
        ("tau", &scalar),
        ("empty", &empty),
        (odd_name, &a),
    ];
    for dtype in DType::ALL {
        let file = TempFile::new("small");
        checkpoint::write_tensors(file.path(), &list, dtype).unwrap();
        let back = checkpoint::read_tensors(file.path()).unwrap();
        assert_eq!(back.len(), 4);
        for (name, t) in list {
            let rounded: Vec<f32> = t.data.iter().map(|&x| dtype.round(x)).collect();
            assert_eq!(
                back[name],
                Tensor::new(t.shape.clone(), rounded).unwrap(),
                "{name}"
            );
        }
        let bytes = std::fs::read(file.path()).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor(odd_name).unwrap().shape(), [2, 3]);
        let ckpt = Checkpoint::open(file.path()).unwrap();
        let (info, raw) = ckpt.raw("x").unwrap();
        assert_eq!(
            (info.dtype, raw),
            (
                dtype.to_safetensors(),
                &le_bytes(&a.data, dtype.to_safetensors())[..]
            )
        );
        assert_eq!(
            ckpt.names().collect::<Vec<_>>(),
            ["x", "tau", "empty", odd_name]
        );
    }
    // f32 is exact, f16 rounds to nearest even.
    assert_eq!(DType::F16.round(1.0 + 1.0 / 2048.0), 1.0);
    assert_eq!(DType::F16.round(1.0 + 3.0 / 2048.0), 1.0 + 4.0 / 2048.0);

    let file = TempFile::new("dup");
    let err = checkpoint::write_tensors(file.path(), &[("x", &a), ("x", &a)], DType::F32);
    assert!(
        matches!(err, Err(Error::Invalid(ref m)) if m.contains("`x`")),
        "{err:?}"
    );
    let bad = Tensor {
        shape: vec![4],
        data: vec![1.0],
    };
    let err = checkpoint::write_tensors(file.path(), &[("bad", &bad)], DType::F32);
    assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
}

#[test]
fn dtype_parses_and_prints() {
    for dtype in DType::ALL {
        assert_eq!(dtype.to_string().parse::<DType>().unwrap(), dtype);
        assert_eq!(DType::from_safetensors(dtype.to_safetensors()), Some(dtype));
    }
    assert_eq!(DType::ALL.map(DType::size_bytes), [2, 2, 4]);
    assert_eq!(DType::from_safetensors(Dtype::F64), None);
    let err = "F16".parse::<DType>().unwrap_err().to_string();
    assert_eq!(err, "dtype `F16`: expected one of f16, bf16, f32");
}

#[test]
fn missing_files_and_directories_are_io_errors() {
    let file = TempFile::new("absent");
    let err = Checkpoint::open(file.path()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&file.path().display().to_string()));

    let nowhere = file.path().join("sub").join("out.safetensors");
    let err = checkpoint::write_random_checkpoint(&tiny(), 0, DType::F16, &nowhere).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&nowhere.display().to_string()));
}

#[test]
fn truncated_files_are_rejected_at_every_length() {
    let a = Tensor::new(vec![2, 3], vec![1.0; 6]).unwrap();
    let b = Tensor::new(vec![5], vec![2.0; 5]).unwrap();
    let full = TempFile::new("full");
    checkpoint::write_tensors(full.path(), &[("a", &a), ("b", &b)], DType::F16).unwrap();
    let bytes = std::fs::read(full.path()).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for len in 0..bytes.len() {
        let file = TempFile::with_bytes("cut", &bytes[..len]);
        let msg = checkpoint_msg(
            open_and_read(file.path(), &format!("cut at {len}")),
            file.path(),
        );
        let want = if len < 8 {
            format!("file is {len} bytes, shorter than the 8-byte header length")
        } else if len < header_end {
            format!("file is {len} bytes but the header length says the header ends at byte {header_end}")
        } else {
            format!(
                "file is {len} bytes but header says tensor `b` ends at byte {}",
                bytes.len()
            )
        };
        assert_eq!(msg, want);
    }
    // Bytes after the data are rejected too.
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 3]);
    let file = TempFile::with_bytes("long", &long);
    let msg = checkpoint_msg(Checkpoint::open(file.path()), file.path());
    assert_eq!(
        msg,
        format!(
            "file is {} bytes but its header and tensor data end at byte {} (3 bytes left over)",
            long.len(),
            bytes.len()
        )
    );

    // A real model checkpoint, cut inside the prefix, the header and the data.
    let cfg = tiny();
    let model = TempFile::new("model");
    checkpoint::write_random_checkpoint(&cfg, 1, DType::F16, model.path()).unwrap();
    let bytes = std::fs::read(model.path()).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for len in [
        0,
        5,
        8,
        100,
        header_end - 1,
        header_end,
        header_end + 1,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        let file = TempFile::with_bytes("model-cut", &bytes[..len]);
        let result = catch_unwind(AssertUnwindSafe(|| {
            Weights::load(file.path(), &cfg, &ALL_GROUPS)
        }))
        .unwrap_or_else(|_| panic!("loading a model cut at {len} panicked"));
        let msg = checkpoint_msg(result, file.path());
        assert!(msg.starts_with(&format!("file is {len} bytes")), "{msg}");
        if len >= header_end {
            assert!(
                msg.ends_with(&format!(
                    "tensor `text_embed.weight` ends at byte {}",
                    bytes.len()
                )),
                "{msg}"
            );
        }
    }
}

#[test]
fn corrupt_headers_are_rejected_with_the_reason() {
    let f32x2 = r#""dtype":"F32","shape":[2]"#;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad JSON", raw_file(format!(r#"{{"a":{{{f32x2},"data_offsets":[0,8]}}"#), &[0; 8]), "header is not valid JSON: EOF while parsing an object at line 1 column 53"),
        ("not an object", raw_file("[1]", &[]), "header is not a JSON object: invalid type: sequence, expected a JSON object at line 1 column 0"),
        ("empty header", raw_file("", &[]), "header is not valid JSON: EOF while parsing a value at line 1 column 0"),
        ("not UTF-8", raw_file(b"{\"\xff\":1}", &[]), "header is not valid UTF-8"),
        ("header longer than the file", [&1000u64.to_le_bytes()[..], b"{}"].concat(), "file is 10 bytes but the header length says the header ends at byte 1008"),
        ("huge header length", [&u64::MAX.to_le_bytes()[..], b"{}"].concat(), "exceeds the safetensors limit"),
        (
            "overlapping offsets",
            raw_file(format!(r#"{{"a":{{{f32x2},"data_offsets":[0,8]}},"b":{{{f32x2},"data_offsets":[4,12]}}}}"#), &[0; 12]),
            "header: tensor `b` has data offsets [4, 12], overlapping tensor `a`, which ends at 8",
        ),
        (
            "gap between tensors",
            raw_file(format!(r#"{{"a":{{{f32x2},"data_offsets":[4,12]}}}}"#), &[0; 12]),
            "header: tensor `a` has data offsets [4, 12], leaving a gap after offset 0",
        ),
        (
            "offsets past the end",
            raw_file(format!(r#"{{"a":{{{f32x2},"data_offsets":[0,8]}}}}"#), &[0; 4]),
            "but header says tensor `a` ends at byte",
        ),
        (
            "huge offsets",
            raw_file(r#"{"a":{"dtype":"U8","shape":[1152921504606846976],"data_offsets":[0,1152921504606846976]}}"#, &[]),
            "file is 97 bytes but header says tensor `a` ends at byte 1152921504606847073",
        ),
        (
            "reversed offsets",
            raw_file(format!(r#"{{"a":{{{f32x2},"data_offsets":[8,0]}}}}"#), &[0; 8]),
            "header: tensor `a` has data offsets [8, 0], which end before they start",
        ),
        (
            "size disagrees with shape",
            raw_file(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]),
            "header: tensor `a` of dtype F32 and shape [3] needs 96 bits but its data offsets [0, 8] hold 8 bytes",
        ),
        ("shape overflow", raw_file(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#, &[]), "has shape [4294967296, 4294967296], too large"),
        ("unknown dtype", raw_file(r#"{"a":{"dtype":"Q4","shape":[],"data_offsets":[0,1]}}"#, &[0]), "header: tensor `a` has unknown dtype `Q4`"),
        ("negative offset", raw_file(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}"#, &[0]), "`data_offsets` that are not two unsigned integers"),
        ("fractional shape", raw_file(r#"{"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}"#, &[0]), "`shape` that is not a list of unsigned integers"),
        ("missing field", raw_file(r#"{"a":{"dtype":"U8","data_offsets":[0,1]}}"#, &[0]), "header: tensor `a` has no `shape`"),
        ("duplicate tensor", raw_file(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#, &[0; 2]), "header lists `a` twice"),
        ("metadata not strings", raw_file(r#"{"__metadata__":{"seed":1}}"#, &[]), "`__metadata__` must map strings to strings"),
        ("deep nesting", raw_file(format!("{{\"a\":{}", "[".repeat(100_000)), &[]), "header is not valid JSON: recursion limit exceeded at line 1 column 132"),
        ("trailing text", raw_file("{} x", &[]), "header is not valid JSON: trailing characters at line 1 column 4"),
        ("bad escape", raw_file(r#"{"\q":1}"#, &[]), "invalid escape"),
        ("lone surrogate", raw_file(r#"{"\ud800":1}"#, &[]), "header is not valid JSON: unexpected end of hex escape at line 1 column 9"),
        ("leading zero", raw_file(r#"{"a":{"dtype":"U8","shape":[01],"data_offsets":[0,1]}}"#, &[0]), "invalid number"),
    ];
    for (what, bytes, want) in cases {
        let file = TempFile::with_bytes("corrupt", &bytes);
        let msg = checkpoint_msg(open_and_read(file.path(), what), file.path());
        assert!(
            msg.contains(want),
            "{what}: `{msg}` does not contain `{want}`"
        );
        assert!(
            SafeTensors::deserialize(&bytes).is_err(),
            "{what}: the reference accepts it"
        );
    }

    // Valid edge cases: no tensors, header order differing from offset order, escapes.
    let ok = [
        raw_file("{}      ", &[]),
        raw_file(
            r#"{"__metadata__":{"k":"v"}, "b":{"dtype":"F16","shape":[1],"data_offsets":[2,4]},"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}"#,
            &[0, 60, 0, 188],
        ),
        raw_file(
            r#"{"\u00e9\ud83d\ude00\n":{"dtype":"F32","shape":[],"data_offsets":[0,4],"extra":[null,true,{"x":-1.5e3}]}}"#,
            &1.5f32.to_le_bytes(),
        ),
    ];
    for bytes in ok {
        let file = TempFile::with_bytes("ok", &bytes);
        let tensors = checkpoint::read_tensors(file.path()).unwrap();
        assert!(SafeTensors::deserialize(&bytes).is_ok());
        for (name, t) in &tensors {
            let want = match name.as_str() {
                "a" => 1.0,
                "b" => -1.0,
                _ => 1.5,
            };
            assert_eq!(t.data, [want], "{name}");
        }
    }
}

#[test]
fn random_byte_flips_never_panic_and_agree_with_the_reference() {
    let mut list = Vec::new();
    let tensors: Vec<(String, Tensor)> = (0..6)
        .map(|i| {
            (
                format!("blocks.{i}.w"),
                Tensor::new(vec![i, 2], vec![0.5; 2 * i]).unwrap(),
            )
        })
        .collect();
    for (n, t) in &tensors {
        list.push((n.as_str(), t));
    }
    let clean = TempFile::new("clean");
    checkpoint::write_tensors(clean.path(), &list, DType::BF16).unwrap();
    let bytes = std::fs::read(clean.path()).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;

    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..3000 {
        let mut bad = bytes.clone();
        let flips = 1 + rng.below(3);
        let mut at = Vec::new();
        for _ in 0..flips {
            let pos = rng.below(header_end);
            bad[pos] ^= 1 + rng.below(255) as u8;
            at.push(pos);
        }
        let file = TempFile::with_bytes("flip", &bad);
        let what = format!("round {round}, flips at {at:?}");
        let ours = catch_unwind(AssertUnwindSafe(|| Checkpoint::open(file.path())))
            .unwrap_or_else(|_| panic!("opening panicked: {what}"));
        let reference = SafeTensors::deserialize(&bad);
        match ours {
            Ok(ckpt) => {
                assert!(
                    reference.is_ok(),
                    "{what}: accepted what the reference rejects"
                );
                accepted += 1;
                // A flipped dtype may be valid but unreadable: that is a tensor error.
                match open_and_read(file.path(), &what) {
                    Ok(t) => assert_eq!(t.len(), ckpt.len()),
                    Err(e) => assert!(matches!(e, Error::Tensor { .. }), "{what}: {e}"),
                }
            }
            Err(e) => {
                let msg = checkpoint_msg(Err::<(), _>(e), file.path());
                // The reference silently keeps one of two entries with the same name.
                let duplicate = msg.contains("twice");
                assert!(
                    reference.is_err() || duplicate,
                    "{what}: rejected what the reference accepts: {msg}"
                );
                rejected += 1;
            }
        }
    }
    assert!(
        accepted > 0 && rejected > 2000,
        "{accepted} accepted, {rejected} rejected"
    );
}

/// The tiny model's random weights with `value` written at flat `index` of tensor `name`,
/// saved in `dtype`.
fn weights_with(name: &str, index: usize, value: f32, dtype: DType) -> TempFile {
    let mut tensors = Weights::random(&tiny(), 3, dtype).into_tensors();
    tensors.get_mut(name).unwrap().data[index] = value;
    let file = TempFile::new("non-finite");
    let list: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint::write_tensors(file.path(), &list, dtype).unwrap();
    file
}

#[test]
fn non_finite_weights_are_refused_at_load_naming_the_tensor_and_index() {
    let cfg = tiny();
    let specs = schema::checkpoint_tensors(&cfg);
    let shape_of = |n: &str| specs.iter().find(|s| s.name == n).unwrap().shape.clone();
    let cases = [
        ("patch_embed.weight", f32::NAN, DType::F16),
        ("patch_embed.weight", f32::INFINITY, DType::BF16),
        ("preview.weight", f32::NEG_INFINITY, DType::F32),
        ("patch_embed.bias", f32::NAN, DType::F32),
    ];
    for (name, value, dtype) in cases {
        let shape = shape_of(name);
        // The last element of the second row (or element 1 of a vector).
        let index = if shape.len() > 1 {
            2 * shape[1..].iter().product::<usize>() - 1
        } else {
            1
        };
        let multi = if shape.len() > 1 {
            let mut m = vec![1];
            m.extend(shape[1..].iter().map(|d| d - 1));
            format!("{m:?}")
        } else {
            "[1]".to_string()
        };
        let file = weights_with(name, index, value, dtype);
        let msg = tensor_msg(Weights::load(file.path(), &cfg, &ALL_GROUPS));
        let want = format!(
            "tensor `{name}`: expected finite values, found {value} at index {index} ({multi})"
        );
        assert!(
            msg.contains(&want),
            "{dtype} {name}: `{msg}` lacks `{want}`"
        );
        // Uploads of the stored bytes (the CUDA backend's path) refuse it the same way.
        let ckpt = Checkpoint::open(file.path()).unwrap();
        let msg = tensor_msg(ckpt.raw(name));
        assert!(
            msg.contains(&want),
            "raw {dtype} {name}: `{msg}` lacks `{want}`"
        );
        // The other tensors still read.
        let other = if name == "preview.weight" {
            "preview.bias"
        } else {
            "preview.weight"
        };
        ckpt.read_f32(other, &shape_of(other)).unwrap();
    }
    // The first bad value is named even past the first parallel block, where blocks are
    // checked in parallel.
    let big = Tensor::new(vec![3, 1 << 16], vec![0.5; 3 << 16]).unwrap();
    let mut data = big.data.clone();
    data[(2 << 16) + 5] = f32::NAN;
    data[(1 << 16) + 7] = f32::INFINITY;
    let bad = Tensor::new(big.shape.clone(), data).unwrap();
    let file = TempFile::new("non-finite-big");
    checkpoint::write_tensors(file.path(), &[("w", &bad)], DType::F16).unwrap();
    let msg = tensor_msg(checkpoint::read_tensors(file.path()));
    let want = format!("found inf at index {} ([1, 7])", (1 << 16) + 7);
    assert!(msg.contains(&want), "`{msg}` lacks `{want}`");
}

#[test]
fn a_directory_given_as_a_checkpoint_says_so() {
    let dir = std::env::temp_dir();
    let msg = checkpoint_msg(Checkpoint::open(&dir), &dir);
    assert_eq!(msg, "is a directory; expected a safetensors file");
    let err = Weights::load(&dir, &tiny(), &ALL_GROUPS)
        .unwrap_err()
        .to_string();
    assert!(!err.contains("No such device"), "{err}");
}

#[test]
fn an_offset_moved_past_the_end_names_the_moved_tensor() {
    // `patch_embed.weight` should be [0, 8]; its offsets were corrupted to lie past the
    // data, which leaves a gap where it was: the message blames it, not its neighbour.
    let f32x2 = r#""dtype":"F32","shape":[2]"#;
    let header = format!(
        r#"{{"patch_embed.weight":{{{f32x2},"data_offsets":[1000,1008]}},"patch_embed.bias":{{{f32x2},"data_offsets":[8,16]}}}}"#
    );
    let bytes = raw_file(header, &[0; 16]);
    assert!(SafeTensors::deserialize(&bytes).is_err());
    let file = TempFile::with_bytes("moved", &bytes);
    let msg = checkpoint_msg(Checkpoint::open(file.path()), file.path());
    assert_eq!(
        msg,
        "header: tensor `patch_embed.weight` has data offsets [1000, 1008], past the end of the data section (16 bytes)"
    );
}
