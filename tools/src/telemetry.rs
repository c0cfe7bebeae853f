//! GPU telemetry for `streamdit bench` through NVML (nvml-wrapper loads libnvidia-ml at run
//! time, so a machine without an NVIDIA driver gets a reason, not a failure).

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;
use serde_json::{json, Value};

/// An NVML session on one device, found by its UUID (NVML's indices follow PCI order and
/// need not match CUDA ordinals).
pub struct Telemetry {
    nvml: Nvml,
    uuid: String,
}

/// What NVML reports at one moment; `None` for what the device does not support.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub name: Option<String>,
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports, `major.minor`.
    pub cuda_version: Option<String>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub power_w: Option<f64>,
    pub temperature_c: Option<u32>,
    pub throttle_reasons: Option<Vec<String>>,
    /// Energy since the driver loaded, millijoules.
    pub energy_mj: Option<u64>,
    /// Device memory in use by every process on the GPU.
    pub memory_used_bytes: Option<u64>,
}

impl Telemetry {
    /// Opens the device with `uuid` (`GPU-...`, what `Engine::cuda_device_uuid` reports for
    /// the CUDA device that runs), or says why there is no telemetry.
    pub fn open(uuid: Option<&str>) -> Result<Telemetry, String> {
        let uuid = uuid.ok_or("the CUDA device's UUID is unknown")?;
        let nvml = Nvml::init().map_err(|e| format!("NVML unavailable: {e}"))?;
        nvml.device_by_uuid(uuid)
            .map_err(|e| format!("NVML device {uuid}: {e}"))?;
        Ok(Telemetry {
            nvml,
            uuid: uuid.to_string(),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        let Ok(d) = self.nvml.device_by_uuid(self.uuid.as_str()) else {
            return Snapshot::default();
        };
        Snapshot {
            name: d.name().ok(),
            driver_version: self.nvml.sys_driver_version().ok(),
            cuda_version: self
                .nvml
                .sys_cuda_driver_version()
                .ok()
                .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)),
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            mem_clock_mhz: d.clock_info(Clock::Memory).ok(),
            power_w: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            throttle_reasons: d
                .current_throttle_reasons()
                .ok()
                .map(|r| r.iter_names().map(|(name, _)| name.to_string()).collect()),
            energy_mj: d.total_energy_consumption().ok(),
            memory_used_bytes: d.memory_info().ok().map(|m| m.used),
        }
    }
}

/// The `gpu` object of the bench report: the snapshot after the measured window, and the
/// energy per video frame over it. All null without telemetry.
pub fn gpu_json(before: Option<&Snapshot>, after: Option<&Snapshot>, video_frames: usize) -> Value {
    let a = after.cloned().unwrap_or_default();
    let energy_per_frame = match (before.and_then(|b| b.energy_mj), a.energy_mj) {
        (Some(e0), Some(e1)) if e1 >= e0 && video_frames > 0 => {
            Some((e1 - e0) as f64 / 1000.0 / video_frames as f64)
        }
        _ => None,
    };
    json!({
        "name": a.name,
        "driver_version": a.driver_version,
        "cuda_version": a.cuda_version,
        "sm_clock_mhz": a.sm_clock_mhz,
        "mem_clock_mhz": a.mem_clock_mhz,
        "power_w": a.power_w,
        "temperature_c": a.temperature_c,
        "throttle_reasons": a.throttle_reasons,
        "energy_per_frame_j": energy_per_frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without libnvidia-ml (every CI machine) opening is an error naming NVML, not a
    /// panic; with a GPU, a snapshot names it.
    #[test]
    fn opening_nvml_never_panics() {
        let uuid = "GPU-00000000-0000-0000-0000-000000000000";
        match Telemetry::open(Some(uuid)) {
            Ok(t) => assert!(t.snapshot().name.is_some()),
            Err(why) => assert!(
                why.contains("NVML") && why.contains(uuid) || why.contains("NVML unavailable"),
                "{why}"
            ),
        }
        let why = Telemetry::open(None).err().unwrap();
        assert!(why.contains("UUID"), "{why}");
    }

    #[test]
    fn without_telemetry_every_gpu_field_is_null() {
        let v = gpu_json(None, None, 10);
        for (key, value) in v.as_object().unwrap() {
            assert!(value.is_null(), "{key}");
        }
        let before = Snapshot {
            energy_mj: Some(1_000),
            ..Default::default()
        };
        let after = Snapshot {
            energy_mj: Some(21_000),
            name: Some("GPU".into()),
            ..Default::default()
        };
        let v = gpu_json(Some(&before), Some(&after), 10);
        assert_eq!(v["energy_per_frame_j"], json!(2.0));
        assert_eq!(v["name"], json!("GPU"));
    }
}
