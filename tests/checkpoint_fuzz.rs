//! A bounded property test of the safetensors reader: a few thousand mutations of small
//! valid files (fixed seed, so every run tries the same files) must each open to a value or
//! a named error, never a panic, and never ask the allocator for more than the file's size
//! justifies. A counting global allocator records the largest single request; this binary
//! holds only these tests so that nothing else allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use streamdit::files::{read_tensors, Checkpoint};

/// The system allocator, recording the largest request since the last reset.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds
// `GlobalAlloc`'s contract; the only addition is a relaxed atomic maximum.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout (the caller upholds `alloc`'s contract).
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (through `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds `realloc`'s
        // contract for `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests of this binary run one at a time: the sparse-file test's refused reservation
/// would otherwise count as the mutation test's largest request.
static SERIAL: Mutex<()> = Mutex::new(());

/// xorshift64*: a fixed sequence, independent of any crate's RNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("streamdit-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A safetensors file from a JSON header and data bytes (the header padded to 8 bytes).
fn file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut json = header.as_bytes().to_vec();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    out
}

/// A valid file of three tensors (f32, f16, bf16) and metadata.
fn valid() -> Vec<u8> {
    let header = r#"{"a.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"F16","shape":[4],"data_offsets":[24,32]},"c":{"dtype":"BF16","shape":[1,2,2],"data_offsets":[32,40]},"__metadata__":{"format":"pt"}}"#;
    let data: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
    file(header, &data)
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "7",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e30",
    "-1",
    "2.5",
];
const DTYPES: &[&str] = &["F64", "BOOL", "I8", "U8", "F8_E4M3", "XX", "", "F16"];

/// One mutation of `f`: byte flips, a new header length, a cut, appended bytes, or a number
/// or dtype in the header replaced (the length then fixed half of the time, to reach the
/// checks behind the JSON parse).
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    match rng.below(6) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let len = match rng.below(3) {
                0 => rng.next(),
                1 => u64::from_le_bytes(f[..8].try_into().unwrap())
                    .wrapping_add(rng.below(16) as u64)
                    .wrapping_sub(8),
                _ => 100_000_000 + rng.below(2) as u64,
            };
            f[..8].copy_from_slice(&len.to_le_bytes());
        }
        2 => f.truncate(rng.below(f.len())),
        3 => {
            for _ in 0..1 + rng.below(64) {
                f.push(rng.next() as u8);
            }
        }
        k => {
            let header_len = u64::from_le_bytes(f[..8].try_into().unwrap());
            let Some(end) = usize::try_from(header_len)
                .ok()
                .and_then(|n| n.checked_add(8))
            else {
                return;
            };
            let Some(header) = f.get(8..end) else {
                return;
            };
            let text = String::from_utf8_lossy(header).into_owned();
            let data = f[end..].to_vec();
            let text = if k == 4 {
                // Replace the n-th run of digits with a hostile number.
                let runs: Vec<(usize, usize)> = {
                    let b = text.as_bytes();
                    let mut v = Vec::new();
                    let mut i = 0;
                    while i < b.len() {
                        if b[i].is_ascii_digit() {
                            let s = i;
                            while i < b.len() && b[i].is_ascii_digit() {
                                i += 1;
                            }
                            v.push((s, i));
                        } else {
                            i += 1;
                        }
                    }
                    v
                };
                if runs.is_empty() {
                    return;
                }
                let (s, e) = runs[rng.below(runs.len())];
                format!(
                    "{}{}{}",
                    &text[..s],
                    NUMBERS[rng.below(NUMBERS.len())],
                    &text[e..]
                )
            } else {
                let to = DTYPES[rng.below(DTYPES.len())];
                let from = ["\"F32\"", "\"F16\"", "\"BF16\""][rng.below(3)];
                text.replacen(from, &format!("\"{to}\""), 1)
            };
            *f = if rng.below(2) == 0 {
                file(text.trim_end(), &data)
            } else {
                let mut out = f[..8].to_vec();
                out.extend(text.as_bytes());
                out.extend(&data);
                out
            };
        }
    }
}

/// Opens and reads `path` in full: a value or an error, never a panic.
fn open_and_read(path: &Path) -> Result<usize, String> {
    let ckpt = Checkpoint::open(path).map_err(|e| e.to_string())?;
    let names: Vec<String> = ckpt.names().map(String::from).collect();
    for name in &names {
        let _ = ckpt.raw(name).map_err(|e| e.to_string())?;
    }
    read_tensors(path)
        .map(|t| t.len())
        .map_err(|e| e.to_string())
}

#[test]
fn mutated_safetensors_give_values_or_errors_and_bounded_allocations() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("mutations");
    let good = valid();
    let path = dir.join("good.safetensors");
    std::fs::write(&path, &good).unwrap();
    assert_eq!(open_and_read(&path), Ok(3), "the unmutated file reads");
    let mut rng = Rng(0x5eed_2026);
    let (mut ok, mut failed) = (0, 0);
    for case in 0..3000 {
        let mut f = good.clone();
        for _ in 0..1 + rng.below(3) {
            if f.len() < 9 {
                break;
            }
            mutate(&mut rng, &mut f);
        }
        let path = dir.join("case.safetensors");
        std::fs::write(&path, &f).unwrap();
        LARGEST.store(0, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(|| open_and_read(&path));
        let largest = LARGEST.load(Ordering::Relaxed);
        match outcome {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(msg)) => {
                assert!(
                    msg.contains("case.safetensors"),
                    "case {case}: the error does not name the file: {msg}"
                );
                failed += 1;
            }
            Err(_) => panic!("case {case}: reading {} bytes panicked", f.len()),
        }
        // Decoding to f32 doubles an f16 file at most; parsing the JSON header needs a
        // small multiple of it. Nothing may be sized by a number the file merely claims.
        let bound = 64 * f.len() + (64 << 10);
        assert!(
            largest <= bound,
            "case {case}: a {} byte file led to an allocation of {largest} bytes",
            f.len()
        );
    }
    println!("{ok} mutated files read, {failed} refused");
    assert!(ok > 0 && failed > 1000, "{ok} read, {failed} refused");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tensor whose f32 copy cannot fit in memory (a sparse file of 2 TiB of f16 values,
/// 4 TiB as f32) is an error naming it, not an abort in the allocator.
#[test]
fn a_tensor_larger_than_memory_is_an_error_not_an_abort() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if std::fs::read_to_string("/proc/sys/vm/overcommit_memory").map_or(true, |m| m.trim() == "1") {
        // With unconditional overcommit a 4 TiB reservation succeeds and the zero fill
        // would exhaust the machine; the check needs the kernel's default heuristic.
        println!("skipped: overcommit mode 1 or not Linux");
        return;
    }
    let dir = scratch("sparse");
    let numel: u64 = 1 << 40;
    let header = format!(
        r#"{{"huge":{{"dtype":"F16","shape":[{numel}],"data_offsets":[0,{}]}}}}"#,
        numel * 2
    );
    let head = file(&header, &[]);
    let path = dir.join("huge.safetensors");
    std::fs::write(&path, &head).unwrap();
    let sparse = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(head.len() as u64 + numel * 2));
    if let Err(e) = sparse {
        println!("skipped: this file system has no 2 TiB sparse files ({e})");
        std::fs::remove_dir_all(&dir).unwrap();
        return;
    }
    let err = read_tensors(&path).unwrap_err().to_string();
    assert!(
        err.contains("`huge`") && err.contains("fit in memory"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
