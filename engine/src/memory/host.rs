//! Host memory: what a run may use, so that a profile too large for this machine is refused
//! with a message before the engine allocates, instead of the process dying in an
//! allocation.
//!
//! The limit is `STREAMDIT_MEMORY_LIMIT` when set (bytes, or with a `K`, `M`, `G` or `T`
//! suffix, powers of 1024), otherwise `MemAvailable` of `/proc/meminfo` on Linux; elsewhere
//! there is no limit beyond the profile's own bounds (`crate::model::limits`).

use crate::error::{Error, Result};

/// The environment variable that states the host memory limit.
pub const MEMORY_LIMIT_ENV: &str = "STREAMDIT_MEMORY_LIMIT";

/// Parses a byte count such as `1048576`, `512M` or `8G`.
pub fn parse_bytes(text: &str) -> Option<u128> {
    let text = text.trim();
    let (digits, scale) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let power = match c.to_ascii_uppercase() {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                _ => return None,
            };
            (&text[..i], 1u128 << (10 * power))
        }
        _ => (text, 1),
    };
    digits.trim().parse::<u64>().ok().map(|n| u128::from(n) * scale)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u128> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u128 = words.next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The host memory a run may use, and where that number comes from; `None` when unknown.
pub fn host_limit() -> Result<Option<(u128, String)>> {
    if let Ok(text) = std::env::var(MEMORY_LIMIT_ENV) {
        return match parse_bytes(&text) {
            Some(n) => Ok(Some((n, format!("{MEMORY_LIMIT_ENV}={text}")))),
            None => Err(Error::Invalid(format!(
                "{MEMORY_LIMIT_ENV}: expected a byte count such as 1073741824, 512M or 8G, \
                 found `{text}`"
            ))),
        };
    }
    Ok(std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_available(&t))
        .map(|n| (n, "MemAvailable in /proc/meminfo".to_string())))
}

/// Refuses `bytes` of host memory for `what` when they exceed the limit.
pub fn check_host_memory(what: &str, bytes: u128) -> Result<()> {
    if let Some((limit, source)) = host_limit()? {
        if bytes > limit {
            return Err(Error::Invalid(format!(
                "{what}: needs at least {:.2} GB of host memory, but {:.2} GB are available \
                 ({source}); choose a smaller profile or raise {MEMORY_LIMIT_ENV}",
                bytes as f64 / 1e9,
                limit as f64 / 1e9
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("8g"), Some(8 << 30));
        assert_eq!(parse_bytes(" 2 T "), Some(2 << 40));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("8X"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("-1"), None);
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16000000 kB\nMemFree:   100 kB\nMemAvailable:    2000 kB\n";
        assert_eq!(mem_available(text), Some(2000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }
}
