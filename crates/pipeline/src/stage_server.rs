//! The stage worker: serves a `PipelineStage` to a coordinator over authenticated
//! `Purpose::Data` connections — `Describe` reports what it offers (for the planner), `Open`
//! names the layers (loading them when the stage loads on demand) and allocates the KV pool,
//! each `Step` runs the layers and answers with the hidden state or (last stage) the logits;
//! `ExportKv` streams the K/V of given blocks layer by layer (split prefill/decode).
//! A stage started with fixed layers refuses an `Open` for other layers.
//!
//! Owns: the accept loop (one coordinator at a time; others are refused with
//! `TooManyConnections` while one is served), the stage's layers (fixed, or loaded on demand
//! and kept until another range is asked for), its KV pool (one per connection, freed when it
//! closes), `Busy` heartbeats while a step computes or layers load. Does not own: which requests are in a step or where their blocks are (the
//! coordinator's scheduler decides; the stage writes K/V where the block tables point).
//!
//! Invariants: every wait is bounded and checks the stop flag at least every 200 ms; a step
//! that fails (bad block table, shape mismatch) is answered `Failed` and the connection stays
//! up; a malformed frame or a message out of protocol closes the connection (with a `Failed`
//! naming the problem, best effort) and the server goes back to accepting; a KV pool larger
//! than the stage's memory budget is refused.

use std::net::TcpListener;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use hearth_cluster::{Connection, ConnectionTiming, HandshakeConfig, Purpose, RefusalReason};
use hearth_models::{ForwardBatch, LoadOptions, ModelConfig, ModelFiles, PagedKvCache, PipelineStage, StageInput, StageOutput};

use crate::error::{PipelineError, Result};
use crate::transport::{poll, send, PIPELINE_FRAME_LIMITS};
use crate::wire::{OutputKind, StageDescription, StageMessage, StageResources, WireTensor};

/// How often loops look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);

pub struct StageServerParams {
    pub handshake: HandshakeConfig,
    pub timing: ConnectionTiming,
    pub device: Device,
    /// The most bytes of K/V this stage will allocate for a coordinator.
    pub max_kv_bytes: u64,
    /// `Busy` is sent at least this often while a step computes (must be well below the
    /// coordinator's silence timeout).
    pub busy_interval: Duration,
    /// What this stage tells a planning coordinator it offers.
    pub offer: StageOffer,
}

/// The resources a stage advertises (`Describe`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageOffer {
    /// Memory for weights and KV.
    pub memory_bytes: u64,
    pub bandwidth_bytes_per_s: f64,
    pub flops_per_s: f64,
}

/// The layers a server runs: fixed at start, or loaded when a coordinator asks. (One per
/// server: the variants' sizes do not matter.)
#[allow(clippy::large_enum_variant)]
enum StageSlot {
    Fixed(PipelineStage),
    OnDemand { files: ModelFiles, options: LoadOptions, loaded: Option<PipelineStage> },
}

pub struct StageServer {
    slot: StageSlot,
    params: StageServerParams,
}

/// Why a connection ended.
enum Closed {
    /// The peer closed it or the server is stopping.
    Normally,
    Failed(PipelineError),
}

impl StageServer {
    /// A server of the fixed layers `stage` holds.
    pub fn new(stage: PipelineStage, params: StageServerParams) -> Self {
        Self { slot: StageSlot::Fixed(stage), params }
    }

    /// A server that loads the layers each coordinator's `Open` names (a planned pipeline).
    pub fn on_demand(files: ModelFiles, options: LoadOptions, params: StageServerParams) -> Self {
        Self { slot: StageSlot::OnDemand { files, options, loaded: None }, params }
    }

    fn config(&self) -> &ModelConfig {
        match &self.slot {
            StageSlot::Fixed(stage) => &stage.config,
            StageSlot::OnDemand { files, .. } => &files.config,
        }
    }

    /// The loaded stage, if any.
    fn stage(&self) -> Option<&PipelineStage> {
        match &self.slot {
            StageSlot::Fixed(stage) => Some(stage),
            StageSlot::OnDemand { loaded, .. } => loaded.as_ref(),
        }
    }

