//! `hearth bench`: llama-bench-style prompt (ppN) and generation (tgN at batch B) throughput
//! of a model, each row against the memory-bandwidth roofline measured in the same run, with
//! joules per token where an energy counter can be read (DESIGN.md §7, issue 4).
//!
//! Owns: the flags and their validation (before anything slow happens), the order of work
//! (check tests against the model's context → measure bandwidth → load → KV pool → run tests),
//! picking the energy source (NVML with `--device cuda`, RAPL on the CPU) and the copy size.
//! With `--stages` the tests run through pipeline stages (`crate::pipeline`).
//! Does not own: running tests and the roofline accounting (`hearth_engine::bench`), the table
//! and JSON (`report`), machine facts (`hardware`), CUDA/NVML calls (`cuda`, feature `cuda`).

#[cfg(feature = "cuda")]
mod cuda;
mod hardware;
mod report;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use hearth_engine::bench::{
    cpu_copy_bandwidth, BenchHarness, BenchTest, CopyBandwidth, CopyParams, EnergyMeter, HarnessParams, ModelCost,
    NoEnergyMeter, RunSettings, TestMeasurement,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{ComputeDevice, DeviceChoice};
use crate::open::{open_files, ModelArgs};
use crate::{store, tensor_parallel};
use hearth_engine::serve::TensorParallelExecutor;
use hearth_models::tensor_parallel::{GroupParams, TensorParallelGroup};
use report::{BenchReport, EnergyInfo, GpuInfo, ReportInputs};

/// Tokens per KV block, as the serving engine uses.
const BLOCK_SIZE: usize = 16;
/// Prompt chunk on the CPU (as `hearth run` computes prompts) and the most on a GPU.
const CPU_PROMPT_CHUNK: usize = 512;
const GPU_MAX_PROMPT_CHUNK: usize = 4096;
const GPU_COPY_BYTES: usize = 1 << 30;
const MIN_CPU_COPY_BYTES: usize = 256 << 20;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths (ppN tests), comma-separated; `none` skips prompt tests.
    #[arg(short = 'p', long = "prompt", default_value = "512,4096")]
    pub prompt_lengths: CountList,
    /// Generated tokens per sequence (tgN tests), comma-separated; `none` skips generation.
    #[arg(short = 'n', long = "gen", default_value = "128")]
    pub generation_steps: CountList,
    /// Sequences generating together (tgN at batch B), comma-separated; 1 is always included.
    #[arg(long = "batch", default_value = "1")]
    pub batch_sizes: CountList,
    /// Split the model over N ranks (N GPUs from `--device cuda:K` through NCCL, or N CPU
    /// threads), as `hearth serve --tensor-parallel N` does.
    #[arg(long, default_value_t = 1)]
    pub tensor_parallel: usize,
    /// Run through pipeline stages, as `hearth serve --stages` does: `host:port=START..END`
    /// (a `hearth stage`) or `local=START..END`, comma-separated. The whole model is also read
    /// once here, for the roofline accounting.
    #[arg(long, value_delimiter = ',')]
    pub stages: Vec<String>,
    /// The cluster key the stages hold.
    #[command(flatten)]
    pub cluster_key: crate::commands::cluster::KeyArgs,
    /// Timed runs per test (mean ± stddev over them).
    #[arg(short = 'r', long, default_value_t = 3)]
    pub reps: usize,
    /// Untimed runs per test before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Prompt tokens per forward pass. Default: 512 on the CPU; on a GPU the whole prompt, up
    /// to 4096.
    #[arg(long)]
    pub prompt_chunk: Option<usize>,
    /// Tokens each generating sequence holds before its timed steps (its prompt, computed
    /// untimed). 1 is llama-bench's tg; more measures generation at depth (`tg128 @ d4096`).
    #[arg(long, default_value_t = 1)]
    pub tg_context: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// MiB copied by the bandwidth measurement. Default: 1024 on a GPU; on the CPU 4× the
    /// last-level cache, at least 256.
    #[arg(long)]
    pub copy_mib: Option<usize>,
}

