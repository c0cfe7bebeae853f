//! `checkpoint::pickle`: torch.save archives written here the way PyTorch writes them (protocol-2
//! pickle, stored zip entries aligned by an extra field, optional zip64 records) are read
//! back and converted to safetensors byte for byte; hostile archives give named errors.

mod common;

use std::collections::HashMap;

use common::Rng;
use streamdit::checkpoint::pickle::{convert, read_index, ConvertOptions, PtDtype, PtError};

// ---------------------------------------------------------------------------------------
// A protocol-2 pickle writer that memoizes like Python's pickler (every str, global and
// container gets a BINPUT; repeated strings and globals are fetched with BINGET).

#[derive(Default)]
struct Pk {
    out: Vec<u8>,
    memo: u32,
    seen: HashMap<String, u32>,
}

enum Obj {
    Tensor {
        storage: &'static str,
        dtype: &'static str,
        numel: usize,
        offset: usize,
        shape: Vec<usize>,
        stride: Vec<usize>,
    },
    Int(i64),
    Float(f64),
    Str(&'static str),
    Dict(Vec<(&'static str, Obj)>),
    /// An OrderedDict state dict with a `_metadata` attribute (as `Module.state_dict()`).
    StateDict(Vec<(&'static str, Obj)>),
}

impl Pk {
    fn put(&mut self) {
        if self.memo < 256 {
            self.out.extend([b'q', self.memo as u8]);
        } else {
            self.out.push(b'r');
            self.out.extend(self.memo.to_le_bytes());
        }
        self.memo += 1;
    }

    fn cached(&mut self, key: String, write: impl FnOnce(&mut Pk)) {
        if let Some(&m) = self.seen.get(&key) {
            if m < 256 {
                self.out.extend([b'h', m as u8]);
            } else {
                self.out.push(b'j');
                self.out.extend(m.to_le_bytes());
            }
            return;
        }
        let m = self.memo;
        write(self);
        self.put();
        self.seen.insert(key, m);
    }

    fn str(&mut self, s: &str) {
        self.cached(format!("s:{s}"), |p| {
            p.out.push(b'X');
            p.out.extend((s.len() as u32).to_le_bytes());
            p.out.extend(s.as_bytes());
        });
    }

    fn global(&mut self, module: &str, name: &str) {
        self.cached(format!("g:{module}.{name}"), |p| {
            p.out.push(b'c');
            p.out.extend(format!("{module}\n{name}\n").as_bytes());
        });
    }

    fn int(&mut self, v: i64) {
        if (0..256).contains(&v) {
            self.out.extend([b'K', v as u8]);
        } else if (0..65536).contains(&v) {
            self.out.push(b'M');
            self.out.extend((v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            self.out.push(b'J');
            self.out.extend((v as i32).to_le_bytes());
        } else {
            self.out.extend([0x8a, 8]);
            self.out.extend(v.to_le_bytes());
        }
    }

    fn int_tuple(&mut self, v: &[usize]) {
        match v.len() {
            0 => self.out.push(b')'),
            1..=3 => {
                v.iter().for_each(|&x| self.int(x as i64));
                self.out.push(0x84 + v.len() as u8);
                self.put();
            }
            _ => {
                self.out.push(b'(');
                v.iter().for_each(|&x| self.int(x as i64));
                self.out.push(b't');
                self.put();
            }
        }
    }

    fn ordered_dict_empty(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.push(b')');
        self.out.push(b'R');
        self.put();
    }

    fn obj(&mut self, o: &Obj) {
        match o {
            Obj::Int(v) => self.int(*v),
            Obj::Float(v) => {
                self.out.push(b'G');
                self.out.extend(v.to_be_bytes());
            }
            Obj::Str(s) => self.str(s),
            Obj::Dict(items) => {
                self.out.push(b'}');
                self.put();
                self.items(items);
            }
            Obj::StateDict(items) => {
                self.ordered_dict_empty();
                self.items(items);
                // state: {'_metadata': OrderedDict([('', {'version': 1})])}, then BUILD.
                self.out.push(b'}');
                self.put();
                self.str("_metadata");
                self.ordered_dict_empty();
                self.str("");
                self.out.push(b'}');
                self.put();
                self.str("version");
                self.int(1);
                self.out.push(b's');
                self.out.push(b's');
                self.out.push(b's');
                self.out.push(b'b');
            }
            Obj::Tensor {
                storage,
                dtype,
                numel,
                offset,
                shape,
                stride,
            } => {
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.out.push(b'(');
                // persistent id ('storage', torch.<T>Storage, key, 'cpu', numel)
                self.out.push(b'(');
                self.str("storage");
                self.global("torch", dtype);
                self.str(storage);
                self.str("cpu");
                self.int(*numel as i64);
                self.out.push(b't');
                self.put();
                self.out.push(b'Q');
                self.int(*offset as i64);
                self.int_tuple(shape);
                self.int_tuple(stride);
                self.out.push(0x89);
                self.ordered_dict_empty();
                self.out.push(b't');
                self.put();
                self.out.push(b'R');
                self.put();
            }
        }
    }

    fn items(&mut self, items: &[(&'static str, Obj)]) {
        if items.is_empty() {
            return;
        }
        self.out.push(b'(');
        for (k, v) in items {
            self.str(k);
            self.obj(v);
        }
        self.out.push(b'u');
    }

    fn finish(root: &Obj) -> Vec<u8> {
        let mut p = Pk::default();
        p.out.extend([0x80, 2]);
        p.obj(root);
        p.out.push(b'.');
        p.out
    }
}

// ---------------------------------------------------------------------------------------
// A zip writer with stored entries, local headers padded to 64-byte data alignment with an
// extra field (as PyTorchStreamWriter does), and optionally the zip64 end records.

fn zip(entries: &[(String, Vec<u8>)], zip64: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let off = out.len();
        let base = off + 30 + name.len() + 4;
        let pad = (64 - base % 64) % 64;
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
        out.extend(0u32.to_le_bytes()); // crc (not checked by the reader)
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(((4 + pad) as u16).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(0x4246u16.to_le_bytes());
        out.extend((pad as u16).to_le_bytes());
        out.extend(vec![b'Z'; pad]);
        assert_eq!(out.len() % 64, 0);
        out.extend(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(0u32.to_le_bytes());
        let (sz, lo) = if zip64 {
            (0xFFFF_FFFFu32, 0xFFFF_FFFFu32)
        } else {
            (data.len() as u32, off as u32)
        };
        central.extend(sz.to_le_bytes());
        central.extend(sz.to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend((if zip64 { 28u16 } else { 0 }).to_le_bytes());
        central.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // comment, disk, attrs
        central.extend(lo.to_le_bytes());
        central.extend(name.as_bytes());
        if zip64 {
            central.extend(1u16.to_le_bytes());
            central.extend(24u16.to_le_bytes());
            central.extend((data.len() as u64).to_le_bytes());
            central.extend((data.len() as u64).to_le_bytes());
            central.extend((off as u64).to_le_bytes());
        }
    }
    let cd_off = out.len();
    out.extend(&central);
    let n = entries.len();
    if zip64 {
        let rec = out.len();
        out.extend(0x0606_4b50u32.to_le_bytes());
        out.extend(44u64.to_le_bytes());
        out.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend((n as u64).to_le_bytes());
        out.extend((n as u64).to_le_bytes());
        out.extend((central.len() as u64).to_le_bytes());
        out.extend((cd_off as u64).to_le_bytes());
        out.extend(0x0706_4b50u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((rec as u64).to_le_bytes());
        out.extend(1u32.to_le_bytes());
    }
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0, 0, 0, 0]);
    let (cnt, size, off) = if zip64 {
        (0xFFFFu16, 0xFFFF_FFFFu32, 0xFFFF_FFFFu32)
    } else {
        (n as u16, central.len() as u32, cd_off as u32)
    };
    out.extend(cnt.to_le_bytes());
    out.extend(cnt.to_le_bytes());
    out.extend(size.to_le_bytes());
    out.extend(off.to_le_bytes());
    out.extend([0, 0]);
    out
}

fn archive(pickle: Vec<u8>, storages: &[(&str, Vec<u8>)], zip64: bool) -> Vec<u8> {
    let mut e = vec![("ckpt/data.pkl".to_string(), pickle)];
    e.push(("ckpt/byteorder".into(), b"little".to_vec()));
    for (k, d) in storages {
        e.push((format!("ckpt/data/{k}"), d.clone()));
    }
    e.push(("ckpt/version".into(), b"3\n".to_vec()));
    e.push(("ckpt/.data/serialization_id".into(), b"0123456789".to_vec()));
    zip(&e, zip64)
}

// ---------------------------------------------------------------------------------------
// The checkpoint under test: three storages (f32, bf16, f16), five tensors among which a
// transposed view, a sliced view with a storage offset, a scalar and a second view of a
// shared storage; nested dicts with a state dict and non-tensor leaves.

fn bytes_of(bits: &[u16]) -> Vec<u8> {
    bits.iter().flat_map(|b| b.to_le_bytes()).collect()
}

struct Fixture {
    file: Vec<u8>,
    /// Expected contiguous bytes by name, computed element by element from the storages.
    expected: Vec<(String, PtDtype, Vec<usize>, Vec<u8>)>,
}

fn gather(storage: &[u8], es: usize, offset: usize, shape: &[usize], stride: &[usize]) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let mut out = Vec::new();
    for lin in 0..n {
        let (mut rem, mut at) = (lin, offset);
        for d in (0..shape.len()).rev() {
            at += (rem % shape[d]) * stride[d];
            rem /= shape[d];
        }
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
    }
    out
}

fn fixture(zip64: bool) -> Fixture {
    let mut rng = Rng::new(7);
    let f32s: Vec<u8> = rng
        .f32s(12, -2.0, 2.0)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let bf16s = bytes_of(&(0..6).map(|_| rng.next_u64() as u16).collect::<Vec<_>>());
    let f16s = bytes_of(
        &(0..8)
            .map(|_| rng.next_u64() as u16 & 0x7BFF)
            .collect::<Vec<_>>(),
    );
    let t = |storage, dtype, numel, offset, shape: &[usize], stride: &[usize]| Obj::Tensor {
        storage,
        dtype,
        numel,
        offset,
        shape: shape.to_vec(),
        stride: stride.to_vec(),
    };
    let sd = || {
        Obj::StateDict(vec![
            ("model.w", t("0", "FloatStorage", 12, 0, &[3, 4], &[4, 1])),
            (
                "model.wt",
                t("1", "BFloat16Storage", 6, 0, &[3, 2], &[1, 3]),
            ),
            ("model.slice", t("2", "HalfStorage", 8, 2, &[2, 2], &[3, 1])),
            ("model.scalar", t("0", "FloatStorage", 12, 5, &[], &[])),
            ("model.tail", t("0", "FloatStorage", 12, 8, &[4], &[1])),
        ])
    };
    let root = Obj::Dict(vec![
        ("generator", sd()),
        ("generator_ema", sd()),
        ("step", Obj::Int(1_234_567)),
        ("lr", Obj::Float(0.5)),
        ("tag", Obj::Str("dmd")),
    ]);
    let pickle = Pk::finish(&root);
    let file = archive(
        pickle,
        &[
            ("0", f32s.clone()),
            ("1", bf16s.clone()),
            ("2", f16s.clone()),
        ],
        zip64,
    );
    let mut expected = Vec::new();
    for top in ["generator", "generator_ema"] {
        let mut e = |n: &str, d, s: &[u8], es, off, shape: &[usize], stride: &[usize]| {
            expected.push((
                format!("{top}.{n}"),
                d,
                shape.to_vec(),
                gather(s, es, off, shape, stride),
            ))
        };
        e("model.w", PtDtype::F32, &f32s, 4, 0, &[3, 4], &[4, 1]);
        e("model.wt", PtDtype::BF16, &bf16s, 2, 0, &[3, 2], &[1, 3]);
        e("model.slice", PtDtype::F16, &f16s, 2, 2, &[2, 2], &[3, 1]);
        e("model.scalar", PtDtype::F32, &f32s, 4, 5, &[], &[]);
        e("model.tail", PtDtype::F32, &f32s, 4, 8, &[4], &[1]);
    }
    Fixture { file, expected }
}

fn st_dtype(d: PtDtype) -> safetensors::Dtype {
    match d {
        PtDtype::F32 => safetensors::Dtype::F32,
        PtDtype::BF16 => safetensors::Dtype::BF16,
        PtDtype::F16 => safetensors::Dtype::F16,
        other => panic!("unexpected dtype {other:?}"),
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("streamdit-pickle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn index_reads_every_tensor_and_view() {
    for zip64 in [false, true] {
        let fx = fixture(zip64);
        let idx = read_index(&fx.file).expect("valid archive");
        assert_eq!(idx.tensors.len(), fx.expected.len());
        for (name, dtype, shape, want) in &fx.expected {
            let t = idx.tensors.iter().find(|t| &t.name == name).expect(name);
            assert_eq!((t.dtype, &t.shape), (*dtype, shape), "{name}");
            assert_eq!(
                &idx.read(&fx.file, t).unwrap(),
                want,
                "{name} (zip64 {zip64})"
            );
        }
        let mut skipped = idx.skipped.clone();
        skipped.sort();
        let want: Vec<(String, String)> = [("lr", "float"), ("step", "int"), ("tag", "str")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(skipped, want);
    }
}

#[test]
fn convert_writes_safetensors_byte_for_byte() {
    let fx = fixture(true);
    let src = tmp("in.pt");
    std::fs::write(&src, &fx.file).unwrap();
    for prefix in [None, Some("generator_ema.")] {
        let dst = tmp("out.safetensors");
        let opts = ConvertOptions {
            prefix: prefix.map(String::from),
        };
        let report = convert(&src, &dst, &opts).unwrap();
        let bytes = std::fs::read(&dst).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want: Vec<_> = fx
            .expected
            .iter()
            .filter_map(|(n, d, s, b)| match prefix {
                Some(p) => n.strip_prefix(p).map(|r| (r.to_string(), *d, s, b)),
                None => Some((n.clone(), *d, s, b)),
            })
            .collect();
        assert_eq!(st.len(), want.len());
        assert_eq!(report.tensors.len(), want.len());
        assert_eq!(report.filtered_out, fx.expected.len() - want.len());
        for (name, dtype, shape, data) in want {
            let v = st.tensor(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(v.dtype(), st_dtype(dtype), "{name}");
            assert_eq!(v.shape(), shape.as_slice(), "{name}");
            assert_eq!(v.data(), data.as_slice(), "{name}: data differs");
        }
    }
    let err = convert(
        &src,
        &tmp("x.safetensors"),
        &ConvertOptions {
            prefix: Some("critic.".into()),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("critic.") && err.contains("in.pt"), "{err}");
}

/// A one-tensor archive around a hand-edited pickle.
fn one(pickle: Vec<u8>, storage: Vec<u8>) -> Vec<u8> {
    archive(pickle, &[("0", storage)], false)
}

fn tensor_pickle(numel: usize, offset: usize, shape: &[usize], stride: &[usize]) -> Vec<u8> {
    Pk::finish(&Obj::Dict(vec![(
        "t",
        Obj::Tensor {
            storage: "0",
            dtype: "FloatStorage",
            numel,
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        },
    )]))
}

#[test]
fn hostile_archives_give_named_errors() {
    let err = |file: &[u8]| read_index(file).map(|_| ()).unwrap_err();
    // A global outside the allow-list, even if never called.
    let mut p = vec![0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a'];
    p.extend(b"cos\nsystem\n");
    p.extend(b"u.");
    match err(&one(p, vec![])) {
        PtError::Global { module, name } => {
            assert_eq!((module.as_str(), name.as_str()), ("os", "system"))
        }
        e => panic!("os.system: {e}"),
    }
    // REDUCE of an allowed global with the wrong arguments, and of a non-callable.
    let p = [&[0x80, 2][..], b"ccollections\nOrderedDict\nK\x01\x85R."].concat();
    assert!(matches!(err(&one(p, vec![])), PtError::Reduce(_)));
    let p = vec![0x80, 2, b'X', 1, 0, 0, 0, b'f', b')', b'R', b'.'];
    assert!(matches!(err(&one(p, vec![])), PtError::Reduce(_)));
    // BUILD on a tuple; INST, OBJ and NEWOBJ opcodes.
    let p = vec![0x80, 2, b')', b'}', b'b', b'.'];
    assert!(matches!(err(&one(p, vec![])), PtError::Build { .. }));
    for op in [b'i', b'o', 0x81] {
        let p = vec![0x80, 2, b'(', op, b'.'];
        assert!(
            matches!(err(&one(p, vec![])), PtError::Opcode { op: o, .. } if o == op),
            "opcode {op:#x}"
        );
    }
    // A view reaching past its storage, a storage shorter than it declares.
    let p = tensor_pickle(6, 0, &[4, 4], &[4, 1]);
    assert!(matches!(err(&one(p, vec![0; 24])), PtError::View { .. }));
    let p = tensor_pickle(6, 0, &[2, 3], &[3, 1]);
    assert!(matches!(err(&one(p, vec![0; 20])), PtError::Storage { .. }));
    // Huge declared sizes: a shape whose product overflows, a storage of 2^62 elements,
    // a string longer than the file.
    let p = tensor_pickle(6, 0, &[1 << 40, 1 << 40], &[0, 0]);
    assert!(matches!(err(&one(p, vec![0; 24])), PtError::View { .. }));
    let p = tensor_pickle(6, 0, &[1 << 30], &[0]);
    assert!(
        matches!(err(&one(p, vec![0; 24])), PtError::View { .. }),
        "stride-0 view larger than the file"
    );
    let p = tensor_pickle(1 << 62, 0, &[2], &[1]);
    assert!(matches!(err(&one(p, vec![0; 24])), PtError::Storage { .. }));
    let p = vec![0x80, 2, b'X', 0xF0, 0xFF, 0xFF, 0xFF, b'a', b'.'];
    assert!(matches!(err(&one(p, vec![])), PtError::Truncated { .. }));
    let p = [&[0x80, 4, 0x8d][..], &u64::MAX.to_le_bytes(), b"."].concat();
    assert!(matches!(
        err(&one(p, vec![])),
        PtError::TooLarge(_) | PtError::Truncated { .. }
    ));
    // Deep nesting, and a list that contains itself.
    let mut p = vec![0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a'];
    p.extend([b']'; 200]);
    p.extend([b'a'; 199]);
    p.extend(b"u.");
    assert!(matches!(err(&one(p, vec![])), PtError::TooDeep(_)));
    let p = vec![
        0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a', b']', b'q', 0, b'h', 0, b'a', b'u', b'.',
    ];
    assert!(matches!(err(&one(p, vec![])), PtError::TooDeep(_)));
    // Containers: legacy format, truncated zip, compressed entry, a count the directory
    // cannot hold.
    assert_eq!(
        err(&[0x80, 2, 0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46]),
        PtError::Legacy
    );
    let good = fixture(false).file;
    for cut in [10, good.len() / 2, good.len() - 1] {
        assert!(matches!(err(&good[..cut]), PtError::Zip(_)), "cut at {cut}");
    }
    let mut compressed = good.clone();
    let cd = find(&compressed, &0x0201_4b50u32.to_le_bytes());
    compressed[cd + 10] = 8;
    assert!(matches!(err(&compressed), PtError::Zip(m) if m.contains("compression")));
    let mut lying = good.clone();
    let eocd = lying.len() - 22;
    lying[eocd + 10..eocd + 12].copy_from_slice(&0xFFFEu16.to_le_bytes());
    assert!(matches!(err(&lying), PtError::Zip(_)));
    // A root that is not a dict; a tensor whose storage entry is missing.
    assert!(matches!(
        err(&one(vec![0x80, 2, b'K', 1, b'.'], vec![])),
        PtError::Root(_)
    ));
    let p = tensor_pickle(6, 0, &[2, 3], &[3, 1]);
    assert!(matches!(
        err(&archive(p, &[], false)),
        PtError::Storage { .. }
    ));
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

/// Random byte mutations and truncations of a valid archive: every outcome is a value or
/// a named error, never a panic, and a successful read stays within the file's size.
#[test]
fn mutated_archives_never_panic() {
    let good = fixture(false).file;
    let mut rng = Rng::new(42);
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..400 {
        let mut f = good.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(f.len());
            f[i] = rng.next_u64() as u8;
        }
        if rng.below(8) == 0 {
            f.truncate(rng.below(f.len()));
        }
        match read_index(&f) {
            Ok(idx) => {
                ok += 1;
                for t in &idx.tensors {
                    if let Ok(d) = idx.read(&f, t) {
                        assert!(
                            d.len() <= f.len(),
                            "{}: {} bytes from a {}-byte file",
                            t.name,
                            d.len(),
                            f.len()
                        );
                    }
                }
            }
            Err(e) => {
                failed += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    println!("mutations: {ok} read, {failed} refused");
    assert!(
        ok > 0 && failed > 0,
        "the mutations should both hit data bytes and structure"
    );
}