    fn layers_text(&self) -> String {
        match (&self.slot, self.stage()) {
            (StageSlot::Fixed(stage), _) => format!("layers {}..{}", stage.layers.start, stage.layers.end),
            (_, Some(stage)) => format!("layers {}..{} (loaded on demand)", stage.layers.start, stage.layers.end),
            (_, None) => "no layers yet (loaded on demand)".into(),
        }
    }

    /// Accepts coordinators on `listener` until `stop` is set, serving one at a time.
    pub fn serve(&mut self, listener: &TcpListener, stop: &AtomicBool) -> Result<()> {
        listener
            .set_nonblocking(true)
            .map_err(|err| PipelineError::Config(format!("configuring the stage listener: {err}")))?;
        while !stop.load(Ordering::Relaxed) {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(err) => {
                    tracing::warn!("accepting a pipeline connection: {err}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if let Err(err) = stream.set_nonblocking(false) {
                tracing::warn!("configuring a pipeline connection: {err}");
                continue;
            }
            let admit = |peer: &hearth_cluster::PeerIdentity| match peer.purpose {
                Purpose::Data => Ok(()),
                purpose => Err(RefusalReason::PurposeNotServed { purpose }),
            };
            let connection = match Connection::accept(stream, &self.params.handshake, &self.params.timing, admit) {
                Ok(connection) => connection,
                Err(failure) => {
                    tracing::warn!("refused a pipeline connection: {failure:?}");
                    continue;
                }
            };
            let peer = connection.peer_address();
            tracing::info!("pipeline coordinator {peer} connected ({})", self.layers_text());
            match self.serve_connection(connection, listener, stop) {
                Closed::Normally => tracing::info!("pipeline coordinator {peer} disconnected"),
                Closed::Failed(err) => tracing::warn!("pipeline connection from {peer} closed: {err}"),
            }
        }
        Ok(())
    }

    fn serve_connection(&mut self, mut connection: Connection, listener: &TcpListener, stop: &AtomicBool) -> Closed {
        connection.set_limits(PIPELINE_FRAME_LIMITS);
        let mut kv_cache: Option<PagedKvCache> = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                connection.shutdown();
                return Closed::Normally;
            }
            self.refuse_waiting_coordinators(listener);
            let message = match poll(&mut connection, STOP_POLL) {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(PipelineError::Cluster(hearth_cluster::ClusterError::Closed)) => return Closed::Normally,
                Err(err) => return self.close(connection, err),
            };
            let reply = match message {
                StageMessage::Describe => StageMessage::Resources(self.resources()),
                StageMessage::Open { layer_start, layer_end, num_blocks, block_size } => {
                    kv_cache = None;
                    let layers = layer_start as usize..layer_end as usize;
                    match self.open(&mut connection, layers, num_blocks as usize, block_size as usize) {
                        Ok(Ok((kv, description))) => {
                            kv_cache = Some(kv);
                            StageMessage::Ready(description)
                        }
                        Ok(Err(err)) => StageMessage::Failed { step_id: 0, message: err.to_string() },
                        Err(err) => return self.close(connection, err),
                    }
                }
                StageMessage::Step { step_id, sequences, hidden } => {
                    let (Some(kv), Some(stage)) = (&kv_cache, self.stage()) else {
                        let err = PipelineError::Protocol("a step before the stage was opened".into());
                        return self.close(connection, err);
                    };
                    let device = &self.params.device;
                    let ran = with_heartbeats(&mut connection, self.params.busy_interval, step_id, || {
                        run_step(stage, device, &sequences, hidden.as_ref(), kv)
                    });
                    match ran {
                        Ok(Ok((kind, tensor))) => StageMessage::Output { step_id, kind, tensor },
                        Ok(Err(err)) => StageMessage::Failed { step_id, message: err.to_string() },
                        Err(err) => return self.close(connection, err),
                    }
                }
                StageMessage::ExportKv { step_id, block_ids } => {
                    let Some(kv) = &kv_cache else {
                        let err = PipelineError::Protocol("a KV export before the stage was opened".into());
                        return self.close(connection, err);
                    };
                    match export_kv(&mut connection, kv, step_id, &block_ids, &self.params.device) {
                        Ok(Ok(())) => continue,
                        Ok(Err(err)) => StageMessage::Failed { step_id, message: err.to_string() },
                        Err(err) => return self.close(connection, err),
                    }
                }
                other => {
                    let err = PipelineError::Protocol(format!("a stage does not take {} message", other.name()));
                    return self.close(connection, err);
                }
            };
            if let Err(err) = send(&mut connection, &reply) {
                return self.close(connection, err);
            }
        }
    }

    fn resources(&self) -> StageResources {
        let c = self.config();
        let offer = &self.params.offer;
        StageResources {
            memory_bytes: offer.memory_bytes,
            bandwidth_bytes_per_s: offer.bandwidth_bytes_per_s,
            flops_per_s: offer.flops_per_s,
            num_layers: c.num_layers as u32,
            hidden_size: c.hidden_size as u32,
            vocab_size: c.vocab_size as u32,
            fixed_layers: match &self.slot {
                StageSlot::Fixed(stage) => Some((stage.layers.start as u32, stage.layers.end as u32)),
                StageSlot::OnDemand { .. } => None,
            },
        }
    }

    /// Makes `layers` the served stage (loading them on demand, with heartbeats) and allocates
    /// its KV pool. The outer `Err` means the connection is gone; the inner one is the answer.
    fn open(
        &mut self,
        connection: &mut Connection,
        layers: Range<usize>,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Result<(PagedKvCache, StageDescription)>> {
        let interval = self.params.busy_interval;
        if let StageSlot::OnDemand { files, options, loaded } = &mut self.slot {
            if loaded.as_ref().is_none_or(|stage| stage.layers != layers) {
                // Free the old layers before reading the new ones.
                *loaded = None;
                let (files, options) = (&*files, &*options);
                let wanted = layers.clone();
                match with_heartbeats(connection, interval, 0, || PipelineStage::load(files, wanted, options))? {
                    Ok(stage) => {
                        tracing::info!("loaded layers {}..{}", layers.start, layers.end);
                        *loaded = Some(stage);
                    }
                    Err(err) => return Ok(Err(err.into())),
                }
            }
        }
        let Some(stage) = self.stage() else {
            return Ok(Err(PipelineError::Protocol("no stage is loaded".into())));
        };
        if stage.layers != layers {
            return Ok(Err(PipelineError::Config(format!(
                "this stage serves layers {}..{} (started with --layers), not {}..{}",
                stage.layers.start, stage.layers.end, layers.start, layers.end
            ))));
        }
        let description = describe(stage);
        let (params, stage) = (&self.params, stage);
        with_heartbeats(connection, interval, 0, || allocate_kv(stage, params, num_blocks, block_size))
            .map(|kv| kv.map(|kv| (kv, description)))
    }

    /// A stage serves one coordinator at a time: others get a prompt, typed refusal
    /// (`TooManyConnections`) from a short-lived thread instead of a handshake timeout.
    fn refuse_waiting_coordinators(&self, listener: &TcpListener) {
        while let Ok((stream, address)) = listener.accept() {
            let (handshake, timing) = (self.params.handshake.clone(), self.params.timing);
            let spawned = std::thread::Builder::new().name("hearth-stage-refuse".into()).spawn(move || {
                if stream.set_nonblocking(false).is_ok() {
                    let _ = Connection::accept(stream, &handshake, &timing, |_| Err(RefusalReason::TooManyConnections));
                }
            });
            match spawned {
                Ok(_) => tracing::info!("refused pipeline coordinator {address}: this stage already serves one"),
                Err(err) => tracing::warn!("refusing pipeline coordinator {address}: {err}"),
            }
        }
    }

    /// Tells the peer why (best effort) and closes the connection.
    fn close(&self, mut connection: Connection, err: PipelineError) -> Closed {
        let _ = send(&mut connection, &StageMessage::Failed { step_id: 0, message: format!("closing the connection: {err}") });
        connection.shutdown();
        Closed::Failed(err)
    }
}