/// A comma-separated list of counts ≥ 1, or `none` for an empty list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountList(pub Vec<usize>);

impl FromStr for CountList {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(Self(Vec::new()));
        }
        let counts = s
            .split(',')
            .map(|part| match part.trim().parse::<usize>() {
                Ok(0) => Err("counts must be at least 1 (`none` skips these tests)".to_string()),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("`{}` is not a count (expected e.g. 512,4096)", part.trim())),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self(counts))
    }
}

/// The tests the flags ask for, in run order: prompts, then each generation length at each
/// batch size (1 first).
fn tests_from(args: &BenchArgs) -> Result<Vec<BenchTest>> {
    if args.batch_sizes.0.is_empty() {
        bail!("--batch needs at least one batch size");
    }
    let mut batch_sizes = args.batch_sizes.0.clone();
    batch_sizes.push(1);
    batch_sizes.sort_unstable();
    batch_sizes.dedup();
    let prompts = args.prompt_lengths.0.iter().map(|&num_tokens| BenchTest::Prompt { num_tokens });
    let generations = args.generation_steps.0.iter().flat_map(|&num_steps| {
        batch_sizes.iter().map(move |&batch_size| BenchTest::Generation {
            num_steps,
            batch_size,
            num_context_tokens: args.tg_context,
        })
    });
    let tests: Vec<BenchTest> = prompts.chain(generations).collect();
    if tests.is_empty() {
        bail!("nothing to run: both -p and -n are `none`");
    }
    Ok(tests)
}

