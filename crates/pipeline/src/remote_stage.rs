//! The coordinator's handle on a stage in another process: an authenticated `Purpose::Data`
//! connection; `describe` (what it offers, for the planner), `open` with the layers and the KV
//! pool's shape (checked against the expected layers and model), then one request/response per
//! step — in one call (`run`), or split into `send_step` and `poll_output` so the coordinator
//! can feed other stages while this one computes.
//!
//! Owns: the connection to one stage, the step it is computing (at most one: the stage answers
//! steps in order, one at a time, and is sent the next only after this one's output), and the
//! wait for its answer. Does not own: the order of stages or sampling (`executor`).
//!
//! Invariants: no wait is longer than the silence timeout without a message from the stage (it
//! sends `Busy` while computing), so a dead, stopped or cut-off stage fails the step within
//! about that timeout, and a closed connection fails it at once; every error names the stage;
//! after the connection breaks, every later request fails at once with the first error (the
//! executor may dial the stage again).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use hearth_cluster::{Dialer, Purpose};
use hearth_models::{ModelConfig, SequenceInput};

use crate::error::{PipelineError, Result, StageName};
use crate::transport::{poll, send, PIPELINE_FRAME_LIMITS};
use crate::wire::{OutputKind, StageDescription, StageMessage, StageResources, WireTensor};

/// The longest single poll; deadlines are checked between polls.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// How long the coordinator waits on stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineTiming {
    /// A stage that sends nothing for this long (no `Busy`, no answer) has failed.
    pub silence_timeout: Duration,
}

impl Default for PipelineTiming {
    /// Stages heartbeat every second (`StageServerParams::busy_interval`); five missed beats.
    fn default() -> Self {
        Self { silence_timeout: Duration::from_secs(5) }
    }
}

/// The KV pool every stage allocates: the coordinator's scheduler hands out its block ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    pub num_blocks: usize,
    pub block_size: usize,
}

pub struct RemoteStage {
    name: StageName,
    address: SocketAddr,
    connection: hearth_cluster::Connection,
    timing: PipelineTiming,
    /// Set at the first failure that leaves the connection unusable.
    broken: Option<String>,
    /// The step sent and not yet answered.
    pending_step: Option<PendingStep>,
}

/// A step the stage is computing.
struct PendingStep {
    step_id: u64,
    /// The last message from the stage about it (or when it was sent).
    last_heard: Instant,
}

impl RemoteStage {
    /// Connects to the stage at `address`, opens its layers `name.layers` with a KV pool of
    /// `pool` and checks it serves them for a model shaped like `config`.
    pub fn connect(
        dialer: &Dialer,
        address: SocketAddr,
        name: StageName,
        config: &ModelConfig,
        pool: PoolShape,
        timing: PipelineTiming,
    ) -> Result<Self> {
        let layers = name.layers.clone();
        let mut stage = Self::dial(dialer, address, name, timing)?;
        stage.open(layers, config, pool)?;
        Ok(stage)
    }

    /// Connects and authenticates, nothing more (a planning coordinator asks `describe`, then
    /// `open`s the layers the plan gives it).
    pub fn dial(dialer: &Dialer, address: SocketAddr, name: StageName, timing: PipelineTiming) -> Result<Self> {
        let mut connection = dialer
            .connect(address, Purpose::Data)
            .map_err(|err| PipelineError::Stage { stage: name.clone(), reason: format!("cannot connect: {err}") })?;
        connection.set_limits(PIPELINE_FRAME_LIMITS);
        Ok(Self { name, address, connection, timing, broken: None, pending_step: None })
    }

    /// What the stage offers (memory, bandwidth, compute) and the model it holds.
    pub fn describe(&mut self) -> Result<StageResources> {
        match self.request(&StageMessage::Describe, 0)? {
            StageMessage::Resources(resources) => Ok(resources),
            other => Err(self.fail_and_break(format!("answered a describe with {} message", other.name()))),
        }
    }

