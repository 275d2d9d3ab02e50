//! `hearth stage`: a pipeline stage worker. With `--layers` it loads that contiguous layer
//! range of a model (plus the embedding on the first stage and the head on the last) for
//! `hearth serve --stages …`; without, it loads whatever range a planning coordinator
//! (`hearth serve --pipeline-peers …`) gives it, after telling it what it offers (memory,
//! measured memory bandwidth, compute). It serves steps on authenticated `Purpose::Data`
//! connections until SIGTERM/Ctrl-C.
//!
//! Owns: the stage's flags (layers, listen address, memory and KV budgets, the offer) and its
//! signal handling. Does not own: the protocol (`hearth_pipeline::StageServer`), loading
//! (`PipelineStage::load`).
//!
//! The handshake identity is a fresh random node id per process: a stage is reached by address,
//! not by membership, and two processes on one machine (a stage and its coordinator) must not
//! share the persisted id (the handshake refuses a peer with its own id).

use std::net::TcpListener;
use std::ops::Range;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hearth_cluster::{
    measure_memory_bandwidth, resolve_address, ConnectionTiming, HandshakeConfig, MemoryBandwidthParams, NodeId, VersionInfo,
};
use hearth_models::PipelineStage;
use hearth_pipeline::{StageOffer, StageServer, StageServerParams};

use crate::stop_signal::StopSignal;
use crate::commands::cluster::KeyArgs;
use crate::device::DeviceChoice;
use crate::open::{open_files, ModelArgs};
use crate::store;

/// Where `hearth stage` listens when `--listen` has no port.
pub const DEFAULT_STAGE_PORT: u16 = 7650;

#[derive(clap::Args, Debug)]
pub struct StageArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The model layers this stage runs, `START..END` (END exclusive), e.g. `0..12`. Without
    /// it the stage loads the layers a planning coordinator assigns.
    #[arg(long)]
    pub layers: Option<String>,
    /// Address to accept the coordinator on.
    #[arg(long, default_value = "0.0.0.0:7650")]
    pub listen: String,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Most memory this stage gives a coordinator's KV pool, e.g. `4GiB` (default: a quarter of
    /// available memory).
    #[arg(long)]
    pub kv_memory: Option<String>,
    /// Memory offered to a planning coordinator for weights and KV, e.g. `16GiB` (default:
    /// available memory on the CPU; required on a GPU).
    #[arg(long)]
    pub memory: Option<String>,
    /// Memory bandwidth offered, GB/s (default: measured by a copy on the CPU; required on a GPU).
    #[arg(long)]
    pub memory_bandwidth_gbps: Option<f64>,
    /// Dense compute offered, TFLOP/s (default on the CPU: cores x 50 GFLOP/s, an estimate).
    #[arg(long)]
    pub tflops: Option<f64>,
}