pub fn run(args: BenchArgs) -> Result<()> {
    // Every flag is checked before anything slow (opening the device, copying, loading).
    let tests = tests_from(&args)?;
    if args.tg_context == 0 {
        bail!("--tg-context must be at least 1 token (generation starts from a prompt)");
    }
    if args.copy_mib == Some(0) {
        bail!("--copy-mib must be at least 1");
    }
    let on_gpu = args.model.device != DeviceChoice::Cpu;
    let (prompt_chunk, prompt_chunk_source) = match args.prompt_chunk {
        Some(chunk) => (chunk, "--prompt-chunk"),
        None if on_gpu => (GPU_MAX_PROMPT_CHUNK, "GPU default: the whole prompt, up to 4096"),
        None => (CPU_PROMPT_CHUNK, "CPU default"),
    };
    let settings = RunSettings { num_warmup_runs: args.warmup, num_timed_runs: args.reps, prompt_chunk };
    settings.validate()?;
    let path = store::resolve(args.model.model.as_deref())?;
    let files = open_files(&path)?;
    for test in &tests {
        test.validate(files.config.context_length).with_context(|| format!("model {}", path.display()))?;
    }
    let (compute, load_options) = args.model.device_and_load_options()?;

    // Bandwidth first, while the device holds nothing else.
    let copy_bytes = copy_bytes(args.copy_mib, on_gpu);
    let bandwidth = measure_bandwidth(&compute, copy_bytes).context("measuring memory bandwidth")?;
    let (mut meter, energy, gpu) = energy_meter(&compute);

    let summary = files.weight_summary()?;
    let params = HarnessParams { block_size: BLOCK_SIZE, kv_dtype: compute.kv_dtype };
    let (mut harness, files) = if !args.stages.is_empty() {
        if args.tensor_parallel > 1 {
            bail!("--stages and --tensor-parallel cannot be combined yet");
        }
        eprintln!("loading {} for the roofline accounting", path.display());
        let loaded = files.load(&load_options).with_context(|| format!("loading {}", path.display()))?;
        let (pool, _) = BenchHarness::sizes(&loaded.model.config, &tests, &settings, params)?;
        let cost = ModelCost::new(&loaded.model, compute.kv_dtype);
        let pipeline_args = crate::pipeline::PipelineArgs {
            stages: &args.stages,
            key: &args.cluster_key,
            model: &args.model,
            files: &loaded.files,
            silence_timeout: std::time::Duration::from_secs(30),
        };
        let shape = hearth_pipeline::PoolShape { num_blocks: pool.num_blocks, block_size: pool.block_size };
        let executor = Box::new(crate::pipeline::open_pipeline(&pipeline_args, shape)?);
        (BenchHarness::with_executor(executor, &loaded.model.config, cost, pool, &compute.device), loaded.files)
    } else if args.tensor_parallel > 1 {
        let ranks = tensor_parallel::open_devices(args.model.device, args.tensor_parallel)?;
        eprintln!("loading {} on the host for {} ranks", path.display(), ranks.len());
        let loaded = files
            .load(&tensor_parallel::host_load_options(&args.model, &ranks)?)
            .with_context(|| format!("loading {}", path.display()))?;
        let (pool, _) = BenchHarness::sizes(&loaded.model.config, &tests, &settings, params)?;
        let cost = ModelCost::new(&loaded.model, compute.kv_dtype);
        let group_params = GroupParams {
            num_blocks: pool.num_blocks,
            block_size: pool.block_size,
            kv_dtype: pool.dtype,
            collective_timeout: std::time::Duration::from_secs(60),
        };
        let group = TensorParallelGroup::new(&loaded.model, &tensor_parallel::rank_devices(&ranks), group_params)
            .with_context(|| format!("splitting {} over {} ranks", path.display(), ranks.len()))?;
        let executor = Box::new(TensorParallelExecutor::new(group));
        (BenchHarness::with_executor(executor, &loaded.model.config, cost, pool, &compute.device), loaded.files)
    } else {
        eprintln!("loading {} on {}", path.display(), args.model.device);
        let loaded =
            files.load(&load_options).with_context(|| format!("loading {} on {}", path.display(), args.model.device))?;
        // The pool tensors hold one scratch block beyond the blocks sequences use.
        let num_blocks = BenchHarness::kv_blocks_needed(&tests, BLOCK_SIZE);
        let bytes_per_token = loaded.model.config.kv_bytes_per_token(compute.kv_dtype.size_in_bytes());
        let pool_bytes = ((num_blocks + 1) * BLOCK_SIZE * bytes_per_token) as u64;
        if let Some(free) = compute.free_memory_bytes()? {
            if pool_bytes > free {
                bail!(
                    "the tests need a KV pool of {:.2} GiB ({num_blocks} blocks of {BLOCK_SIZE} tokens) but the GPU has {:.2} GiB free; use smaller -p/-n/--batch",
                    pool_bytes as f64 / (1u64 << 30) as f64,
                    free as f64 / (1u64 << 30) as f64
                );
            }
        }
        (BenchHarness::new(loaded.model, &tests, &settings, params, &compute.device)?, loaded.files)
    };
    let cost = harness.cost().clone();

    let measurements = run_tests(&mut harness, &tests, &settings, meter.as_mut())?;
    let report = BenchReport::build(ReportInputs {
        model_path: &path,
        files: &files,
        summary: &summary,
        cost: &cost,
        compute: &compute,
        device: args.model.device.to_string(),
        gpu,
        settings: &settings,
        prompt_chunk_source,
        tg_context: args.tg_context,
        block_size: BLOCK_SIZE,
        bandwidth: &bandwidth,
        energy,
        measurements: &measurements,
        tensor_parallel: args.tensor_parallel,
    });
    print!("{}", report.table());
    if let Some(json_path) = &args.json {
        write_json(json_path, &report)?;
        println!("wrote {}", json_path.display());
    }
    Ok(())
}

