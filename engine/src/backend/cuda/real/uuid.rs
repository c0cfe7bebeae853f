//! A device's UUID in the form NVML and `nvidia-smi -L` print it, so that the telemetry of
//! `streamdit bench` reads the GPU that runs (NVML's `device_by_uuid`), not NVML's device 0:
//! NVML indices follow PCI order and need not match CUDA ordinals (`CUDA_DEVICE_ORDER`,
//! `CUDA_VISIBLE_DEVICES`).

/// `GPU-` and the 16 bytes of `cuDeviceGetUuid` as lowercase hex in groups of 8-4-4-4-12:
/// `GPU-5ae0b8d2-1f4c-8e3a-9b0d-6c7e2f1a3b4c`.
pub fn format(bytes: &[u8; 16]) -> String {
    let hex = |r: std::ops::Range<usize>| {
        bytes[r]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

/// Whether `s` has the form [`format`] writes (what a UUID given on a command line or read
/// from NVML must look like before it is matched).
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
pub fn is_valid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("GPU-") else {
        return false;
    };
    let groups: Vec<&str> = rest.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_as_nvml_names_them() {
        let bytes = [
            0x5a, 0xe0, 0xb8, 0xd2, 0x1f, 0x4c, 0x8e, 0x3a, 0x9b, 0x0d, 0x6c, 0x7e, 0x2f, 0x1a,
            0x3b, 0x4c,
        ];
        let s = format(&bytes);
        assert_eq!(s, "GPU-5ae0b8d2-1f4c-8e3a-9b0d-6c7e2f1a3b4c");
        assert!(is_valid(&s));
        // Leading zeros are kept: every byte is two digits.
        let s = format(&[0; 16]);
        assert_eq!(s, "GPU-00000000-0000-0000-0000-000000000000");
        assert_eq!(s.len(), 4 + 32 + 4);
        let s = format(&[0xff; 16]);
        assert_eq!(s, "GPU-ffffffff-ffff-ffff-ffff-ffffffffffff");
        for bad in [
            "5ae0b8d2-1f4c-8e3a-9b0d-6c7e2f1a3b4c",
            "GPU-5ae0b8d2-1f4c-8e3a-9b0d",
            "GPU-5ae0b8d21f4c-8e3a-9b0d-6c7e2f1a3b4c-",
            "GPU-5ae0b8dz-1f4c-8e3a-9b0d-6c7e2f1a3b4c",
            "MIG-5ae0b8d2-1f4c-8e3a-9b0d-6c7e2f1a3b4c",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
