//! `--tensor-parallel N`: the devices of a tensor-parallel group (N threads on the CPU, or N
//! GPUs starting at `--device cuda:K`), the model loaded on the host in those devices' dtype
//! (the group slices it onto each device), and the KV pool sized for the most constrained rank.
//!
//! Owns: choosing the ranks' devices and the per-rank KV budget. Does not own: slicing,
//! collectives, the executor (`hearth_models::tensor_parallel`, `hearth_engine::serve`).

use anyhow::{bail, Context, Result};
use candle_core::Device;
use hearth_models::{LoadOptions, ModelConfig};

use crate::device::{ComputeDevice, DeviceChoice};
use crate::open::ModelArgs;

/// The opened devices of a group of `world_size` ranks, rank order.
pub fn open_devices(choice: DeviceChoice, world_size: usize) -> Result<Vec<ComputeDevice>> {
    if world_size == 0 {
        bail!("--tensor-parallel must be at least 1");
    }
    match choice {
        DeviceChoice::Cpu => Ok(vec![ComputeDevice::cpu(); world_size]),
        DeviceChoice::Cuda { ordinal } => (ordinal..ordinal + world_size)
            .map(|o| ComputeDevice::open(DeviceChoice::Cuda { ordinal: o }))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("--tensor-parallel {world_size} from cuda:{ordinal} needs GPUs cuda:{ordinal}..cuda:{}", ordinal + world_size - 1)),
    }
}

/// Load options for the full model before slicing: on the host, in the ranks' compute dtype.
pub fn host_load_options(args: &ModelArgs, ranks: &[ComputeDevice]) -> Result<LoadOptions> {
    Ok(LoadOptions { device: Device::Cpu, dtype: ranks[0].dtype, quantize: args.quantize()? })
}

pub fn rank_devices(ranks: &[ComputeDevice]) -> Vec<Device> {
    ranks.iter().map(|r| r.device.clone()).collect()
}

/// Bytes of KV pool one rank may allocate, and the KV bytes per token of one rank's share,
/// from `--kv-memory` (per rank), else free GPU memory less the rank's share of the weights
/// and a margin, else (CPU threads) a quarter of available memory shared by all ranks.
pub fn kv_budget_per_rank(
    ranks: &[ComputeDevice],
    requested: Option<u64>,
    weight_bytes: u64,
    config: &ModelConfig,
) -> Result<(u64, u64)> {
    let world_size = ranks.len() as u64;
    let kv_dtype = ranks[0].kv_dtype;
    let per_token = config.kv_bytes_per_token(kv_dtype.size_in_bytes()) as u64 / world_size;
    if let Some(bytes) = requested {
        return Ok((bytes, per_token));
    }
    let mut free_gpu = Vec::new();
    for rank in ranks {
        if let Some(free) = rank.free_memory_bytes()? {
            free_gpu.push(free);
        }
    }
    let budget = match free_gpu.iter().min() {
        Some(&free) => {
            let weights = weight_bytes / world_size;
            let margin = (free / 10).max(1 << 30);
            free.checked_sub(weights + margin).with_context(|| {
                format!(
                    "a rank's share of the weights ({:.2} GiB) does not fit in the {:.2} GiB free on the smallest GPU",
                    weights as f64 / (1u64 << 30) as f64,
                    free as f64 / (1u64 << 30) as f64
                )
            })?
        }
        None => {
            hearth_cluster::available_memory_bytes()
                .context("could not read MemAvailable from /proc/meminfo (pass --kv-memory instead)")?
                / 4
                / world_size
        }
    };
    Ok((budget, per_token))
}
