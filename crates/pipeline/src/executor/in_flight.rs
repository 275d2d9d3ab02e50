//! Steps in flight through the stages: up to one step per stage at a time, so that while step A
//! computes in stage 1, step B computes in stage 0 (decode is memory-bound, so splitting one
//! step into micro-batches would not help; keeping every stage busy with its own step does).
//!
//! Owns: each step's progress (ready for a stage, computing in a remote stage, done, failed)
//! and the order in which steps enter stages. Does not own: the connections (`remote_stage`),
//! the stages' math (`hearth_models::PipelineStage`), sampling or plans (`executor`).
//!
//! Invariants: a stage holds at most one step (a remote stage is sent the next step only once
//! it answered the previous one); steps enter every stage in submission order (the oldest
//! ready step goes first, and a step never passes an older one), so a block freed by an
//! aborted request and handed to a newer step is written by the newer step last on every
//! stage; remote stages get their inputs before a local stage computes on this thread; a step
//! that fails anywhere is failed (naming the stage) and the others go on; every wait is
//! bounded by the remote stages' silence timeout.

use std::time::Duration;

use candle_core::Tensor;
use hearth_models::{ForwardBatch, SequenceInput, StageInput, StageOutput};

use super::{PipelineExecutor, StageRunner};
use crate::error::{PipelineError, Result, StageName};
use crate::wire::OutputKind;

/// How long one poll waits when a single remote stage is computing.
const SINGLE_POLL: Duration = Duration::from_millis(100);
/// How long each poll waits when several are: they are polled in turn, so the first to answer
/// is read within about this times their number.
const SHARED_POLL: Duration = Duration::from_millis(1);

/// One step on its way through the stages.
pub(super) struct StepInFlight {
    step_id: u64,
    inputs: Vec<SequenceInput>,
    /// The inputs as a batch, for stages in this process.
    batch: ForwardBatch,
    progress: Progress,
}

enum Progress {
    /// Waiting to enter stage `stage_idx` with the previous stage's output (`None` for stage
    /// 0, which embeds the token ids).
    Ready { stage_idx: usize, hidden: Option<Tensor> },
    /// Computing in remote stage `stage_idx`.
    Computing { stage_idx: usize },
    /// The last stage's F32 logits `[num_logit_rows, vocab]`.
    Done(Tensor),
    Failed(PipelineError),
}

impl Progress {
    fn is_finished(&self) -> bool {
        matches!(self, Progress::Done(_) | Progress::Failed(_))
    }
}

impl PipelineExecutor {
    /// Starts a step: it enters stage 0 now if that stage is free (a stage in this process
    /// computes it before this returns). With no step in flight, broken stages are dialed
    /// again first (`reconnect_broken_stages`); with steps in flight, a broken stage fails the
    /// new step at once, so the steps in flight drain and the next step may reconnect.
    pub(super) fn start_step(&mut self, inputs: Vec<SequenceInput>) -> Result<()> {
        if self.in_flight.is_empty() {
            self.reconnect_broken_stages()?;
        } else if let Some(err) = self.broken_stage_error() {
            return Err(err);
        }
        if self.stages.is_empty() {
            return Err(PipelineError::Config("a pipeline without stages".into()));
        }
        let step_id = self.next_step_id;
        self.next_step_id += 1;
        let batch = ForwardBatch::new(&inputs, self.pool.block_size, &self.device)?;
        let progress = Progress::Ready { stage_idx: 0, hidden: None };
        self.in_flight.push_back(StepInFlight { step_id, inputs, batch, progress });
        self.advance();
        Ok(())
    }

    /// Waits until the oldest step in flight is done (moving the others along meanwhile) and
    /// returns its logits, or the error that failed it.
    pub(super) fn finish_oldest(&mut self) -> Result<Tensor> {
        loop {
            match self.in_flight.front() {
                None => return Err(PipelineError::Config("no step is in flight".into())),
                Some(step) if step.progress.is_finished() => break,
                // `advance` leaves the oldest step computing in a remote stage.
                Some(_) => self.wait_for_outputs(),
            }
            self.advance();
        }
        match self.in_flight.pop_front().map(|step| step.progress) {
            Some(Progress::Done(logits)) => Ok(logits),
            Some(Progress::Failed(err)) => Err(err),
            _ => Err(PipelineError::Config("the oldest step in flight was not finished".into())),
        }
    }

    /// `after_failed_step` (recovery of broken stages) once no step is in flight: stages are
    /// never replaced under steps still computing.
    pub(super) fn after_failed_step_when_idle(&mut self, err: PipelineError) -> PipelineError {
        if self.in_flight.is_empty() {
            self.after_failed_step(err)
        } else {
            err
        }
    }

    /// The error of the first remote stage whose connection broke, if any.
    fn broken_stage_error(&self) -> Option<PipelineError> {
        self.stages.iter().zip(&self.names).find_map(|(runner, name)| match runner {
            StageRunner::Remote(remote) => remote.failure().map(|failure| PipelineError::Stage {
                stage: name.clone(),
                reason: format!("unavailable after an earlier failure ({failure}); it is dialed again once the steps in flight are done"),
            }),
            StageRunner::Local(_) => None,
        })
    }

