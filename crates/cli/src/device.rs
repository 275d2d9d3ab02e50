//! Device selection: `--device cpu|cuda[:N]` becomes a candle [`Device`] plus the dtypes hearth
//! computes and caches in on it (F32 on the CPU; BF16 activations and KV pool on CUDA).
//!
//! Owns: parsing the flag, probing the CUDA driver before anything can panic on its absence,
//! free device memory for sizing the KV pool. Does not own: which ops run where (kernels and
//! candle decide by the tensors' device).
//!
//! A `cuda` build links the driver (`libcuda.so.1`) at load time, so on a machine with no driver
//! library at all the dynamic loader stops the process before `main`; with the library but no
//! usable GPU (or hearth's build stub) opening the device fails here with the driver's reason.

use std::str::FromStr;

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// What `--device` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda { ordinal: usize },
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => return Ok(Self::Cpu),
            "cuda" | "gpu" => return Ok(Self::Cuda { ordinal: 0 }),
            _ => {}
        }
        match lower.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => Ok(Self::Cuda { ordinal }),
            _ => Err(format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// An opened device and the dtypes used on it.
#[derive(Debug, Clone)]
pub struct ComputeDevice {
    pub device: Device,
    /// Activations and dense weights.
    pub dtype: DType,
    /// The paged KV pool.
    pub kv_dtype: DType,
}

impl ComputeDevice {
    pub fn cpu() -> Self {
        Self { device: Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 }
    }

    pub fn open(choice: DeviceChoice) -> Result<Self> {
        match choice {
            DeviceChoice::Cpu => Ok(Self::cpu()),
            DeviceChoice::Cuda { ordinal } => open_cuda(ordinal),
        }
    }

    /// Free memory on a GPU in bytes; `None` on the CPU (callers use system memory).
    pub fn free_memory_bytes(&self) -> Result<Option<u64>> {
        match &self.device {
            Device::Cpu => Ok(None),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => {
                let (free, _total) = dev
                    .cuda_stream()
                    .context()
                    .mem_get_info()
                    .map_err(|e| anyhow::anyhow!("reading free GPU memory: {e}"))?;
                Ok(Some(free as u64))
            }
            #[allow(unreachable_patterns)]
            _ => Ok(None),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<ComputeDevice> {
    bail!("this hearth was built without CUDA; rebuild with --features cuda (scripts/cuda-build.sh)")
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<ComputeDevice> {
    use candle_core::cuda_backend::cudarc::driver::{result::DriverError, sys::CUresult as Code, CudaContext};

    let explain = |e: DriverError| -> anyhow::Error {
        let hint = match e.0 {
            Code::CUDA_ERROR_STUB_LIBRARY => {
                "the libcuda.so.1 found is a stub (e.g. hearth's build stub on LD_LIBRARY_PATH), not the NVIDIA driver"
            }
            Code::CUDA_ERROR_NO_DEVICE => "the driver sees no NVIDIA GPU",
            Code::CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER | Code::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH => {
                "the NVIDIA driver does not match (CUDA 13.0 needs driver 580 or newer)"
            }
            _ => "is the NVIDIA driver installed and a GPU visible (nvidia-smi)?",
        };
        anyhow::anyhow!("cannot use CUDA: {hint} ({e})")
    };
    let num_gpus = CudaContext::device_count().map_err(explain)?;
    if ordinal >= num_gpus.max(0) as usize {
        bail!("--device cuda:{ordinal}: this machine has {num_gpus} CUDA GPU(s)");
    }
    let device = Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("opening cuda:{ordinal}: {e}"))?;
    if let Device::Cuda(dev) = &device {
        // hearth runs all GPU work on candle's one stream, so cross-stream event tracking is
        // only overhead, and CUDA-graph recording (`hearth_kernels::graph`) needs it off for
        // every tensor, weights included: they must be created after this.
        // SAFETY: one stream per device; nothing is shared with another stream.
        unsafe { dev.disable_event_tracking() };
    }
    // candle's BF16 kernels need compute capability 8.0 (Ampere) or newer.
    let dtype = match &device {
        Device::Cuda(dev) => match dev.cuda_stream().context().compute_capability() {
            Ok((major, _)) if major >= 8 => DType::BF16,
            Ok(_) => DType::F16,
            Err(e) => return Err(explain(e)),
        },
        _ => DType::BF16,
    };
    Ok(ComputeDevice { device, dtype, kv_dtype: dtype })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_flag_parses_cpu_cuda_and_ordinals() {
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert_eq!("CUDA".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda { ordinal: 0 }));
        assert_eq!("cuda:3".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda { ordinal: 3 }));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("metal".parse::<DeviceChoice>().unwrap_err().contains("expected cpu, cuda or cuda:N"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let err = ComputeDevice::open(DeviceChoice::Cuda { ordinal: 0 }).unwrap_err();
        assert!(err.to_string().contains("rebuild with --features cuda"), "{err}");
    }
}