fn run_tests(
    harness: &mut BenchHarness,
    tests: &[BenchTest],
    settings: &RunSettings,
    meter: &mut dyn EnergyMeter,
) -> Result<Vec<TestMeasurement>> {
    let runs_per_test = (settings.num_warmup_runs + settings.num_timed_runs) as u64;
    let bar = ProgressBar::new(runs_per_test * tests.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} runs {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut measurements = Vec::with_capacity(tests.len());
    for test in tests {
        bar.set_message(format!("{} batch {}", test.label(), test.batch_size()));
        let measurement = harness
            .measure(test, settings, meter, &mut || bar.inc(1))
            .with_context(|| format!("running {} at batch {}", test.label(), test.batch_size()))?;
        measurements.push(measurement);
    }
    bar.finish_and_clear();
    Ok(measurements)
}

/// Bytes per bandwidth copy: `--copy-mib`, else 1 GiB on a GPU, else 4× the CPU's last-level
/// cache and at least 256 MiB.
fn copy_bytes(copy_mib: Option<usize>, on_gpu: bool) -> usize {
    match copy_mib {
        Some(mib) => mib << 20,
        None if on_gpu => GPU_COPY_BYTES,
        None => {
            let llc = hardware::last_level_cache_bytes().unwrap_or(0) as usize;
            (4 * llc).max(MIN_CPU_COPY_BYTES)
        }
    }
}

fn measure_bandwidth(compute: &ComputeDevice, num_bytes: usize) -> Result<CopyBandwidth> {
    let num_threads = candle_core::utils::get_num_threads().max(1);
    let params = CopyParams { num_bytes, num_threads, min_warmup_seconds: 0.25, num_timed_copies: 10 };
    match &compute.device {
        Device::Cpu => Ok(cpu_copy_bandwidth(&params)?),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::copy_bandwidth(&dev.cuda_stream(), &params),
        #[allow(unreachable_patterns)]
        other => bail!("hearth bench cannot measure the bandwidth of {other:?}"),
    }
}

/// The energy counter for the device: NVML on a GPU, RAPL on the CPU; when there is none, a
/// meter that reads nothing and the reason for the report. Also the GPU's facts from NVML.
fn energy_meter(compute: &ComputeDevice) -> (Box<dyn EnergyMeter>, EnergyInfo, Option<GpuInfo>) {
    match &compute.device {
        Device::Cpu => match hardware::RaplMeter::open(Path::new(hardware::RaplMeter::POWERCAP_DIR)) {
            Ok(meter) => {
                (Box::new(meter), EnergyInfo::source("RAPL package counters (whole CPU package, all processes)"), None)
            }
            Err(reason) => (Box::new(NoEnergyMeter), EnergyInfo::unavailable(reason), None),
        },
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => match cuda::NvmlGpu::open(&dev.cuda_stream()) {
            Ok(gpu) => {
                let facts = gpu.facts().map(|f| GpuInfo { name: f.name, memory_total_bytes: f.memory_total_bytes });
                (Box::new(gpu), EnergyInfo::source("NVML total energy counter of the GPU"), facts)
            }
            Err(reason) => (Box::new(NoEnergyMeter), EnergyInfo::unavailable(reason), None),
        },
        #[allow(unreachable_patterns)]
        _ => (Box::new(NoEnergyMeter), EnergyInfo::unavailable("no energy counter for this device".into()), None),
    }
}

fn write_json(path: &Path, report: &BenchReport) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_lists_reject_zero_and_junk_and_accept_none() {
        assert_eq!("512,4096".parse::<CountList>(), Ok(CountList(vec![512, 4096])));
        assert_eq!("none".parse::<CountList>(), Ok(CountList(vec![])));
        assert!("0".parse::<CountList>().unwrap_err().contains("at least 1"));
        assert!("16,x".parse::<CountList>().unwrap_err().contains("`x` is not a count"));
    }

    #[test]
    fn copy_size_defaults_to_a_gibibyte_on_gpus_and_past_the_cache_on_cpus() {
        assert_eq!(copy_bytes(Some(16), false), 16 << 20);
        assert_eq!(copy_bytes(None, true), 1 << 30);
        assert!(copy_bytes(None, false) >= MIN_CPU_COPY_BYTES);
    }
}
