//! Re-planning a planned pipeline around a stage that is gone (`hearth serve --pipeline-peers`):
//! the executor's side. Where the layers go is the `Replanner`'s business (the cli's, which
//! runs `hearth_planner` over the peers that answer); this module decides when to ask it and
//! what the executor does with the answer.
//!
//! The rule: a stage is *gone* when its connection broke and one redial (bounded by the connect
//! and handshake timeouts) fails. With a replanner, that redial happens in the step that saw
//! the connection break, so the request that was running fails once and the next one already
//! runs on the new placement. Then:
//! - every stage still usable (this process's layers, the remote stages still connected) is
//!   handed to the replanner, the KV generation advances (the step fails naming the gone stage,
//!   and the engine fails every live request and forgets its cached blocks), and the stages of
//!   the new placement are opened (a connected stage loads its new layers on `Open`);
//! - if no placement fits (the planner refuses, or opening the new stages fails), the executor
//!   holds no stages: every step fails at once with that reason, and a step tries to place the
//!   model again at most every `RETRY_INTERVAL` (every listed peer is dialed again, so one that
//!   came back is used). The first placement that works serves that very step: no step computed
//!   anything since the KV generation advanced, so no cached block can point into lost stages.
//!
//! Not here: joining a node to a placement that works (a listed peer that is back is used at
//! the next re-plan, i.e. when another stage is lost or while no placement fits).

use std::ops::Range;
use std::time::{Duration, Instant};

use hearth_models::PipelineStage;

use super::{PipelineExecutor, PipelineParams, StageLocation, StageRunner};
use crate::error::{PipelineError, Result, StageName};
use crate::remote_stage::RemoteStage;

/// How often steps try to place the model again while no placement fits.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// The stages that still work when a re-plan starts: reusable by the new placement.
#[derive(Default)]
pub struct HeldStages {
    /// This process's stage (its KV pool dropped), kept when the new plan gives it the same layers.
    pub local: Option<PipelineStage>,
    /// Remote stages still connected; the new placement may `Open` them with other layers.
    pub remotes: Vec<RemoteStage>,
}

/// Places the model again over the nodes that answer now.
pub trait Replanner: Send {
    /// The new stages in layer order (as `PipelineParams::stages`), or why no placement fits
    /// (the planner's refusal, naming what is missing).
    fn replan(&mut self, held: HeldStages) -> std::result::Result<Vec<(Range<usize>, StageLocation)>, String>;
}

pub(super) struct ReplanState {
    replanner: Box<dyn Replanner>,
    /// Set while no placement fits.
    unplaced: Option<Unplaced>,
}

struct Unplaced {
    reason: String,
    last_attempt: Instant,
}

/// Whether a step may try to place the model again, `last_attempt` being the latest try.
fn retry_due(last_attempt: Instant, now: Instant) -> bool {
    now.saturating_duration_since(last_attempt) >= RETRY_INTERVAL
}

impl PipelineExecutor {
    /// Makes this executor re-plan around gone stages (see the module docs) with `replanner`.
    pub fn set_replanner(&mut self, replanner: Box<dyn Replanner>) {
        self.replan = Some(ReplanState { replanner, unplaced: None });
    }

    /// After a failed step: with a replanner, a stage whose connection broke is dialed again
    /// (or re-planned around) now rather than before the next step. Returns the error to
    /// report: recovery's (it names the stage and quotes its first failure), else the step's.
    pub(super) fn after_failed_step(&mut self, err: PipelineError) -> PipelineError {
        if self.replan.is_none() || self.stages.iter().all(|runner| !is_broken(runner)) {
            return err;
        }
        self.reconnect_broken_stages().err().unwrap_or(err)
    }

    /// Before a step, while no placement fits: tries again when due. `Ok` once stages are placed.
    pub(super) fn ensure_placed(&mut self) -> Result<()> {
        let Some(state) = &self.replan else { return Ok(()) };
        let Some(unplaced) = &state.unplaced else { return Ok(()) };
        if !retry_due(unplaced.last_attempt, Instant::now()) {
            return Err(PipelineError::Config(format!("no pipeline placement: {}", unplaced.reason)));
        }
        match self.place_again() {
            Ok(()) => {
                tracing::info!("pipeline placed again: {}", self.describe_stages());
                Ok(())
            }
            Err(reason) => Err(PipelineError::Config(format!("no pipeline placement: {reason}"))),
        }
    }