fn describe(stage: &PipelineStage) -> StageDescription {
    let c = &stage.config;
    StageDescription {
        layer_start: stage.layers.start as u32,
        layer_end: stage.layers.end as u32,
        num_layers: c.num_layers as u32,
        hidden_size: c.hidden_size as u32,
        vocab_size: c.vocab_size as u32,
    }
}

/// The stage's KV pool, refused when larger than the stage's budget.
fn allocate_kv(stage: &PipelineStage, params: &StageServerParams, num_blocks: usize, block_size: usize) -> Result<PagedKvCache> {
    let c = &stage.config;
    let dtype = stage.dtype();
    let bytes_per_block = 2 * block_size * c.num_kv_heads * c.head_dim * dtype.size_in_bytes();
    let num_bytes = (num_blocks as u64 + 1) * bytes_per_block as u64 * stage.layers.len() as u64;
    if block_size == 0 || num_bytes > params.max_kv_bytes {
        return Err(PipelineError::Config(format!(
            "a KV pool of {num_blocks} blocks of {block_size} tokens ({num_bytes} bytes for layers {}..{}) exceeds this stage's budget of {} bytes",
            stage.layers.start, stage.layers.end, params.max_kv_bytes
        )));
    }
    Ok(stage.new_kv_cache(num_blocks, block_size, dtype, &params.device)?)
}

