//! `hearth serve --pipeline-peers a:7650,b:7650`: the planner decides the stages. Each peer is a
//! `hearth stage` started without `--layers`; the coordinator asks what it offers (memory,
//! memory bandwidth, compute) and times those round trips (the link latency), adds itself as a
//! node (unless `--coordinator-memory 0`), runs `hearth_planner::plan` on the model's tensor
//! headers, loads its own stage if the plan gives it one and tells each used peer its layers.
//! The same `PeerPlanner` places the model again when a stage is gone (`crate::replan`): then
//! the stages still connected are described over their connections, every other listed peer is
//! dialed again (one that was down at start or came back is used), and this process keeps its
//! loaded layers when the new plan gives it the same range.
//!
//! Owns: turning stage offers into planner nodes and links, and the plan into stage places.
//! Does not own: the planner's rules (a split predicted slower than the best single node that
//! fits is refused there), the protocol (`hearth-pipeline`), when to re-plan (its executor).
//!
//! Also `hearth serve --prefill-node host:port` (split prefill/decode): the whole model here
//! decodes, the peer computes fresh prompts from the length at which the planner predicts the
//! K/V transfer costs less than the compute it saves (`decide_prefill_split`), unless
//! `--prefill-min-tokens` says.
//!
//! Limits: the planner models direct stage-to-stage hops; the executor relays every hidden
//! state through the coordinator (see `hearth_pipeline`'s executor docs). Links between two
//! peers are taken to be the coordinator's default link (`--link`, else 10 GbE). A peer that
//! does not answer is left out of the plan (and tried again at the next re-plan); a peer the
//! plan does not use is disconnected (it keeps its last layers loaded until asked for others).
//! The coordinator's offer (memory, bandwidth) is measured once, at start. Peers are the listed
//! addresses only: nodes found through cluster membership are not planned over.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hearth_cluster::{resolve_address, Dialer};
use hearth_models::{LoadOptions, ModelConfig, ModelFiles, PipelineStage};
use hearth_pipeline::{
    HeldStages, PipelineTiming, PoolShape, RemoteStage, SplitExecutor, SplitParams, StageLocation, StageName, StageResources,
};
use hearth_planner::units::parse_link;
use hearth_planner::{decide_prefill_split, Cluster, Link, ModelShape, NodeId, NodeSpec, PairLink, Plan, PlanOptions};

use crate::commands::plan::shape::{self, ModelSource, Target};
use crate::commands::plan::this_machine;
use crate::commands::stage::DEFAULT_STAGE_PORT;
use crate::device::DeviceChoice;
use crate::open::open_files;
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
    /// One line per fact: placement, prediction, the planner's reasons, peers left out.
    pub summary: Vec<String>,
}

struct Peer {
    address: SocketAddr,
    remote: Option<RemoteStage>,
    resources: StageResources,
    /// Half the fastest describe round trip.
    latency_s: f64,
}

/// Places the model over this process and the listed peers that answer, at start and at every
/// re-plan. Owns what that needs (it moves into the executor as its `Replanner`).
pub struct PeerPlanner {
    files: ModelFiles,
    load_options: LoadOptions,
    shape: ModelShape,
    options: PlanOptions,
    peers: Vec<SocketAddr>,
    /// This process as a node; `None` with `--coordinator-memory 0`.
    coordinator: Option<NodeSpec>,
    /// `--link`; `None`: 10 GbE with each peer's measured latency.
    link: Option<Link>,
    pub dialer: Dialer,
    timing: PipelineTiming,
}

impl PeerPlanner {
    /// Resolves the peers, measures this machine and reads the model's shape (once).
    pub fn new(args: &PlanningArgs) -> Result<Self> {
        let mut peers = Vec::with_capacity(args.peers.len());
        for text in args.peers {
            let address = resolve_address(text, DEFAULT_STAGE_PORT)?
                .into_iter()
                .next()
                .with_context(|| format!("--pipeline-peers `{text}` resolved to no address"))?;
            peers.push(address);
        }
        let coordinator_memory = match args.coordinator_memory {
            Some(bytes) => bytes,
            None => hearth_cluster::available_memory_bytes().context("could not read MemAvailable (pass --coordinator-memory)")?,
        };
        let coordinator = match coordinator_memory {
            0 => None,
            memory_bytes => {
                let machine = this_machine::describe().context("measuring this machine for the plan")?;
                Some(NodeSpec { name: "coordinator".into(), memory_bytes, ..machine.node })
            }
        };
        let source = model_source(args.pipeline, args.model_path)?;
        let context_tokens = source.context_length.min(MAX_PLANNED_CONTEXT);
        let options = PlanOptions {
            context_tokens,
            concurrent_sequences: 1,
            prompt_tokens: PLANNED_PROMPT_TOKENS.min(context_tokens),
            ..PlanOptions::default()
        };
        Ok(Self {
            files: open_files(args.model_path)?,
            load_options: args.pipeline.model.device_and_load_options()?.1,
            shape: source.shape,
            options,
            peers,
            coordinator,
            link: args.link.map(parse_link).transpose()?,
            dialer: pipeline::dialer(args.pipeline.key)?,
            timing: PipelineTiming { silence_timeout: args.pipeline.silence_timeout },
        })
    }

