//! `hearth serve --pipeline-peers a:7650,b:7650`: the planner decides the stages. Each peer is a
//! `hearth stage` started without `--layers`; the coordinator asks what it offers (memory,
//! memory bandwidth, compute) and times those round trips (the link latency), adds itself as a
//! node (unless `--coordinator-memory 0`), runs `hearth_planner::plan` on the model's tensor
//! headers, loads its own stage if the plan gives it one and tells each used peer its layers.
//!
//! Owns: turning stage offers into planner nodes and links, and the plan into stage places.
//! Does not own: the planner's rules (a split predicted slower than the best single node that
//! fits is refused there), the protocol (`hearth-pipeline`).
//!
//! Also `hearth serve --prefill-node host:port` (split prefill/decode): the whole model here
//! decodes, the peer computes fresh prompts from the length at which the planner predicts the
//! K/V transfer costs less than the compute it saves (`decide_prefill_split`), unless
//! `--prefill-min-tokens` says.
//!
//! Limits: the planner models direct stage-to-stage hops; the executor relays every hidden
//! state through the coordinator (see `hearth_pipeline`'s executor docs). Links between two
//! peers are taken to be the coordinator's default link (`--link`, else 10 GbE). A peer the
//! plan does not use is disconnected; nothing is re-planned after start.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hearth_cluster::{resolve_address, Dialer};
use hearth_models::PipelineStage;
use hearth_pipeline::{PipelineTiming, PoolShape, RemoteStage, SplitExecutor, SplitParams, StageLocation, StageName, StageResources};
use hearth_planner::units::parse_link;
use hearth_planner::{decide_prefill_split, Cluster, Link, NodeId, NodeSpec, PairLink, PlanOptions};

use crate::commands::plan::shape::{self, Target};
use crate::commands::plan::this_machine;
use crate::commands::stage::DEFAULT_STAGE_PORT;
use crate::device::DeviceChoice;
use crate::pipeline::{self, PipelineArgs};

/// Describe round trips per peer; the fastest gives the link latency.
const NUM_PINGS: usize = 3;
/// Context and prompt lengths the plan is made for, as `hearth plan` defaults them.
const MAX_PLANNED_CONTEXT: usize = 8192;
const PLANNED_PROMPT_TOKENS: usize = 512;

pub struct PlanningArgs<'a> {
    pub pipeline: &'a PipelineArgs<'a>,
    pub model_path: &'a Path,
    /// `--pipeline-peers` entries.
    pub peers: &'a [String],
    /// Memory this process offers for layers and KV; `Some(0)`: it holds no layers. Default:
    /// available memory.
    pub coordinator_memory: Option<u64>,
    /// `--link`: the link between any two nodes, instead of measured latencies.
    pub link: Option<&'a str>,
}

/// The plan's stages, ready for `pipeline::connect_locations`.
pub struct PlannedPipeline {
    pub locations: Vec<(Range<usize>, StageLocation)>,
    pub dialer: Dialer,
    /// One line per fact: placement, prediction, the planner's reasons.
    pub summary: Vec<String>,
}

struct Peer {
    address: SocketAddr,
    remote: Option<RemoteStage>,
    resources: StageResources,
    /// Half the fastest describe round trip.
    latency_s: f64,
}