fn run_step(
    stage: &PipelineStage,
    device: &Device,
    sequences: &[hearth_models::SequenceInput],
    hidden: Option<&WireTensor>,
    kv_cache: &PagedKvCache,
) -> Result<(OutputKind, WireTensor)> {
    let batch = ForwardBatch::new(sequences, kv_cache.block_size, device)?;
    // A stage on another kind of device may compute in another dtype (F32 CPU, BF16 GPU).
    let hidden = match hidden {
        Some(h) => Some(h.to_tensor(device)?.to_dtype(stage.dtype())?),
        None => None,
    };
    let input = match &hidden {
        Some(hidden) => StageInput::Hidden(hidden),
        None => StageInput::TokenIds,
    };
    Ok(match stage.forward(input, &batch, kv_cache)? {
        StageOutput::Hidden(h) => (OutputKind::Hidden, WireTensor::from_tensor(&h)?),
        StageOutput::Logits(l) => (OutputKind::Logits, WireTensor::from_tensor(&l)?),
    })
}

/// Sends the K/V of `block_ids`, one `KvLayer` per layer in order. The outer `Err` means the
/// connection is gone; the inner one (bad block ids) is the answer, sent before any layer.
fn export_kv(
    connection: &mut Connection,
    kv_cache: &PagedKvCache,
    step_id: u64,
    block_ids: &[u32],
    device: &Device,
) -> Result<Result<()>> {
    if let Some(bad) = block_ids.iter().find(|&&id| id as usize >= kv_cache.num_blocks) {
        return Ok(Err(PipelineError::Protocol(format!("block {bad} is outside the KV pool of {} blocks", kv_cache.num_blocks))));
    }
    let ids = match Tensor::new(block_ids, device) {
        Ok(ids) => ids,
        Err(err) => return Ok(Err(err.into())),
    };
    for (layer_idx, (k, v)) in kv_cache.layers.iter().enumerate() {
        // [num_blocks, block_size, num_kv_heads, head_dim] each
        let layer = k
            .index_select(&ids, 0)
            .and_then(|k| Ok((k, v.index_select(&ids, 0)?)))
            .map_err(PipelineError::from)
            .and_then(|(k, v)| Ok((WireTensor::from_tensor(&k)?, WireTensor::from_tensor(&v)?)));
        let (k, v) = match layer {
            Ok(layer) => layer,
            // Layers already sent: the coordinator discards a partial export on `Failed`.
            Err(err) => return Ok(Err(err)),
        };
        send(connection, &StageMessage::KvLayer { step_id, layer_idx: layer_idx as u32, k, v })?;
    }
    Ok(Ok(()))
}

/// Runs `work` on a helper thread, sending `Busy { step_id }` every `interval` until it is
/// done. `Err` only when a heartbeat cannot be sent (the connection is gone).
fn with_heartbeats<T: Send>(connection: &mut Connection, interval: Duration, step_id: u64, work: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel();
        scope.spawn(move || {
            let _ = sender.send(work());
        });
        loop {
            match receiver.recv_timeout(interval) {
                Ok(result) => return Ok(result),
                Err(mpsc::RecvTimeoutError::Timeout) => send(connection, &StageMessage::Busy { step_id })?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PipelineError::Protocol("the stage's compute thread panicked".into()))
                }
            }
        }
    })
}