    /// Moves every step as far as it goes without waiting: ready steps enter free remote
    /// stages (oldest first), then a stage in this process computes one ready step (the
    /// oldest), and again until nothing moves.
    fn advance(&mut self) {
        loop {
            self.send_ready_steps();
            if !self.compute_one_local_step() {
                return;
            }
        }
    }

    fn stage_is_computing(&self, stage_idx: usize) -> bool {
        self.in_flight.iter().any(|step| matches!(step.progress, Progress::Computing { stage_idx: idx } if idx == stage_idx))
    }

    /// Sends each ready step whose next stage is remote and free, oldest first.
    fn send_ready_steps(&mut self) {
        for step_idx in 0..self.in_flight.len() {
            let Progress::Ready { stage_idx, .. } = self.in_flight[step_idx].progress else { continue };
            if !matches!(self.stages[stage_idx], StageRunner::Remote(_)) || self.stage_is_computing(stage_idx) {
                continue;
            }
            let step = &mut self.in_flight[step_idx];
            let Progress::Ready { hidden, .. } = &mut step.progress else { continue };
            let hidden = hidden.take();
            let StageRunner::Remote(remote) = &mut self.stages[stage_idx] else { continue };
            step.progress = match remote.send_step(step.step_id, &step.inputs, hidden.as_ref()) {
                Ok(()) => Progress::Computing { stage_idx },
                Err(err) => Progress::Failed(err),
            };
        }
    }

    /// Computes the oldest step ready for a stage in this process; false if there is none.
    fn compute_one_local_step(&mut self) -> bool {
        let stages = &self.stages;
        let ready_here = |step: &StepInFlight| {
            matches!(step.progress, Progress::Ready { stage_idx, .. } if matches!(stages[stage_idx], StageRunner::Local(_)))
        };
        let Some(step) = self.in_flight.iter_mut().find(|step| ready_here(step)) else { return false };
        let Progress::Ready { stage_idx, hidden } = &mut step.progress else { return false };
        let (stage_idx, hidden) = (*stage_idx, hidden.take());
        let name = &self.names[stage_idx];
        let output = match &self.stages[stage_idx] {
            StageRunner::Local(local) => {
                let computed = hidden
                    .map(|h| h.to_dtype(local.stage.dtype()))
                    .transpose()
                    .map_err(|err| err.to_string())
                    .and_then(|hidden| {
                        let input = hidden.as_ref().map_or(StageInput::TokenIds, StageInput::Hidden);
                        local.stage.forward(input, &step.batch, &local.kv_cache).map_err(|err| err.to_string())
                    });
                match computed {
                    Ok(StageOutput::Hidden(h)) => Ok((OutputKind::Hidden, h)),
                    Ok(StageOutput::Logits(l)) => Ok((OutputKind::Logits, l)),
                    Err(reason) => Err(PipelineError::Stage { stage: name.clone(), reason }),
                }
            }
            StageRunner::Remote(_) => Err(PipelineError::Config(format!("{name} is not in this process"))),
        };
        step.progress = next_progress(stage_idx, self.stages.len(), name, output);
        true
    }

    /// Polls every remote stage computing a step once (one poll slice each) and records what
    /// arrived.
    fn wait_for_outputs(&mut self) {
        let computing: Vec<(usize, usize)> = self
            .in_flight
            .iter()
            .enumerate()
            .filter_map(|(step_idx, step)| match step.progress {
                Progress::Computing { stage_idx } => Some((step_idx, stage_idx)),
                _ => None,
            })
            .collect();
        let wait = if computing.len() == 1 { SINGLE_POLL } else { SHARED_POLL };
        for (step_idx, stage_idx) in computing {
            let StageRunner::Remote(remote) = &mut self.stages[stage_idx] else { continue };
            let output = match remote.poll_output(wait, &self.device) {
                Ok(None) => continue,
                Ok(Some(output)) => Ok(output),
                Err(err) => Err(err),
            };
            self.in_flight[step_idx].progress = next_progress(stage_idx, self.stages.len(), &self.names[stage_idx], output);
        }
    }
}

/// Where a step goes after stage `stage_idx` answered `output`: the next stage with a hidden
/// state, done with the last stage's logits, or failed.
fn next_progress(stage_idx: usize, num_stages: usize, name: &StageName, output: Result<(OutputKind, Tensor)>) -> Progress {
    let is_last = stage_idx + 1 == num_stages;
    match output {
        Ok((OutputKind::Logits, logits)) if is_last => Progress::Done(logits),
        Ok((OutputKind::Hidden, hidden)) if !is_last => Progress::Ready { stage_idx: stage_idx + 1, hidden: Some(hidden) },
        Ok((kind, _)) => Progress::Failed(PipelineError::Stage {
            stage: name.clone(),
            reason: format!("returned {kind:?} output, which does not fit its place in the pipeline"),
        }),
        Err(err) => Progress::Failed(err),
    }
}