pub fn plan_pipeline(args: &PlanningArgs) -> Result<PlannedPipeline> {
    let files = args.pipeline.files;
    let config = &files.config;
    let dialer = pipeline::dialer(args.pipeline.key)?;
    let timing = PipelineTiming { silence_timeout: args.pipeline.silence_timeout };
    let mut peers = Vec::with_capacity(args.peers.len());
    for (peer_idx, text) in args.peers.iter().enumerate() {
        let address = resolve_address(text, DEFAULT_STAGE_PORT)?
            .into_iter()
            .next()
            .with_context(|| format!("--pipeline-peers `{text}` resolved to no address"))?;
        peers.push(describe_peer(&dialer, address, peer_idx, timing)?);
    }
    for peer in &peers {
        let r = &peer.resources;
        if let Some((start, end)) = r.fixed_layers {
            bail!("{} was started with --layers {start}..{end}; a planned pipeline needs stages started without --layers", peer.address);
        }
        let theirs = (r.num_layers as usize, r.hidden_size as usize, r.vocab_size as usize);
        if theirs != (config.num_layers, config.hidden_size, config.vocab_size) {
            bail!(
                "{} holds a model of {} layers, hidden size {}, vocabulary {}; this one has {}, {}, {}",
                peer.address,
                theirs.0,
                theirs.1,
                theirs.2,
                config.num_layers,
                config.hidden_size,
                config.vocab_size
            );
        }
    }

    // Node 0 is this process unless it offers no memory; then the peers in order.
    let coordinator_memory = match args.coordinator_memory {
        Some(bytes) => bytes,
        None => hearth_cluster::available_memory_bytes().context("could not read MemAvailable (pass --coordinator-memory)")?,
    };
    let mut nodes = Vec::new();
    let mut node_peer: Vec<Option<usize>> = Vec::new();
    if coordinator_memory > 0 {
        let machine = this_machine::describe().context("measuring this machine for the plan")?;
        nodes.push(NodeSpec { name: "coordinator".into(), memory_bytes: coordinator_memory, ..machine.node });
        node_peer.push(None);
    }
    for (peer_idx, peer) in peers.iter().enumerate() {
        let r = &peer.resources;
        nodes.push(NodeSpec {
            name: peer.address.to_string(),
            memory_bytes: r.memory_bytes,
            bandwidth_bytes_per_s: r.bandwidth_bytes_per_s,
            flops_per_s: r.flops_per_s,
            power_watts: None,
        });
        node_peer.push(Some(peer_idx));
    }
    let default_link = match args.link {
        Some(text) => parse_link(text)?,
        None => Link::TEN_GIGABIT_ETHERNET,
    };
    let mut cluster = Cluster::new(nodes, default_link);
    if args.link.is_none() && coordinator_memory > 0 {
        for (node_idx, peer_idx) in node_peer.iter().enumerate() {
            if let Some(peer_idx) = peer_idx {
                let link = Link { latency_s: peers[*peer_idx].latency_s, ..default_link };
                cluster.links.push(PairLink { a: NodeId(0), b: NodeId(node_idx), link });
            }
        }
    }

    let target = match args.pipeline.model.device {
        DeviceChoice::Cpu => Target::ThisMachineCpu,
        _ => Target::Accelerator,
    };
    let source = shape::from_file(args.model_path, config.arch.name().to_string(), target)?;
    let context_tokens = source.context_length.min(MAX_PLANNED_CONTEXT);
    let options = PlanOptions {
        context_tokens,
        concurrent_sequences: 1,
        prompt_tokens: PLANNED_PROMPT_TOKENS.min(context_tokens),
        ..PlanOptions::default()
    };
    let plan = hearth_planner::plan(&source.shape, &cluster, &options).context("planning the pipeline")?;

    let (_, load_options) = args.pipeline.model.device_and_load_options()?;
    let mut locations = Vec::new();
    for stage in plan.placement.stages() {
        let location = match node_peer.get(stage.node.0).copied().flatten() {
            None => StageLocation::Local(Box::new(
                PipelineStage::load(files, stage.layers.clone(), &load_options)
                    .with_context(|| format!("loading layers {}..{}", stage.layers.start, stage.layers.end))?,
            )),
            Some(peer_idx) => {
                let remote = peers[peer_idx].remote.take().with_context(|| format!("the plan uses {} twice", peers[peer_idx].address))?;
                StageLocation::Connected(Box::new(remote))
            }
        };
        locations.push((stage.layers.clone(), location));
    }
    let mut summary = vec![format!(
        "plan: {} predicted {:.1} tok/s generating, TTFT {:.1} ms for a {}-token prompt",
        plan.placement.describe(),
        plan.prediction.tokens_per_second,
        plan.prediction.ttft_seconds * 1e3,
        plan.prediction.prompt_tokens
    )];
    summary.extend(plan.notes.iter().map(|note| format!("plan: {note}")));
    summary.extend(peers.iter().filter(|p| p.remote.is_some()).map(|p| format!("plan: {} holds no layers (disconnected)", p.address)));
    Ok(PlannedPipeline { locations, dialer, summary })
}

/// Connects to a peer stage and asks what it offers, timing the round trips.
fn describe_peer(dialer: &Dialer, address: SocketAddr, peer_idx: usize, timing: PipelineTiming) -> Result<Peer> {
    let name = StageName { stage_idx: peer_idx, layers: 0..0, address: Some(address.to_string()) };
    let mut remote = RemoteStage::dial(dialer, address, name, timing)?;
    let started = Instant::now();
    let mut resources = remote.describe()?;
    let mut best_round_trip = started.elapsed().as_secs_f64();
    for _ in 1..NUM_PINGS {
        let started = Instant::now();
        resources = remote.describe()?;
        best_round_trip = best_round_trip.min(started.elapsed().as_secs_f64());
    }
    Ok(Peer { address, remote: Some(remote), resources, latency_s: best_round_trip / 2.0 })
}

