//! The zip container of a `torch.save` file, read from its central directory. PyTorch's
//! writer (`PyTorchStreamWriter`, miniz) stores every entry uncompressed and switches to the
//! zip64 records for large files, so this reader accepts exactly that: stored entries, with
//! or without zip64 sizes and offsets. Every offset and length is checked against the file
//! before it is used; nothing is allocated beyond the entry list.

use super::PtError;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
/// The end record may be followed by a comment of at most this many bytes.
const MAX_COMMENT: usize = 0xFFFF;

/// One stored entry: its name and the byte range of its data in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub start: usize,
    pub len: usize,
}

fn zerr(msg: impl Into<String>) -> PtError {
    PtError::Zip(msg.into())
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, PtError> {
    b.get(at..at.checked_add(2).ok_or_else(|| zerr("offset overflow"))?)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| zerr(format!("record at byte {at} runs past the end of the file")))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, PtError> {
    b.get(at..at.checked_add(4).ok_or_else(|| zerr("offset overflow"))?)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| zerr(format!("record at byte {at} runs past the end of the file")))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, PtError> {
    let lo = u64::from(u32_at(b, at)?);
    let hi = u64::from(u32_at(
        b,
        at.checked_add(4).ok_or_else(|| zerr("offset overflow"))?,
    )?);
    Ok(lo | (hi << 32))
}

fn to_usize(v: u64, what: &str) -> Result<usize, PtError> {
    usize::try_from(v).map_err(|_| zerr(format!("{what} {v} does not fit this machine")))
}

/// Whether `bytes` starts like a zip file (a local header or an empty archive's end record).
pub fn looks_like_zip(bytes: &[u8]) -> bool {
    matches!(u32_at(bytes, 0), Ok(LOCAL_SIG) | Ok(EOCD_SIG))
}

/// The entries of the archive, in central-directory order.
pub fn entries(b: &[u8]) -> Result<Vec<Entry>, PtError> {
    if b.len() < EOCD_LEN {
        return Err(zerr(format!(
            "{} bytes is too short for a zip file (no end-of-central-directory record)",
            b.len()
        )));
    }
    // The end record: the last signature match that leaves room for the record itself.
    let lowest = b.len().saturating_sub(EOCD_LEN + MAX_COMMENT);
    let eocd = (lowest..=b.len() - EOCD_LEN)
        .rev()
        .find(|&i| u32_at(b, i) == Ok(EOCD_SIG))
        .ok_or_else(|| zerr("no end-of-central-directory record (truncated or not a zip file)"))?;
    let mut count = u64::from(u16_at(b, eocd + 10)?);
    let mut cd_size = u64::from(u32_at(b, eocd + 12)?);
    let mut cd_off = u64::from(u32_at(b, eocd + 16)?);
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_off == 0xFFFF_FFFF {
        // Zip64: a locator sits right before the end record and points at the zip64 record.
        let loc = eocd
            .checked_sub(20)
            .ok_or_else(|| zerr("zip64 locator missing before the end record"))?;
        if u32_at(b, loc)? != ZIP64_LOCATOR_SIG {
            return Err(zerr("zip64 locator missing before the end record"));
        }
        let rec = to_usize(u64_at(b, loc + 8)?, "zip64 record offset")?;
        if u32_at(b, rec)? != ZIP64_EOCD_SIG {
            return Err(zerr(format!("no zip64 end record at byte {rec}")));
        }
        count = u64_at(b, rec + 32)?;
        cd_size = u64_at(b, rec + 40)?;
        cd_off = u64_at(b, rec + 48)?;
    }
    let cd_off = to_usize(cd_off, "central directory offset")?;
    let cd_end = cd_off
        .checked_add(to_usize(cd_size, "central directory size")?)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| zerr("central directory runs past the end of the file"))?;
    // Each central record is at least 46 bytes: a count the directory cannot hold is a lie.
    if count > (cd_end - cd_off) as u64 / 46 {
        return Err(zerr(format!(
            "{count} entries declared, but the central directory has room for {}",
            (cd_end - cd_off) / 46
        )));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut at = cd_off;
    for _ in 0..count {
        let (entry, next) = central_record(b, at, cd_end)?;
        out.push(entry);
        at = next;
    }
    Ok(out)
}

/// Parses the central record at `at` and the local header it points to.
fn central_record(b: &[u8], at: usize, cd_end: usize) -> Result<(Entry, usize), PtError> {
    if u32_at(b, at)? != CENTRAL_SIG {
        return Err(zerr(format!("no central directory record at byte {at}")));
    }
    let method = u16_at(b, at + 10)?;
    let mut csize = u64::from(u32_at(b, at + 20)?);
    let mut usize_ = u64::from(u32_at(b, at + 24)?);
    let name_len = usize::from(u16_at(b, at + 28)?);
    let extra_len = usize::from(u16_at(b, at + 30)?);
    let comment_len = usize::from(u16_at(b, at + 32)?);
    let mut local = u64::from(u32_at(b, at + 42)?);
    let name_start = at + 46;
    let extra_start = name_start + name_len;
    let next = extra_start + extra_len + comment_len;
    if next > cd_end {
        return Err(zerr(format!(
            "central record at byte {at} runs past the directory"
        )));
    }
    let name = std::str::from_utf8(&b[name_start..extra_start])
        .map_err(|_| zerr(format!("entry name at byte {name_start} is not UTF-8")))?
        .to_string();
    // Zip64 extended information: the 64-bit values of the fields saturated above, in order.
    let mut e = extra_start;
    while e + 4 <= extra_start + extra_len {
        let id = u16_at(b, e)?;
        let len = usize::from(u16_at(b, e + 2)?);
        let body = e + 4;
        if body + len > extra_start + extra_len {
            return Err(zerr(format!(
                "entry `{name}`: extra field runs past its record"
            )));
        }
        if id == 0x0001 {
            let mut p = body;
            for field in [&mut usize_, &mut csize, &mut local] {
                if *field == 0xFFFF_FFFF {
                    if p + 8 > body + len {
                        return Err(zerr(format!("entry `{name}`: zip64 field missing")));
                    }
                    *field = u64_at(b, p)?;
                    p += 8;
                }
            }
        }
        e = body + len;
    }
    if method != 0 {
        return Err(zerr(format!(
            "entry `{name}` uses compression method {method}; torch.save stores entries uncompressed (method 0)"
        )));
    }
    if csize != usize_ {
        return Err(zerr(format!(
            "entry `{name}`: stored size {csize} differs from its size {usize_}"
        )));
    }
    let local = to_usize(local, "local header offset")?;
    if u32_at(b, local)? != LOCAL_SIG {
        return Err(zerr(format!(
            "entry `{name}`: no local header at byte {local}"
        )));
    }
    let start =
        local + 30 + usize::from(u16_at(b, local + 26)?) + usize::from(u16_at(b, local + 28)?);
    let len = to_usize(csize, "entry size")?;
    if start.checked_add(len).map_or(true, |end| end > b.len()) {
        return Err(zerr(format!(
            "entry `{name}`: {len} bytes at byte {start} run past the end of the file ({} bytes; truncated?)",
            b.len()
        )));
    }
    Ok((Entry { name, start, len }, next))
}
