//! `PipelineExecutor`: the engine's `Executor` over pipeline stages. Like `LocalExecutor` it
//! turns a plan into sequence inputs and samples with `RequestSamplers`; in between, the step
//! runs stage by stage.
//!
//! Topology: a star. The coordinator sends each stage the step (sequence inputs) plus the
//! previous stage's hidden state and gets the stage's output back; any stage may also run in
//! this process (`StageRunner::Local`, e.g. stage 0 on the coordinator's own device). Stages
//! never talk to each other, so a failure is always observed on the one connection of the
//! stage at fault, and stages need no addresses of their peers. The price is one extra hop
//! per stage boundary (a hidden state is `num_tokens x hidden x 4` bytes: 8 KiB per decode
//! token of a 2048-wide model) — a chain (stage to stage) would halve that traffic.
//!
//! Owns: the stages in order, the samplers, step ids. Does not own: the scheduler or block
//! bookkeeping (the engine loop's), model math (`hearth-models`).
//!
//! Invariants: the stages' layer ranges are contiguous from 0 to `num_layers` (checked at
//! construction); every stage's KV pool has the scheduler's shape; a step that fails on any
//! stage returns an error naming it and no tokens are sampled for that step; a stage whose
//! connection broke is dialed again before the next step, and if it answers (empty) the KV
//! generation advances (the engine then fails every live request and forgets cached blocks).

use std::net::SocketAddr;
use std::ops::Range;

use candle_core::{Device, Tensor};
use hearth_cluster::Dialer;
use hearth_engine::serve::{sequence_inputs, Executor, RequestSamplers, SampledOutput, SamplingSetup};
use hearth_models::{ForwardBatch, ModelConfig, PagedKvCache, PipelineStage, SequenceInput, StageInput, StageOutput};
use hearth_scheduler::{RequestId, StepPlan};

use crate::error::{PipelineError, Result, StageName};
use crate::remote_stage::{PipelineTiming, PoolShape, RemoteStage};
use crate::wire::OutputKind;

/// A stage running in this process, with its KV pool.
pub struct LocalStage {
    pub(crate) stage: PipelineStage,
    pub(crate) kv_cache: PagedKvCache,
}

impl LocalStage {
    pub fn new(stage: PipelineStage, pool: PoolShape, device: &Device) -> Result<Self> {
        let kv_cache = stage.new_kv_cache(pool.num_blocks, pool.block_size, stage.dtype(), device)?;
        Ok(Self { stage, kv_cache })
    }
}

pub enum StageRunner {
    Local(LocalStage),
    Remote(RemoteStage),
}

/// Where one stage of a placement runs.
pub enum StageLocation {
    /// Loaded in this process.
    Local(Box<PipelineStage>),
    /// Served by `hearth stage` at this address.
    Remote(SocketAddr),
    /// A stage already dialed (and described) by a planning coordinator.
    Connected(Box<RemoteStage>),
}

/// Everything needed to open a pipeline.
pub struct PipelineParams<'a> {
    pub config: &'a ModelConfig,
    /// Stages in layer order.
    pub stages: Vec<(Range<usize>, StageLocation)>,
    pub pool: PoolShape,
    pub dialer: &'a Dialer,
    pub timing: PipelineTiming,
    /// Where local stages compute and where logits land.
    pub device: Device,
}

pub struct PipelineExecutor {
    stages: Vec<StageRunner>,
    names: Vec<StageName>,
    samplers: RequestSamplers,
    device: Device,
    pool: PoolShape,
    next_step_id: u64,
    /// For dialing a broken stage again.
    dialer: Dialer,
    config: ModelConfig,
    timing: PipelineTiming,
    /// Advances when a stage came back with an empty KV pool (`Executor::kv_generation`).
    kv_generation: u64,
}

impl PipelineExecutor {
    /// Connects every remote stage (checking each serves its layers of this model) and builds
    /// local ones.
    pub fn connect(params: PipelineParams) -> Result<Self> {
        check_contiguous(params.stages.iter().map(|(layers, _)| layers.clone()), params.config.num_layers)?;
        let mut stages = Vec::with_capacity(params.stages.len());
        let mut names = Vec::with_capacity(params.stages.len());
        for (stage_idx, (layers, location)) in params.stages.into_iter().enumerate() {
            let (runner, address) = match location {
                StageLocation::Local(stage) => {
                    if stage.layers != layers {
                        return Err(PipelineError::Config(format!(
                            "stage {stage_idx} should run layers {layers:?}, the loaded stage has {:?}",
                            stage.layers
                        )));
                    }
                    (StageRunner::Local(LocalStage::new(*stage, params.pool, &params.device)?), None)
                }
                StageLocation::Remote(address) => {
                    let name = StageName { stage_idx, layers: layers.clone(), address: Some(address.to_string()) };
                    let remote = RemoteStage::connect(params.dialer, address, name, params.config, params.pool, params.timing)?;
                    (StageRunner::Remote(remote), Some(address.to_string()))
                }
                StageLocation::Connected(mut remote) => {
                    remote.set_stage_idx(stage_idx);
                    remote.open(layers.clone(), params.config, params.pool)?;
                    let address = remote.name().address.clone();
                    (StageRunner::Remote(*remote), address)
                }
            };
            stages.push(runner);
            names.push(StageName { stage_idx, layers, address });
        }
        Ok(Self {
            stages,
            names,
            samplers: RequestSamplers::default(),
            device: params.device,
            pool: params.pool,
            next_step_id: 1,
            dialer: params.dialer.clone(),
            config: params.config.clone(),
            timing: params.timing,
            kv_generation: 0,
        })
    }