pub fn run(args: StageArgs) -> Result<()> {
    let key = args.key.required_key()?;
    let path = store::resolve(args.model.model.as_deref())?;
    let files = open_files(&path)?;
    let layers = args.layers.as_deref().map(parse_layers).transpose()?;
    let (compute, load_options) = args.model.device_and_load_options()?;
    // A stage with fixed layers is not planned around: it offers nothing to measure.
    let offer = match layers {
        Some(_) => StageOffer { memory_bytes: 0, bandwidth_bytes_per_s: 0.0, flops_per_s: 0.0 },
        None => offer(&args)?,
    };
    let max_kv_bytes = match args.kv_memory.as_deref() {
        Some(text) => crate::commands::serve::parse_bytes(text)?,
        None => {
            hearth_cluster::available_memory_bytes().context("could not read MemAvailable (pass --kv-memory instead)")? / 4
        }
    };
    let listen = resolve_address(&args.listen, DEFAULT_STAGE_PORT)?
        .into_iter()
        .next()
        .with_context(|| format!("--listen {} resolved to no address", args.listen))?;
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let params = StageServerParams {
        handshake: HandshakeConfig {
            key,
            node_id: NodeId::random(),
            version: VersionInfo::current(),
            timeout: ConnectionTiming::default().handshake_timeout,
        },
        timing: ConnectionTiming::default(),
        device: compute.device.clone(),
        max_kv_bytes,
        busy_interval: Duration::from_secs(1),
        offer,
    };
    let address = listener.local_addr()?;
    let num_layers = files.config.num_layers;
    let mut server = match layers {
        Some(layers) => {
            let stage = PipelineStage::load(&files, layers.clone(), &load_options)
                .with_context(|| format!("loading layers {}..{} of {}", layers.start, layers.end, path.display()))?;
            let ends = match (stage.is_first(), stage.is_last()) {
                (true, true) => ", embedding, head",
                (true, false) => ", embedding",
                (false, true) => ", head",
                (false, false) => "",
            };
            println!(
                "hearth stage: layers {}..{} of {} ({num_layers} layers{ends}) listening on {address}",
                layers.start,
                layers.end,
                path.display()
            );
            StageServer::new(stage, params)
        }
        None => {
            println!(
                "hearth stage: layers of {} ({num_layers} layers) as a coordinator assigns, offering {:.1} GiB at {:.1} GB/s; listening on {address}",
                path.display(),
                offer.memory_bytes as f64 / (1u64 << 30) as f64,
                offer.bandwidth_bytes_per_s / 1e9
            );
            StageServer::on_demand(files, load_options, params)
        }
    };
    use std::io::Write;
    std::io::stdout().flush()?;
    let stop = StopSignal::install()?;
    server.serve(&listener, stop.flag())?;
    Ok(())
}

/// What this stage tells a planning coordinator: flags, else measured (CPU) or refused (GPU).
fn offer(args: &StageArgs) -> Result<StageOffer> {
    let on_cpu = args.model.device == DeviceChoice::Cpu;
    let memory_bytes = match (&args.memory, on_cpu) {
        (Some(text), _) => crate::commands::serve::parse_bytes(text)?,
        (None, true) => hearth_cluster::available_memory_bytes().context("could not read MemAvailable (pass --memory)")?,
        (None, false) => bail!("on a GPU give --memory (what the stage may use for weights and KV)"),
    };
    let bandwidth_bytes_per_s = match (args.memory_bandwidth_gbps, on_cpu) {
        (Some(gbps), _) if gbps.is_finite() && gbps > 0.0 => gbps * 1e9,
        (Some(gbps), _) => bail!("--memory-bandwidth-gbps must be a positive number, got {gbps}"),
        (None, true) => measure_memory_bandwidth(&MemoryBandwidthParams::default())?.bytes_per_s,
        (None, false) => bail!("on a GPU give --memory-bandwidth-gbps (a host copy says nothing about GPU memory)"),
    };
    let num_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let flops_per_s = match args.tflops {
        Some(tflops) if tflops.is_finite() && tflops > 0.0 => tflops * 1e12,
        Some(tflops) => bail!("--tflops must be a positive number, got {tflops}"),
        None => crate::commands::plan::this_machine::CPU_FLOPS_PER_CORE * num_cores as f64,
    };
    Ok(StageOffer { memory_bytes, bandwidth_bytes_per_s, flops_per_s })
}

/// Parses `START..END` (END exclusive).
pub fn parse_layers(text: &str) -> Result<Range<usize>> {
    let Some((start, end)) = text.trim().split_once("..") else {
        bail!("layers `{text}`: expected START..END, e.g. 0..12");
    };
    let parse = |part: &str| part.trim().parse::<usize>().with_context(|| format!("layers `{text}`: `{part}` is not a layer number"));
    let (start, end) = (parse(start)?, parse(end)?);
    if start > end {
        bail!("layers `{text}`: the start is after the end");
    }
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::parse_layers;

    #[test]
    fn layer_ranges_parse_and_nonsense_is_explained() {
        assert_eq!(parse_layers("0..12").unwrap(), 0..12);
        assert_eq!(parse_layers(" 4..6 ").unwrap(), 4..6);
        assert!(parse_layers("3").unwrap_err().to_string().contains("START..END"));
        assert!(parse_layers("a..3").unwrap_err().to_string().contains("`a` is not a layer number"));
        assert!(parse_layers("5..2").unwrap_err().to_string().contains("start is after the end"));
    }
}