    /// `gone` did not answer a redial: re-plan over what is left. `None` without a replanner
    /// (the caller reports the failure as before).
    pub(super) fn replan_without(&mut self, gone: &StageName, why: &str) -> Option<PipelineError> {
        self.replan.as_ref()?;
        tracing::warn!("{gone} is gone ({why}); re-planning over the nodes that answer");
        self.kv_generation += 1;
        let reason = match self.place_again() {
            Ok(()) => {
                let placement = self.describe_stages();
                tracing::warn!("re-planned without {gone}: {placement}");
                format!("gone ({why}); re-planned over the nodes that answer: {placement}; running requests fail, new requests run normally")
            }
            Err(refusal) => {
                tracing::error!("no placement without {gone}: {refusal}");
                format!("gone ({why}); no placement fits the nodes that answer: {refusal}; requests fail until one does")
            }
        };
        Some(PipelineError::Stage { stage: gone.clone(), reason })
    }

    /// Hands the usable stages to the replanner and opens its placement; on failure the
    /// executor holds no stages and remembers why.
    fn place_again(&mut self) -> std::result::Result<(), String> {
        let mut held = HeldStages { local: None, remotes: Vec::new() };
        for runner in self.stages.drain(..) {
            match runner {
                StageRunner::Local(local) => held.local = Some(local.stage),
                StageRunner::Remote(remote) if remote.failure().is_none() => held.remotes.push(remote),
                StageRunner::Remote(_) => {}
            }
        }
        self.names.clear();
        let Some(mut state) = self.replan.take() else { return Err("no replanner".into()) };
        let placed = state.replanner.replan(held).and_then(|stages| self.open_placement(stages).map_err(|err| err.to_string()));
        state.unplaced = placed.as_ref().err().map(|reason| Unplaced { reason: reason.clone(), last_attempt: Instant::now() });
        self.replan = Some(state);
        placed
    }

    /// Opens `stages` with this executor's pool and takes them over (samplers, KV generation,
    /// the steps-in-flight cap and the replanner stay).
    fn open_placement(&mut self, stages: Vec<(Range<usize>, StageLocation)>) -> Result<()> {
        let fresh = PipelineExecutor::connect(PipelineParams {
            config: &self.config,
            stages,
            pool: self.pool,
            dialer: &self.dialer,
            timing: self.timing,
            device: self.device.clone(),
        })?;
        *self = PipelineExecutor {
            samplers: std::mem::take(&mut self.samplers),
            kv_generation: self.kv_generation,
            max_steps_in_flight: self.max_steps_in_flight,
            // `place_again` holds the replanner meanwhile and puts it back.
            replan: None,
            ..fresh
        };
        Ok(())
    }

    /// "layers 0..10 at a, 10..30 in this process", for logs and errors.
    fn describe_stages(&self) -> String {
        let stages = self.names.iter().map(|name| {
            let place = name.address.as_deref().map_or("in this process".to_string(), |address| format!("at {address}"));
            format!("layers {}..{} {place}", name.layers.start, name.layers.end)
        });
        stages.collect::<Vec<_>>().join(", ")
    }
}

fn is_broken(runner: &StageRunner) -> bool {
    matches!(runner, StageRunner::Remote(remote) if remote.failure().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unplaced_pipeline_retries_only_after_the_interval() {
        let attempt = Instant::now();
        assert!(!retry_due(attempt, attempt));
        assert!(!retry_due(attempt, attempt + RETRY_INTERVAL / 2));
        assert!(retry_due(attempt, attempt + RETRY_INTERVAL));
        // A clock that reads earlier than the attempt (not monotonic across threads) waits.
        assert!(!retry_due(attempt + RETRY_INTERVAL, attempt));
    }
}