    /// The stages in order, for status lines.
    pub fn stage_names(&self) -> &[StageName] {
        &self.names
    }

    /// Runs one step through every stage. F32 logits `[num_logit_rows, vocab]`.
    pub fn forward(&mut self, inputs: &[SequenceInput]) -> Result<Tensor> {
        self.reconnect_broken_stages()?;
        let step_id = self.next_step_id;
        self.next_step_id += 1;
        let batch = ForwardBatch::new(inputs, self.pool.block_size, &self.device)?;
        let num_stages = self.stages.len();
        let mut hidden: Option<Tensor> = None;
        for (stage_idx, runner) in self.stages.iter_mut().enumerate() {
            let is_last = stage_idx + 1 == num_stages;
            let name = &self.names[stage_idx];
            let (kind, tensor) = match runner {
                StageRunner::Local(local) => {
                    let hidden = hidden.as_ref().map(|h| h.to_dtype(local.stage.dtype())).transpose()?;
                    let input = match &hidden {
                        Some(h) => StageInput::Hidden(h),
                        None => StageInput::TokenIds,
                    };
                    let output = local
                        .stage
                        .forward(input, &batch, &local.kv_cache)
                        .map_err(|err| PipelineError::Stage { stage: name.clone(), reason: err.to_string() })?;
                    match output {
                        StageOutput::Hidden(h) => (OutputKind::Hidden, h),
                        StageOutput::Logits(l) => (OutputKind::Logits, l),
                    }
                }
                StageRunner::Remote(remote) => remote.run(step_id, inputs, hidden.as_ref(), &self.device)?,
            };
            match (kind, is_last) {
                (OutputKind::Logits, true) => return Ok(tensor),
                (OutputKind::Hidden, false) => hidden = Some(tensor),
                (kind, _) => {
                    return Err(PipelineError::Stage {
                        stage: name.clone(),
                        reason: format!("returned {kind:?} output, which does not fit its place in the pipeline"),
                    })
                }
            }
        }
        Err(PipelineError::Config("a pipeline without stages".into()))
    }
}

impl PipelineExecutor {
    /// Dials each stage whose connection broke again (one try, bounded by the connect and
    /// handshake timeouts). A stage that answers has lost its K/V: the KV generation advances
    /// and this step fails, so the engine fails every live request; later steps run normally.
    /// A stage that does not answer fails the step naming it and both errors.
    fn reconnect_broken_stages(&mut self) -> Result<()> {
        for (stage_idx, runner) in self.stages.iter_mut().enumerate() {
            let StageRunner::Remote(remote) = runner else { continue };
            let Some(earlier) = remote.failure().map(str::to_string) else { continue };
            let name = self.names[stage_idx].clone();
            let fresh = RemoteStage::connect(&self.dialer, remote.address(), name.clone(), &self.config, self.pool, self.timing);
            return Err(match fresh {
                Ok(fresh) => {
                    *remote = fresh;
                    self.kv_generation += 1;
                    tracing::warn!("{name} is back after a failure ({earlier}); its KV cache starts empty");
                    PipelineError::Stage {
                        stage: name,
                        reason: format!(
                            "reconnected after a failure ({earlier}); its KV cache starts empty, so running requests fail (new requests run normally)"
                        ),
                    }
                }
                Err(err) => PipelineError::Stage {
                    stage: name,
                    reason: format!("unavailable after an earlier failure ({earlier}); reconnecting failed: {err}"),
                },
            });
        }
        Ok(())
    }
}

impl Executor for PipelineExecutor {
    fn add_request(&mut self, id: RequestId, setup: SamplingSetup) -> hearth_engine::Result<()> {
        self.samplers.add(id, setup)
    }

    fn remove_request(&mut self, id: RequestId) {
        self.samplers.remove(id);
    }

    fn execute(&mut self, plan: &StepPlan) -> hearth_engine::Result<Vec<SampledOutput>> {
        // [num_sampling_requests, vocab]
        let logits = self.forward(&sequence_inputs(plan))?;
        self.samplers.sample(plan, &logits)
    }

    fn kv_generation(&self) -> u64 {
        self.kv_generation
    }
}

/// Fails unless `ranges` tile `0..num_layers` in order, with no empty stage at either end.
pub fn check_contiguous(ranges: impl Iterator<Item = Range<usize>>, num_layers: usize) -> Result<()> {
    let ranges: Vec<Range<usize>> = ranges.collect();
    let describe = || ranges.iter().map(|r| format!("{}..{}", r.start, r.end)).collect::<Vec<_>>().join(", ");
    if ranges.is_empty() {
        return Err(PipelineError::Config("a pipeline needs at least one stage".into()));
    }
    let mut next = 0;
    for range in &ranges {
        if range.start != next || range.end < range.start {
            return Err(PipelineError::Config(format!(
                "stage layers [{}] must be contiguous from 0 to {num_layers}",
                describe()
            )));
        }
        next = range.end;
    }
    if next != num_layers {
        return Err(PipelineError::Config(format!("stage layers [{}] cover {next} of the model's {num_layers} layers", describe())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_ranges_must_tile_the_model_in_order() {
        assert!(check_contiguous([0..2, 2..5, 5..6].into_iter(), 6).is_ok());
        let gap = check_contiguous([0..2, 3..6].into_iter(), 6).unwrap_err().to_string();
        assert!(gap.contains("0..2, 3..6") && gap.contains("contiguous"), "{gap}");
        let short = check_contiguous([0..2, 2..4].into_iter(), 6).unwrap_err().to_string();
        assert!(short.contains("cover 4 of the model's 6 layers"), "{short}");
        assert!(check_contiguous(std::iter::empty(), 6).is_err());
    }
}