    /// Plans over this process and the peers that answer now (`held`: stages still connected
    /// and this process's loaded stage, reused where the plan keeps them).
    pub fn place(&mut self, held: HeldStages) -> Result<PlannedPipeline> {
        let mut summary = Vec::new();
        let mut peers = self.gather_peers(held.remotes, &mut summary)?;
        let plan = match plan_over(&self.shape, &self.options, self.coordinator.as_ref(), &peers, self.link) {
            Ok(plan) => plan,
            Err(err) if summary.is_empty() => return Err(err),
            Err(err) => return Err(err.context(summary.join("; "))),
        };
        let mut local = held.local;
        let mut locations = Vec::new();
        for stage in plan.placement.stages() {
            let layers = stage.layers.clone();
            let peer_idx = stage.node.0.checked_sub(usize::from(self.coordinator.is_some()));
            let location = match peer_idx {
                None => StageLocation::Local(Box::new(match local.take() {
                    Some(loaded) if loaded.layers == layers => loaded,
                    _ => PipelineStage::load(&self.files, layers.clone(), &self.load_options)
                        .with_context(|| format!("loading layers {}..{}", layers.start, layers.end))?,
                })),
                Some(peer_idx) => {
                    let peer = &mut peers[peer_idx];
                    let remote = peer.remote.take().with_context(|| format!("the plan uses {} twice", peer.address))?;
                    StageLocation::Connected(Box::new(remote))
                }
            };
            locations.push((layers, location));
        }
        summary.insert(
            0,
            format!(
                "plan: {} predicted {:.1} tok/s generating, TTFT {:.1} ms for a {}-token prompt",
                plan.placement.describe(),
                plan.prediction.tokens_per_second,
                plan.prediction.ttft_seconds * 1e3,
                plan.prediction.prompt_tokens
            ),
        );
        summary.extend(plan.notes.iter().map(|note| format!("plan: {note}")));
        summary.extend(peers.iter().filter(|p| p.remote.is_some()).map(|p| format!("plan: {} holds no layers (disconnected)", p.address)));
        Ok(PlannedPipeline { locations, summary })
    }

    /// Describes every listed peer: over its connection when `held` has one, else dialed
    /// afresh. A peer that does not answer is left out (with a line in `summary`); one that
    /// answers but cannot be planned over (fixed layers, another model) is an error.
    fn gather_peers(&self, mut held: Vec<RemoteStage>, summary: &mut Vec<String>) -> Result<Vec<Peer>> {
        let config = &self.files.config;
        let mut peers = Vec::with_capacity(self.peers.len());
        for (peer_idx, &address) in self.peers.iter().enumerate() {
            let connected = held.iter().position(|remote| remote.address() == address).map(|idx| held.swap_remove(idx));
            let described = match connected {
                Some(remote) => describe_remote(remote),
                None => describe_peer(&self.dialer, address, peer_idx, self.timing),
            };
            match described {
                Ok(peer) => {
                    check_peer(&peer, config)?;
                    peers.push(peer);
                }
                Err(err) => summary.push(format!("plan: {address} does not answer, left out: {err:#}")),
            }
        }
        Ok(peers)
    }
}

/// The model's shape as the planner sees it, for the device this process computes on.
fn model_source(pipeline: &PipelineArgs, model_path: &Path) -> Result<ModelSource> {
    let target = match pipeline.model.device {
        DeviceChoice::Cpu => Target::ThisMachineCpu,
        _ => Target::Accelerator,
    };
    shape::from_file(model_path, pipeline.files.config.arch.name().to_string(), target)
}

/// Fails unless `peer` can take any layers of the model `config` describes.
fn check_peer(peer: &Peer, config: &ModelConfig) -> Result<()> {
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
    Ok(())
}

