//! The CUDA-only parts of `hearth bench` (built with `--features cuda`): the device-to-device
//! copy that measures the GPU's bandwidth, and NVML (loaded at run time from
//! `libnvidia-ml.so.1` by `nvml-wrapper`) for the GPU's name, memory and energy counter.
//!
//! Owns nothing else; everything here is small and mirrors the CPU path in `hardware.rs` /
//! `hearth_engine::bench::cpu_copy_bandwidth`. NVML failing never fails the bench: the caller
//! reports the reason instead of joules.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::CudaStream;
use hearth_engine::bench::{CopyBandwidth, CopyParams, EnergyMeter};
use nvml_wrapper::Nvml;

/// Best-of timed `cuMemcpyDtoDAsync` of `params.num_bytes` between two buffers on `stream`'s
/// GPU, each copy synchronized.
pub fn copy_bandwidth(stream: &Arc<CudaStream>, params: &CopyParams) -> anyhow::Result<CopyBandwidth> {
    let alloc = |what: &str| {
        stream.alloc_zeros::<u8>(params.num_bytes).map_err(|e| {
            anyhow::anyhow!("allocating the bandwidth copy's {what} ({} bytes) on the GPU: {e}", params.num_bytes)
        })
    };
    let source = alloc("source")?;
    let mut destination = alloc("destination")?;
    let method = format!("device-to-device copy (cuMemcpyDtoDAsync) of {} MiB on the GPU", params.num_bytes >> 20);
    CopyBandwidth::measure(method, params, || {
        stream.memcpy_dtod(&source, &mut destination)?;
        stream.synchronize()
    })
    .map_err(|e| anyhow::anyhow!("bandwidth copy on the GPU: {e}"))
}

/// The GPU as NVML sees it, found by the CUDA device's UUID (NVML and CUDA may number GPUs
/// differently).
pub struct NvmlGpu {
    nvml: Nvml,
    index: u32,
}

/// What the report says about the GPU.
pub struct GpuFacts {
    pub name: String,
    pub memory_total_bytes: u64,
}

impl NvmlGpu {
    /// `Err` says why NVML is not usable.
    pub fn open(stream: &Arc<CudaStream>) -> Result<Self, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML unavailable: {e}"))?;
        let uuid = stream.context().uuid().map_err(|e| format!("reading the CUDA device's UUID: {e}"))?;
        let uuid = nvml_uuid(&uuid.bytes.map(|b| b as u8));
        let index = nvml
            .device_by_uuid(uuid.as_str())
            .and_then(|device| device.index())
            .map_err(|e| format!("NVML has no GPU with the CUDA device's UUID {uuid}: {e}"))?;
        Ok(Self { nvml, index })
    }

    pub fn facts(&self) -> Option<GpuFacts> {
        let device = self.nvml.device_by_index(self.index).ok()?;
        Some(GpuFacts { name: device.name().ok()?, memory_total_bytes: device.memory_info().ok()?.total })
    }
}

impl EnergyMeter for NvmlGpu {
    /// NVML's total energy counter (millijoules since the driver loaded; Volta and newer).
    fn read_joules(&mut self) -> Option<f64> {
        let millijoules = self.nvml.device_by_index(self.index).ok()?.total_energy_consumption().ok()?;
        Some(millijoules as f64 / 1e3)
    }
}

/// NVML's spelling of a UUID: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
fn nvml_uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}