    /// Makes the stage serve `layers` (it loads them if it loads on demand) with a KV pool of
    /// `pool`, and checks its answer against `config`.
    pub fn open(&mut self, layers: std::ops::Range<usize>, config: &ModelConfig, pool: PoolShape) -> Result<()> {
        self.name.layers = layers.clone();
        let open = StageMessage::Open {
            layer_start: layers.start as u32,
            layer_end: layers.end as u32,
            num_blocks: pool.num_blocks as u32,
            block_size: pool.block_size as u32,
        };
        let reply = self.request(&open, 0)?;
        let StageMessage::Ready(description) = reply else {
            return Err(self.fail_and_break(format!("answered the open with {} message", reply.name())));
        };
        let expected = StageDescription {
            layer_start: layers.start as u32,
            layer_end: layers.end as u32,
            num_layers: config.num_layers as u32,
            hidden_size: config.hidden_size as u32,
            vocab_size: config.vocab_size as u32,
        };
        if description != expected {
            return Err(self.fail_and_break(format!(
                "serves layers {}..{} of a model with {} layers, hidden size {}, vocabulary {}; expected layers {}..{} of {} layers, hidden size {}, vocabulary {}",
                description.layer_start,
                description.layer_end,
                description.num_layers,
                description.hidden_size,
                description.vocab_size,
                expected.layer_start,
                expected.layer_end,
                expected.num_layers,
                expected.hidden_size,
                expected.vocab_size
            )));
        }
        Ok(())
    }

