//! `hearth serve --stages …`: the coordinator's side of pipeline serving — parse the stage list,
//! size the KV pool for the largest stage, load the stages that run in this process, connect
//! the remote ones (`hearth stage`) and build the `PipelineExecutor`.
//!
//! Owns: the `--stages` syntax (`host:port=START..END` or `local=START..END`, comma-separated,
//! in layer order) and the pipeline's KV budget rule (`--kv-memory` is per stage: the pool is
//! sized so the stage with the most layers fits it; every stage allocates the same block count,
//! and a remote stage refuses a pool over its own `--kv-memory`). Does not own: the protocol or
//! the executor (`hearth-pipeline`).

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hearth_cluster::{resolve_address, ConnectionTiming, Dialer, HandshakeConfig, NodeId, VersionInfo};
use hearth_engine::serve::KvPoolPlan;
use hearth_models::{ModelConfig, ModelFiles, PipelineStage};
use hearth_pipeline::{PipelineExecutor, PipelineParams, PipelineTiming, PoolShape, StageLocation};

use crate::commands::cluster::KeyArgs;
use crate::commands::stage::{parse_layers, DEFAULT_STAGE_PORT};
use crate::open::ModelArgs;

/// Where one stage of `--stages` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagePlace {
    Local,
    Remote(SocketAddr),
}

/// Parses `--stages`: `host:port=START..END` or `local=START..END` per entry.
pub fn parse_stages(entries: &[String]) -> Result<Vec<(StagePlace, Range<usize>)>> {
    entries
        .iter()
        .map(|entry| {
            let Some((place, layers)) = entry.trim().rsplit_once('=') else {
                bail!("--stages `{entry}`: expected host:port=START..END or local=START..END");
            };
            let layers = parse_layers(layers).with_context(|| format!("--stages `{entry}`"))?;
            let place = match place.trim() {
                "local" => StagePlace::Local,
                address => StagePlace::Remote(
                    resolve_address(address, DEFAULT_STAGE_PORT)?
                        .into_iter()
                        .next()
                        .with_context(|| format!("--stages `{entry}`: {address} resolved to no address"))?,
                ),
            };
            Ok((place, layers))
        })
        .collect()
}

/// What `hearth serve` and `hearth bench` need to open a pipeline.
pub struct PipelineArgs<'a> {
    /// `--stages` entries.
    pub stages: &'a [String],
    pub key: &'a KeyArgs,
    pub model: &'a ModelArgs,
    pub files: &'a ModelFiles,
    pub silence_timeout: Duration,
}

/// `--stages`, parsed and checked against the model's layers.
pub fn stage_list(args: &PipelineArgs) -> Result<Vec<(StagePlace, Range<usize>)>> {
    let stages = parse_stages(args.stages)?;
    hearth_pipeline::check_contiguous(stages.iter().map(|(_, layers)| layers.clone()), args.files.config.num_layers)?;
    Ok(stages)
}

/// The coordinator's side of the handshake: the cluster key, a fresh random node id (see
/// `commands/stage.rs` for why).
pub fn dialer(key: &KeyArgs) -> Result<Dialer> {
    let key = key.required_key().context("pipeline stages are reached over authenticated cluster connections")?;
    Ok(Dialer {
        identity: HandshakeConfig { key, node_id: NodeId::random(), version: VersionInfo::current(), timeout: ConnectionTiming::default().handshake_timeout },
        timing: ConnectionTiming::default(),
        listen_port: None,
    })
}

/// Loads the local stages of `--stages`, connects the remote ones with `pool`, and builds the
/// executor.
pub fn open_pipeline(args: &PipelineArgs, pool: PoolShape) -> Result<PipelineExecutor> {
    let stages = stage_list(args)?;
    let (_, load_options) = args.model.device_and_load_options()?;
    let dialer = dialer(args.key)?;
    let mut locations = Vec::with_capacity(stages.len());
    for (place, layers) in stages {
        let location = match place {
            StagePlace::Local => StageLocation::Local(Box::new(
                PipelineStage::load(args.files, layers.clone(), &load_options)
                    .with_context(|| format!("loading layers {}..{}", layers.start, layers.end))?,
            )),
            StagePlace::Remote(address) => StageLocation::Remote(address),
        };
        locations.push((layers, location));
    }
    connect_locations(args, locations, pool, &dialer)
}

/// Builds the executor over stages whose places are decided (given or planned).
pub fn connect_locations(
    args: &PipelineArgs,
    locations: Vec<(Range<usize>, StageLocation)>,
    pool: PoolShape,
    dialer: &Dialer,
) -> Result<PipelineExecutor> {
    for (stage_idx, (layers, location)) in locations.iter().enumerate() {
        let place = match location {
            StageLocation::Local(_) => "in this process".to_string(),
            StageLocation::Remote(address) => format!("at {address}"),
            StageLocation::Connected(remote) => format!("at {}", remote.name().address.as_deref().unwrap_or("?")),
        };
        eprintln!("pipeline stage {stage_idx}: layers {}..{} {place}", layers.start, layers.end);
    }
    let device = args.model.device_and_load_options()?.0.device;
    Ok(PipelineExecutor::connect(PipelineParams {
        config: &args.files.config,
        stages: locations,
        pool,
        dialer,
        timing: PipelineTiming { silence_timeout: args.silence_timeout },
        device,
    })?)
}

/// A pool whose blocks fit `budget` (default: a quarter of available memory) on a stage of
/// `max_stage_layers` layers (the largest).
pub fn pool_for_largest_stage(
    config: &ModelConfig,
    max_stage_layers: usize,
    budget: Option<u64>,
    kv_element_bytes: usize,
    block_size: usize,
) -> Result<KvPoolPlan> {
    let per_layer_token = (config.kv_bytes_per_token(kv_element_bytes) / config.num_layers.max(1)) as u64;
    let budget = match budget {
        Some(bytes) => bytes,
        None => hearth_cluster::available_memory_bytes().context("could not read MemAvailable (pass --kv-memory instead)")? / 4,
    };
    Ok(KvPoolPlan::for_budget(budget, per_layer_token * max_stage_layers.max(1) as u64, block_size)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_lists_parse_and_bad_entries_say_which() {
        let stages = parse_stages(&["local=0..4".into(), "127.0.0.1:7651=4..8".into(), "127.0.0.1=8..9".into()]).unwrap();
        assert_eq!(stages[0], (StagePlace::Local, 0..4));
        assert_eq!(stages[1], (StagePlace::Remote("127.0.0.1:7651".parse().unwrap()), 4..8));
        assert_eq!(stages[2], (StagePlace::Remote("127.0.0.1:7650".parse().unwrap()), 8..9));
        let message = format!("{:#}", parse_stages(&["127.0.0.1:7651".into()]).unwrap_err());
        assert!(message.contains("expected host:port=START..END"), "{message}");
        let message = format!("{:#}", parse_stages(&["local=4".into()]).unwrap_err());
        assert!(message.contains("--stages `local=4`"), "{message}");
    }
}