/// What `hearth serve --prefill-node` needs.
pub struct SplitArgs<'a> {
    pub pipeline: &'a PipelineArgs<'a>,
    pub model_path: &'a Path,
    /// `--prefill-node`.
    pub prefill_node: &'a str,
    /// `--prefill-min-tokens`; `None`: the planner's break-even.
    pub min_prefill_tokens: Option<usize>,
    pub link: Option<&'a str>,
}

/// The split executor, and lines saying what was decided.
pub fn open_split(args: &SplitArgs, pool: PoolShape) -> Result<(SplitExecutor, Vec<String>)> {
    let files = args.pipeline.files;
    let config = &files.config;
    let dialer = pipeline::dialer(args.pipeline.key)?;
    let timing = PipelineTiming { silence_timeout: args.pipeline.silence_timeout };
    let address = resolve_address(args.prefill_node, DEFAULT_STAGE_PORT)?
        .into_iter()
        .next()
        .with_context(|| format!("--prefill-node `{}` resolved to no address", args.prefill_node))?;
    let mut peer = describe_peer(&dialer, address, 0, timing)?;
    let mut summary = Vec::new();
    let min_prefill_tokens = match args.min_prefill_tokens {
        Some(tokens) => tokens,
        None => {
            let (tokens, line) = planned_break_even(args, &peer)?;
            summary.push(line);
            tokens
        }
    };
    let (_, load_options) = args.pipeline.model.device_and_load_options()?;
    let decode = PipelineStage::load(files, 0..config.num_layers, &load_options).context("loading the model for decoding")?;
    let prefill = peer.remote.take().context("the prefill node's connection")?;
    let device = args.pipeline.model.device_and_load_options()?.0.device;
    let split = SplitExecutor::connect(SplitParams { decode, prefill, config, pool, device, min_prefill_tokens })?;
    summary.push(match min_prefill_tokens {
        usize::MAX => format!("split prefill/decode: every prompt is computed here ({address} stays connected, unused)"),
        tokens => format!("split prefill/decode: prompts of {tokens}+ tokens with nothing cached are computed at {address}"),
    });
    Ok((split, summary))
}

/// The shortest prompt the planner predicts is faster prefilled on the peer (transfer
/// included) than here; `usize::MAX` when none is.
fn planned_break_even(args: &SplitArgs, peer: &Peer) -> Result<(usize, String)> {
    let r = &peer.resources;
    if r.bandwidth_bytes_per_s <= 0.0 || r.flops_per_s <= 0.0 {
        bail!(
            "{} offers no measurements (started with --layers): give --prefill-min-tokens, or start it without --layers",
            peer.address
        );
    }
    let machine = this_machine::describe().context("measuring this machine for the plan")?;
    let nodes = vec![
        machine.node,
        NodeSpec {
            name: peer.address.to_string(),
            memory_bytes: r.memory_bytes,
            bandwidth_bytes_per_s: r.bandwidth_bytes_per_s,
            flops_per_s: r.flops_per_s,
            power_watts: None,
        },
    ];
    let link = match args.link {
        Some(text) => parse_link(text)?,
        None => Link { latency_s: peer.latency_s, ..Link::TEN_GIGABIT_ETHERNET },
    };
    let cluster = Cluster::new(nodes, link);
    let config = &args.pipeline.files.config;
    let target = match args.pipeline.model.device {
        DeviceChoice::Cpu => Target::ThisMachineCpu,
        _ => Target::Accelerator,
    };
    let source = shape::from_file(args.model_path, config.arch.name().to_string(), target)?;
    let max_prompt = source.context_length.min(MAX_PLANNED_CONTEXT);
    let pays_off = |prompt_tokens: usize| -> Result<bool> {
        let options = PlanOptions { context_tokens: max_prompt, concurrent_sequences: 1, prompt_tokens, ..PlanOptions::default() };
        Ok(decide_prefill_split(&source.shape, &cluster, &options, NodeId(1), NodeId(0))?.use_split())
    };
    // Compute saved and bytes moved both grow with the prompt: the first length that pays off.
    if !pays_off(max_prompt)? {
        return Ok((usize::MAX, format!("plan: prefill on {} never pays off here (up to {max_prompt} tokens): prompts stay local", peer.address)));
    }
    let (mut low, mut high) = (1, max_prompt);
    while low < high {
        let mid = (low + high) / 2;
        if pays_off(mid)? {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    Ok((low, format!("plan: prefill on {} pays off from {low} prompt tokens", peer.address)))
}