/// The plan over `coordinator` (node 0 when present) and `peers` (the next nodes, in order),
/// joined by `link` (default: 10 GbE with each peer's measured latency to the coordinator).
/// The planner's refusal says why nothing fits.
fn plan_over(shape: &ModelShape, options: &PlanOptions, coordinator: Option<&NodeSpec>, peers: &[Peer], link: Option<Link>) -> Result<Plan> {
    let mut nodes: Vec<NodeSpec> = coordinator.cloned().into_iter().collect();
    nodes.extend(peers.iter().map(|peer| {
        let r = &peer.resources;
        NodeSpec {
            name: peer.address.to_string(),
            memory_bytes: r.memory_bytes,
            bandwidth_bytes_per_s: r.bandwidth_bytes_per_s,
            flops_per_s: r.flops_per_s,
            power_watts: None,
        }
    }));
    if nodes.is_empty() {
        bail!("no node to plan over: no listed peer answers and this process offers no memory (--coordinator-memory 0)");
    }
    let mut cluster = Cluster::new(nodes, link.unwrap_or(Link::TEN_GIGABIT_ETHERNET));
    if link.is_none() && coordinator.is_some() {
        for (peer_idx, peer) in peers.iter().enumerate() {
            let link = Link { latency_s: peer.latency_s, ..Link::TEN_GIGABIT_ETHERNET };
            cluster.links.push(PairLink { a: NodeId(0), b: NodeId(peer_idx + 1), link });
        }
    }
    hearth_planner::plan(shape, &cluster, options).context("planning the pipeline")
}

/// Connects to a peer stage and asks what it offers, timing the round trips.
fn describe_peer(dialer: &Dialer, address: SocketAddr, peer_idx: usize, timing: PipelineTiming) -> Result<Peer> {
    let name = StageName { stage_idx: peer_idx, layers: 0..0, address: Some(address.to_string()) };
    describe_remote(RemoteStage::dial(dialer, address, name, timing)?)
}

/// Asks a connected stage what it offers, timing the round trips.
fn describe_remote(mut remote: RemoteStage) -> Result<Peer> {
    let started = Instant::now();
    let mut resources = remote.describe()?;
    let mut best_round_trip = started.elapsed().as_secs_f64();
    for _ in 1..NUM_PINGS {
        let started = Instant::now();
        resources = remote.describe()?;
        best_round_trip = best_round_trip.min(started.elapsed().as_secs_f64());
    }
    Ok(Peer { address: remote.address(), remote: Some(remote), resources, latency_s: best_round_trip / 2.0 })
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
    let source = model_source(args.pipeline, args.model_path)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer offering `mib` MiB at 10 GB/s, as a stage's `Describe` answer would.
    fn peer(port: u16, mib: u64) -> Peer {
        let resources = StageResources {
            memory_bytes: mib << 20,
            bandwidth_bytes_per_s: 10e9,
            flops_per_s: 1e12,
            num_layers: 6,
            hidden_size: 64,
            vocab_size: 256,
            fixed_layers: None,
        };
        Peer { address: SocketAddr::from(([127, 0, 0, 1], port)), remote: None, resources, latency_s: 1e-4 }
    }

    fn used_peers(plan: &Plan) -> Vec<usize> {
        plan.placement.stages().iter().map(|stage| stage.node.0).collect()
    }

    #[test]
    fn a_re_plan_places_the_model_over_the_peers_left_and_says_why_when_none_fit() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/gemma3/model.gguf");
        let source = shape::from_file(&path, "gemma3".into(), Target::ThisMachineCpu).unwrap();
        let context_tokens = source.context_length.min(MAX_PLANNED_CONTEXT);
        let options = PlanOptions { context_tokens, prompt_tokens: context_tokens, ..PlanOptions::default() };
        // The model needs ~2.6 MiB: no peer of 2 MiB holds it alone, any two do.
        let all = [peer(1, 2), peer(2, 2), peer(3, 2)];
        let plan = plan_over(&source.shape, &options, None, &all, None).unwrap();
        assert!(used_peers(&plan).len() >= 2, "{:?}", plan.placement);

        // One peer gone: the two left hold it.
        let two = [peer(1, 2), peer(3, 2)];
        let plan = plan_over(&source.shape, &options, None, &two, None).unwrap();
        assert_eq!(used_peers(&plan), [0, 1], "{:?}", plan.placement);

        // Two gone: the planner's refusal names what is missing.
        let message = format!("{:#}", plan_over(&source.shape, &options, None, &[peer(3, 2)], None).unwrap_err());
        assert!(message.contains("does not fit") && message.contains("127.0.0.1:3"), "{message}");

        // Nothing left at all (and this process offers nothing).
        let message = format!("{:#}", plan_over(&source.shape, &options, None, &[], None).unwrap_err());
        assert!(message.contains("no node to plan over"), "{message}");
    }
}