    pub fn name(&self) -> &StageName {
        &self.name
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Why the connection broke, once it has.
    pub fn failure(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Its place in the pipeline, once a plan gives it one (for messages).
    pub fn set_stage_idx(&mut self, stage_idx: usize) {
        self.name.stage_idx = stage_idx;
    }

    /// Runs one step on the stage: its hidden state, or its F32 logits when it is the last.
    pub fn run(
        &mut self,
        step_id: u64,
        sequences: &[SequenceInput],
        hidden: Option<&Tensor>,
        device: &Device,
    ) -> Result<(OutputKind, Tensor)> {
        self.send_step(step_id, sequences, hidden)?;
        loop {
            if let Some(output) = self.poll_output(POLL_SLICE, device)? {
                return Ok(output);
            }
        }
    }

    /// Sends one step; `poll_output` gets its answer. Fails if a step is still pending (the
    /// stage computes one step at a time).
    pub fn send_step(&mut self, step_id: u64, sequences: &[SequenceInput], hidden: Option<&Tensor>) -> Result<()> {
        if let Some(pending) = &self.pending_step {
            return Err(self.error(format!("step {step_id} was sent while step {} is still computing", pending.step_id)));
        }
        let hidden = hidden.map(WireTensor::from_tensor).transpose()?;
        self.send_request(&StageMessage::Step { step_id, sequences: sequences.to_vec(), hidden })?;
        self.pending_step = Some(PendingStep { step_id, last_heard: Instant::now() });
        Ok(())
    }

    /// Waits up to `wait` for the pending step's answer: `Ok(None)` while it computes (a
    /// heartbeat, or silence shorter than the silence timeout); its hidden state or F32 logits;
    /// or the error that ended it.
    pub fn poll_output(&mut self, wait: Duration, device: &Device) -> Result<Option<(OutputKind, Tensor)>> {
        let Some(pending) = &self.pending_step else {
            return Err(self.error("no step is computing there".into()));
        };
        let (step_id, mut last_heard) = (pending.step_id, pending.last_heard);
        let what = format!("step {step_id}");
        let polled = self.poll_reply(&what, step_id, &mut last_heard, wait);
        self.pending_step = match &polled {
            Ok(None) => Some(PendingStep { step_id, last_heard }),
            _ => None,
        };
        match polled? {
            None => Ok(None),
            Some(StageMessage::Output { kind, tensor, .. }) => {
                let tensor = tensor.to_tensor(device).map_err(|err| self.fail_and_break(format!("sent an unusable tensor: {err}")))?;
                Ok(Some((kind, tensor)))
            }
            Some(other) => Err(self.fail_and_break(format!("answered a step with {} message", other.name()))),
        }
    }

    /// Streams the K/V of `block_ids` from the stage, layer by layer: `on_layer(layer_idx, k,
    /// v)` gets each layer as it arrives (`[num_blocks, block_size, num_kv_heads, head_dim]` on
    /// `device`), so the caller can write it while later layers are still on the wire.
    pub fn export_kv(
        &mut self,
        step_id: u64,
        block_ids: &[u32],
        device: &Device,
        mut on_layer: impl FnMut(usize, Tensor, Tensor) -> Result<()>,
    ) -> Result<()> {
        let export = StageMessage::ExportKv { step_id, block_ids: block_ids.to_vec() };
        self.send_request(&export)?;
        for expected_idx in 0..self.name.layers.len() {
            match self.next_reply(&export, step_id)? {
                StageMessage::KvLayer { layer_idx, k, v, .. } if layer_idx as usize == expected_idx => {
                    let (k, v) = k
                        .to_tensor(device)
                        .and_then(|k| Ok((k, v.to_tensor(device)?)))
                        .map_err(|err| self.fail_and_break(format!("sent an unusable KV layer: {err}")))?;
                    on_layer(expected_idx, k, v)?;
                }
                other => return Err(self.fail_and_break(format!("sent {} while KV layer {expected_idx} was due", other.name()))),
            }
        }
        Ok(())
    }

    /// Sends `message` and waits for the answer to `step_id`, skipping `Busy` heartbeats. A
    /// `Failed` answer is an error that leaves the connection usable.
    fn request(&mut self, message: &StageMessage, step_id: u64) -> Result<StageMessage> {
        self.send_request(message)?;
        self.next_reply(message, step_id)
    }

    fn send_request(&mut self, message: &StageMessage) -> Result<()> {
        if let Some(reason) = &self.broken {
            return Err(self.error(format!("unavailable after an earlier failure: {reason}")));
        }
        if let Err(err) = send(&mut self.connection, message) {
            return Err(self.fail_and_break(format!("cannot send {}: {err}", message.name())));
        }
        Ok(())
    }

    /// The next message about `step_id` (the answer to `message`), skipping `Busy` heartbeats,
    /// with no more than the silence timeout between messages.
    fn next_reply(&mut self, message: &StageMessage, step_id: u64) -> Result<StageMessage> {
        let what = match message {
            StageMessage::Step { .. } => format!("step {step_id}"),
            StageMessage::Open { .. } => "opening the stage".to_string(),
            StageMessage::ExportKv { .. } => format!("the KV export of step {step_id}"),
            other => other.name().to_string(),
        };
        let mut last_heard = Instant::now();
        loop {
            if let Some(reply) = self.poll_reply(&what, step_id, &mut last_heard, POLL_SLICE)? {
                return Ok(reply);
            }
        }
    }

    /// Waits up to `wait` for a message about `step_id` (`what` names the request in errors):
    /// `Ok(None)` after a `Busy` heartbeat or nothing, unless the stage has been silent longer
    /// than the silence timeout since `last_heard` (which every message moves on).
    fn poll_reply(&mut self, what: &str, step_id: u64, last_heard: &mut Instant, wait: Duration) -> Result<Option<StageMessage>> {
        let reply = match poll(&mut self.connection, wait) {
            Ok(Some(reply)) => reply,
            Ok(None) if last_heard.elapsed() > self.timing.silence_timeout => {
                return Err(self.fail_and_break(format!("silent for {:?} (no answer, no heartbeat)", self.timing.silence_timeout)))
            }
            Ok(None) => return Ok(None),
            Err(PipelineError::Cluster(hearth_cluster::ClusterError::Closed)) => {
                return Err(self.fail_and_break("closed the connection (the stage process died or was stopped)".into()))
            }
            Err(err) => return Err(self.fail_and_break(format!("connection failed: {err}"))),
        };
        *last_heard = Instant::now();
        match reply {
            StageMessage::Busy { step_id: busy_id } if busy_id == step_id => Ok(None),
            StageMessage::Failed { step_id: failed_id, message: failure } if failed_id == step_id => {
                Err(self.error(format!("{what} failed there: {failure}")))
            }
            StageMessage::Failed { message, .. } => Err(self.fail_and_break(format!("failed: {message}"))),
            StageMessage::Output { step_id: other_id, .. }
            | StageMessage::Busy { step_id: other_id }
            | StageMessage::KvLayer { step_id: other_id, .. }
                if other_id != step_id =>
            {
                Err(self.fail_and_break(format!("answered step {other_id} while step {step_id} was pending")))
            }
            reply => Ok(Some(reply)),
        }
    }

    fn error(&self, reason: String) -> PipelineError {
        PipelineError::Stage { stage: self.name.clone(), reason }
    }

    /// Marks the connection unusable (and closes it); returns the error for `reason`.
    fn fail_and_break(&mut self, reason: String) -> PipelineError {
        self.connection.shutdown();
        self.broken.get_or_insert_with(|| reason.clone());
        self.error(reason)
    }
}

impl Drop for RemoteStage {
    fn drop(&mut self) {
        self.connection.shutdown();
    }
}
