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
//! Steps in flight (`in_flight`): the engine may submit up to `max_steps_in_flight` steps
//! (default: one per stage; `set_max_steps_in_flight` caps it, 1 = one step at a time); each
//! stage computes one of them at a time, so different stages compute different steps at once.
//!
//! Invariants: the stages' layer ranges are contiguous from 0 to `num_layers` (checked at
//! construction); every stage's KV pool has the scheduler's shape; a step that fails on any
//! stage returns an error naming it and no tokens are sampled for that step; a stage whose
//! connection broke is dialed again before the next step started while no step is in flight
//! (with steps in flight, new steps fail at once naming it until they drained), and if it
//! answers (empty) the KV generation advances (the engine then fails every live request and
//! forgets cached blocks); `forward`/`execute` run one step alone and refuse to start while
//! steps submitted with `submit` are in flight.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;

use candle_core::{Device, Tensor};
use hearth_cluster::Dialer;
use hearth_engine::serve::{sequence_inputs, Executor, RequestSamplers, SampledOutput, SamplingSetup, Submitted};
use hearth_models::{ModelConfig, PagedKvCache, PipelineStage, SequenceInput};
use hearth_scheduler::{RequestId, StepPlan};

use crate::error::{PipelineError, Result, StageName};
use crate::remote_stage::{PipelineTiming, PoolShape, RemoteStage};

mod in_flight;
mod replan;
pub use replan::{HeldStages, Replanner, RETRY_INTERVAL};

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
    /// Re-planning around gone stages (`replan`); `None`: a given placement.
    replan: Option<replan::ReplanState>,
    /// Steps started and not yet finished, oldest first (`in_flight`).
    in_flight: VecDeque<in_flight::StepInFlight>,
    /// The plans of the steps `submit` started, oldest first (for sampling).
    plans: VecDeque<StepPlan>,
    /// Most steps in flight, if capped below the number of stages.
    max_steps_in_flight: Option<usize>,
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
            replan: None,
            in_flight: VecDeque::new(),
            plans: VecDeque::new(),
            max_steps_in_flight: None,
        })
    }

    /// Caps the steps in flight (`hearth serve --pipeline-depth`): 1 runs one step at a time;
    /// the default and the most useful is one per stage.
    pub fn set_max_steps_in_flight(&mut self, max_steps_in_flight: usize) {
        self.max_steps_in_flight = Some(max_steps_in_flight.max(1));
    }

    /// The stages in order, for status lines.
    pub fn stage_names(&self) -> &[StageName] {
        &self.names
    }

    /// Runs one step through every stage, alone. F32 logits `[num_logit_rows, vocab]`.
    pub fn forward(&mut self, inputs: &[SequenceInput]) -> Result<Tensor> {
        if !self.in_flight.is_empty() {
            return Err(PipelineError::Config(format!("a step cannot run alone while {} steps are in flight", self.in_flight.len())));
        }
        self.start_step(inputs.to_vec())?;
        self.finish_oldest()
    }
}

impl PipelineExecutor {
    /// Dials each stage whose connection broke again (one try, bounded by the connect and
    /// handshake timeouts). A stage that answers has lost its K/V: the KV generation advances
    /// and this step fails, so the engine fails every live request; later steps run normally.
    /// A stage that does not answer fails the step naming it and both errors.
    fn reconnect_broken_stages(&mut self) -> Result<()> {
        self.ensure_placed()?;
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
                Err(err) => {
                    let reason = format!("unavailable after an earlier failure ({earlier}); reconnecting failed: {err}");
                    match self.replan_without(&name, &reason) {
                        Some(replanned) => replanned,
                        None => PipelineError::Stage { stage: name, reason },
                    }
                }
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
        let logits = self.forward(&sequence_inputs(plan)).map_err(|err| self.after_failed_step(err))?;
        self.samplers.sample(plan, &logits)
    }

    fn kv_generation(&self) -> u64 {
        self.kv_generation
    }

    fn max_steps_in_flight(&self) -> usize {
        let num_stages = self.stages.len();
        self.max_steps_in_flight.map_or(num_stages, |cap| cap.min(num_stages)).max(1)
    }

    fn submit(&mut self, plan: &StepPlan) -> hearth_engine::Result<Submitted> {
        self.start_step(sequence_inputs(plan)).map_err(|err| self.after_failed_step_when_idle(err))?;
        self.plans.push_back(plan.clone());
        Ok(Submitted::InFlight)
    }

    fn complete_oldest(&mut self) -> hearth_engine::Result<Vec<SampledOutput>> {
        let plan = self.plans.pop_front().ok_or_else(|| PipelineError::Config("no submitted step is in flight".into()))?;
        // [num_sampling_requests, vocab]
        let logits = self.finish_oldest().map_err(|err| self.after_failed_step_when_idle(err))?;
        self.samplers.sample(&plan, &logits)
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
