//! `hearth serve`: load a model on `--device`, size its KV pool from a memory budget (system
//! memory on the CPU, free GPU memory after loading on CUDA), start the engine thread and serve
//! the OpenAI- and Ollama-compatible HTTP API until SIGTERM/Ctrl-C. With `--stages` the model
//! runs as pipeline stages (`crate::pipeline`), with `--tensor-parallel` split over ranks.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hearth_engine::serve::{
    EngineConfig, EngineHandle, Executor, KvPoolParams, KvPoolPlan, LocalExecutor, ModelInfo, StepLimits, TensorParallelExecutor,
};
use hearth_models::tensor_parallel::{GroupParams, TensorParallelGroup};
use candle_core::DType;
use hearth_models::{numerics, ModelFormat};
use hearth_server::ServeOptions;

use crate::device::DeviceChoice;
use crate::open::{open_files, tokenizer_for, ModelArgs};
use crate::commands::cluster::KeyArgs;
use crate::{pipeline, pipeline_plan, store, tensor_parallel};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer <key>` on API routes.
    #[arg(long, env = "HEARTH_API_KEY")]
    pub api_key: Option<String>,
    /// Memory for the KV cache, e.g. `2GiB`, `512MiB` (default: a quarter of available memory on
    /// the CPU; on a GPU, free GPU memory after loading less 10% (at least 1 GiB) for activations).
    #[arg(long)]
    pub kv_memory: Option<String>,
    /// Tokens per KV block (prefix caching shares whole blocks).
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Most tokens computed in one step; bounds how long a prompt chunk delays others (default:
    /// 512 on the CPU, 4096 on a GPU, whose prompt GEMMs need long chunks to be efficient).
    #[arg(long)]
    pub max_batched_tokens: Option<usize>,
    /// Most requests running at once.
    #[arg(long, default_value_t = 64)]
    pub max_seqs: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/Ctrl-C.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Split the model over N ranks by tensor parallelism: N GPUs from `--device cuda:K`
    /// (NCCL), or N threads on the CPU. `--kv-memory` is then per rank.
    #[arg(long, default_value_t = 1)]
    pub tensor_parallel: usize,
    /// Serve through pipeline stages, in layer order: `host:port=START..END` (a `hearth stage`
    /// serving those layers) or `local=START..END` (loaded here), comma-separated; the ranges
    /// must cover every layer. `--kv-memory` is then per stage.
    #[arg(long, value_delimiter = ',')]
    pub stages: Vec<String>,
    /// Serve through pipeline stages placed by the planner: comma-separated host:port of
    /// `hearth stage` processes started without `--layers`; this process is a candidate node too.
    #[arg(long, value_delimiter = ',', conflicts_with = "stages")]
    pub pipeline_peers: Vec<String>,
    /// With --pipeline-peers: memory this process offers the planner for layers and KV, e.g.
    /// `8GiB`; `0` keeps every layer on the peers (default: available memory).
    #[arg(long)]
    pub coordinator_memory: Option<String>,
    /// With --pipeline-peers or --prefill-node: the link between any two nodes for the plan, e.g.
    /// "latency=0.2ms,bw=10Gbit/s" (default: measured latency to each peer, 10 GbE bandwidth).
    #[arg(long)]
    pub link: Option<String>,
    /// Split prefill/decode: this process decodes (the whole model), the `hearth stage` at
    /// host:port computes fresh prompts and streams their K/V back.
    #[arg(long, conflicts_with_all = ["stages", "pipeline_peers"])]
    pub prefill_node: Option<String>,
    /// With --prefill-node: prompts this long or longer go to it (default: where the planner
    /// predicts the transfer pays off).
    #[arg(long)]
    pub prefill_min_tokens: Option<usize>,
    /// The cluster key the stages hold (pipeline connections are authenticated).
    #[command(flatten)]
    pub cluster_key: KeyArgs,
    /// A pipeline stage silent this long (no answer, no heartbeat) fails the step, in ms.
    #[arg(long, default_value_t = 5000)]
    pub stage_timeout_ms: u64,
    /// With pipeline stages: most steps in flight at once, each over its own requests, so that
    /// the stages compute different steps at the same time (default: one per stage; 1: one
    /// step at a time).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub pipeline_depth: Option<u16>,
    /// One kernel per operation whatever the batch, so that a request's tokens and
    /// log-probabilities do not depend on what it shares its steps with, nor on prefix-cache
    /// hits (GPU: slower prompts and single-sequence steps; the CPU is batch-invariant anyway).
    /// `HEARTH_BATCH_INVARIANT=1` does the same.
    #[arg(long)]
    pub batch_invariant: bool,
}

/// `--max-batched-tokens` when it is not given. H100, 8B Q4_K_M, 64 concurrent 1,057-token
/// prompts (scripts/bench_serve.py): 512 -> 478 tok/s, TTFT p50/p99 5.2/12.2 s; 2048 -> 596,
/// 2.9/5.9 s; 4096 -> 619, 2.6/4.9 s; 8192 -> 635, 2.7/4.5 s; TPOT 79-81 ms p50 throughout.
/// 8192 gained little more and doubles the activations a step holds.
const DEFAULT_MAX_BATCHED_TOKENS_CPU: usize = 512;
const DEFAULT_MAX_BATCHED_TOKENS_GPU: usize = 4096;

impl ServeArgs {
    fn max_batched_tokens(&self) -> usize {
        self.max_batched_tokens.unwrap_or(match self.model.device {
            DeviceChoice::Cpu => DEFAULT_MAX_BATCHED_TOKENS_CPU,
            DeviceChoice::Cuda { .. } => DEFAULT_MAX_BATCHED_TOKENS_GPU,
        })
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    let handle = start_engine(&args)?;
    let options = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone(),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        max_body_bytes: args.max_body_bytes,
    };
    let mut engine_thread = handle.take_engine_thread();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let served = runtime.block_on(hearth_server::serve(handle, options));
    // With the runtime go the last handles and streams; the engine thread then drops the model
    // and the KV pool. The process must not exit under it: its teardown unloads the GPU driver
    // and NCCL while a tensor-parallel group still frees on them (a segfault on Ctrl-C).
    drop(runtime);
    if let Some(thread) = engine_thread.as_mut() {
        if !thread.join_within(ENGINE_STOP_TIMEOUT) {
            eprintln!("warning: the engine did not stop within {ENGINE_STOP_TIMEOUT:?}; exiting anyway");
        }
    }
    served?;
    Ok(())
}

/// How long `hearth serve` waits for the engine to finish its steps in flight and free the model
/// after the server stopped.
const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Turns batch-invariant mode on for `--batch-invariant`, and refuses the setups where it would
/// not hold.
fn set_up_batch_invariance(args: &ServeArgs) -> Result<()> {
    if args.batch_invariant {
        numerics::set_batch_invariant(true);
    }
    if !numerics::batch_invariant() {
        return Ok(());
    }
    if args.prefill_node.is_some() || !args.stages.is_empty() || !args.pipeline_peers.is_empty() {
        bail!("batch-invariant mode cannot be combined with pipeline stages or --prefill-node yet: the other processes choose their own kernels");
    }
    if args.tensor_parallel > 1 && matches!(args.model.device, DeviceChoice::Cuda { .. }) {
        bail!("batch-invariant mode cannot be combined with --tensor-parallel on GPUs yet: NCCL's reduction order depends on the message size");
    }
    Ok(())
}

fn start_engine(args: &ServeArgs) -> Result<EngineHandle> {
    set_up_batch_invariance(args)?;
    let path = store::resolve(args.model.model.as_deref())?;
    let files = open_files(&path)?;
    let tokenizer = Arc::new(tokenizer_for(&files)?);
    let summary = files.weight_summary()?;
    let config = files.config.clone();
    let files_format = files.format;
    let requested_kv = args.kv_memory.as_deref().map(parse_bytes).transpose()?;
    let limits = |max_model_len| StepLimits { max_num_seqs: args.max_seqs, max_num_batched_tokens: args.max_batched_tokens(), max_model_len };
    let (executor, pool, max_model_len): (Box<dyn Executor>, KvPoolPlan, usize) = if let Some(prefill_node) = &args.prefill_node {
        if args.tensor_parallel > 1 {
            bail!("--prefill-node and --tensor-parallel cannot be combined yet");
        }
        let (executor, pool) = open_split(args, &path, &files, requested_kv, prefill_node)?;
        let max_model_len = pool.max_request_len(config.context_length);
        let kv_dtype = args.model.device_and_load_options()?.0.kv_dtype;
        report_pool(&format!("{}, split prefill/decode", args.model.device), kv_dtype, &pool, max_model_len, &config);
        (Box::new(executor), pool, max_model_len)
    } else if !args.stages.is_empty() || !args.pipeline_peers.is_empty() {
        if args.tensor_parallel > 1 {
            bail!("pipeline stages and --tensor-parallel cannot be combined yet");
        }
        let (mut executor, pool) = open_pipeline(args, &path, &files, requested_kv)?;
        if let Some(depth) = args.pipeline_depth {
            executor.set_max_steps_in_flight(depth.into());
        }
        let max_model_len = pool.max_request_len(config.context_length);
        let kv_dtype = args.model.device_and_load_options()?.0.kv_dtype;
        report_pool(&format!("per stage, {} stages", executor.stage_names().len()), kv_dtype, &pool, max_model_len, &config);
        (Box::new(executor), pool, max_model_len)
    } else if args.tensor_parallel > 1 {
        let ranks = tensor_parallel::open_devices(args.model.device, args.tensor_parallel)?;
        let load_options = tensor_parallel::host_load_options(&args.model, &ranks)?;
        let (budget, per_token) = tensor_parallel::kv_budget_per_rank(&ranks, requested_kv, summary.num_bytes, &config)?;
        let pool = KvPoolPlan::for_budget(budget, per_token, args.block_size)?;
        let max_model_len = pool.max_request_len(config.context_length);
        report_pool(&format!("{} ranks from {}", ranks.len(), args.model.device), ranks[0].kv_dtype, &pool, max_model_len, &config);
        let loaded = files.load(&load_options).with_context(|| format!("loading {} on the host", path.display()))?;
        let params = GroupParams {
            num_blocks: pool.num_blocks,
            block_size: pool.block_size,
            kv_dtype: ranks[0].kv_dtype,
            collective_timeout: Duration::from_secs(60),
        };
        let group = TensorParallelGroup::new(&loaded.model, &tensor_parallel::rank_devices(&ranks), params)
            .with_context(|| format!("splitting {} over {} ranks", path.display(), ranks.len()))?;
        (Box::new(TensorParallelExecutor::new(group)), pool, max_model_len)
    } else {
        let (compute, load_options) = args.model.device_and_load_options()?;
        if numerics::batch_invariant() && compute.device.is_cuda() && compute.dtype != DType::BF16 {
            bail!("batch-invariant mode needs a GPU of compute capability 8.0 or newer (its BF16 tensor-core kernels)");
        }
        let loaded = files
            .load(&load_options)
            .with_context(|| format!("loading {} on {}", path.display(), args.model.device))?;
        let kv_dtype = compute.kv_dtype;
        let budget = match (requested_kv, compute.free_memory_bytes()?) {
            (Some(bytes), _) => bytes,
            (None, Some(free_gpu)) => free_gpu.saturating_sub((free_gpu / 10).max(1 << 30)),
            (None, None) => {
                hearth_cluster::available_memory_bytes()
                    .context("could not read MemAvailable from /proc/meminfo (pass --kv-memory instead)")?
                    / 4
            }
        };
        let pool = KvPoolPlan::for_budget(budget, config.kv_bytes_per_token(kv_dtype.size_in_bytes()) as u64, args.block_size)?;
        let max_model_len = pool.max_request_len(config.context_length);
        report_pool(&args.model.device.to_string(), kv_dtype, &pool, max_model_len, &config);
        let executor = LocalExecutor::new(
            loaded.model,
            KvPoolParams { num_blocks: pool.num_blocks, block_size: pool.block_size, dtype: kv_dtype },
            limits(max_model_len),
            &compute.device,
        )?;
        (Box::new(executor), pool, max_model_len)
    };
    let info = ModelInfo {
        name: store::served_name(args.model.model.as_deref()),
        architecture: config.arch.name().to_string(),
        context_length: config.context_length,
        quantization: dominant_type(&summary),
        num_parameters: summary.num_params,
        format: match files_format { ModelFormat::Gguf => "gguf".into(), ModelFormat::HfDirectory => "safetensors".into() },
        size_bytes: summary.num_bytes,
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    let engine_config = EngineConfig {
        block_size: pool.block_size,
        num_blocks: pool.num_blocks,
        max_num_batched_tokens: args.max_batched_tokens(),
        max_num_seqs: args.max_seqs,
        max_model_len,
        vocab_size: config.vocab_size,
        cache_salt: salt_for(&path),
    };
    Ok(EngineHandle::spawn(executor, tokenizer, info, engine_config)?)
}

/// `--stages` (given) or `--pipeline-peers` (planned): the executor and its per-stage KV pool.
fn open_pipeline(
    args: &ServeArgs,
    path: &std::path::Path,
    files: &hearth_models::ModelFiles,
    requested_kv: Option<u64>,
) -> Result<(hearth_pipeline::PipelineExecutor, KvPoolPlan)> {
    let pipeline_args = pipeline::PipelineArgs {
        stages: &args.stages,
        key: &args.cluster_key,
        model: &args.model,
        files,
        silence_timeout: Duration::from_millis(args.stage_timeout_ms),
    };
    let kv_dtype = args.model.device_and_load_options()?.0.kv_dtype;
    let pool_for = |max_stage_layers: usize| {
        pipeline::pool_for_largest_stage(&files.config, max_stage_layers, requested_kv, kv_dtype.size_in_bytes(), args.block_size)
    };
    let shape_of = |pool: &KvPoolPlan| hearth_pipeline::PoolShape { num_blocks: pool.num_blocks, block_size: pool.block_size };
    if args.pipeline_peers.is_empty() {
        let stages = pipeline::stage_list(&pipeline_args)?;
        let pool = pool_for(stages.iter().map(|(_, layers)| layers.len()).max().unwrap_or(0))?;
        return Ok((pipeline::open_pipeline(&pipeline_args, shape_of(&pool))?, pool));
    }
    let planning = pipeline_plan::PlanningArgs {
        pipeline: &pipeline_args,
        model_path: path,
        peers: &args.pipeline_peers,
        coordinator_memory: args.coordinator_memory.as_deref().map(parse_bytes_or_zero).transpose()?,
        link: args.link.as_deref(),
    };
    let mut planner = pipeline_plan::PeerPlanner::new(&planning)?;
    let planned = planner.place(hearth_pipeline::HeldStages::default())?;
    for line in &planned.summary {
        eprintln!("{line}");
    }
    let pool = pool_for(planned.locations.iter().map(|(layers, _)| layers.len()).max().unwrap_or(0))?;
    let mut executor = pipeline::connect_locations(&pipeline_args, planned.locations, shape_of(&pool), &planner.dialer.clone())?;
    // A stage that is gone is re-planned around (crate::replan).
    executor.set_replanner(Box::new(planner));
    Ok((executor, pool))
}

/// `--prefill-node`: the split executor and its KV pool (the whole model's, on both nodes).
fn open_split(
    args: &ServeArgs,
    path: &std::path::Path,
    files: &hearth_models::ModelFiles,
    requested_kv: Option<u64>,
    prefill_node: &str,
) -> Result<(hearth_pipeline::SplitExecutor, KvPoolPlan)> {
    let pipeline_args = pipeline::PipelineArgs {
        stages: &[],
        key: &args.cluster_key,
        model: &args.model,
        files,
        silence_timeout: Duration::from_millis(args.stage_timeout_ms),
    };
    let kv_dtype = args.model.device_and_load_options()?.0.kv_dtype;
    let pool = pipeline::pool_for_largest_stage(&files.config, files.config.num_layers, requested_kv, kv_dtype.size_in_bytes(), args.block_size)?;
    let split_args = pipeline_plan::SplitArgs {
        pipeline: &pipeline_args,
        model_path: path,
        prefill_node,
        min_prefill_tokens: args.prefill_min_tokens,
        link: args.link.as_deref(),
    };
    let shape = hearth_pipeline::PoolShape { num_blocks: pool.num_blocks, block_size: pool.block_size };
    let (executor, summary) = pipeline_plan::open_split(&split_args, shape)?;
    for line in summary {
        eprintln!("{line}");
    }
    Ok((executor, pool))
}

/// A size like `8GiB`, or `0`.
fn parse_bytes_or_zero(text: &str) -> Result<u64> {
    if text.trim() == "0" {
        return Ok(0);
    }
    parse_bytes(text)
}

fn report_pool(place: &str, kv_dtype: candle_core::DType, pool: &KvPoolPlan, max_model_len: usize, config: &hearth_models::ModelConfig) {
    eprintln!(
        "KV cache ({place}, {kv_dtype:?}): {} blocks of {} tokens = {} tokens, {:.1} MiB; longest request {max_model_len} tokens (context {})",
        pool.num_blocks,
        pool.block_size,
        pool.num_tokens(),
        pool.num_bytes() as f64 / (1 << 20) as f64,
        config.context_length
    );
}

/// The storage type holding most parameters, e.g. "Q4_1".
fn dominant_type(summary: &hearth_models::WeightSummary) -> String {
    summary.by_type.iter().max_by_key(|(_, (_, num_params))| *num_params).map_or_else(|| "unknown".into(), |(t, _)| t.clone())
}

/// Distinguishes cached blocks of different models (stable across restarts of the same file).
fn salt_for(path: &std::path::Path) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    path.hash(&mut hasher);
    hasher.finish()
}

/// Parses `2GiB`, `512MiB`, `1.5GB`, `1000000` (bytes).
pub(crate) fn parse_bytes(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().with_context(|| format!("--kv-memory `{text}`: expected a size like 2GiB or 512MiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("--kv-memory `{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"),
    };
    if !(value > 0.0) {
        bail!("--kv-memory `{text}` must be positive");
    }
    Ok((value * scale) as u64)
}


#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn kv_memory_sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("2XB").unwrap_err().to_string().contains("unknown unit"));
        assert!(parse_bytes("0GiB").is_err());
    }
}
