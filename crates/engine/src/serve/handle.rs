//! `EngineHandle`: the async face of the serving engine. Cloneable and `Send + Sync`; each
//! `add` returns a `DeltaStream`, and dropping that stream before it finished aborts the
//! request (its blocks are freed on the engine thread's next iteration).
//!
//! Owns: validation of an `EngineRequest` against the model (empty prompt, context overflow,
//! ids outside the vocabulary, sampling parameters), request ids, the command channel to the
//! engine thread, and stats snapshots. Does not own: scheduling or model execution (the engine
//! thread in `engine_loop` does those).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::pin::Pin;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::task::{Context, Poll};

use hearth_scheduler::RequestId;
use hearth_tokenizer::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::engine_loop::{self, Command, EngineConfig};
use super::executor::Executor;
use super::request::{Delta, EngineRequest, EngineStats, ModelInfo, MAX_TOP_LOGPROBS};
use crate::{EngineError, Result};

#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    tokenizer: Arc<Tokenizer>,
    model_info: ModelInfo,
    config: EngineConfig,
    stats: Arc<Mutex<EngineStats>>,
    /// Cleared by the engine thread when it exits (normally or by panic).
    running: Arc<AtomicBool>,
    next_request_id: AtomicU64,
    /// Until `take_engine_thread` takes it.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EngineHandle {
    /// Starts the engine thread over `executor`. The thread stops when every handle and
    /// stream is dropped.
    pub fn spawn(
        executor: Box<dyn Executor>,
        tokenizer: Arc<Tokenizer>,
        model_info: ModelInfo,
        config: EngineConfig,
    ) -> Result<Self> {
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let running = Arc::new(AtomicBool::new(true));
        let (commands, thread) = engine_loop::spawn(executor, tokenizer.clone(), config.clone(), stats.clone(), running.clone())?;
        let thread = Mutex::new(Some(thread));
        let inner = Inner { commands, tokenizer, model_info, config, stats, running, next_request_id: AtomicU64::new(1), thread };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The engine thread, for waiting until it has stopped (the first call gets it; later calls
    /// `None`). A process that exits while the thread still drops its executor tears the GPU
    /// driver (and NCCL) down under it: `hearth serve` drops every handle, then waits.
    pub fn take_engine_thread(&self) -> Option<EngineThread> {
        let thread = self.inner.thread.lock().ok()?.take()?;
        Some(EngineThread(Some(thread)))
    }

    pub fn model_info(&self) -> &ModelInfo {
        &self.inner.model_info
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.inner.tokenizer
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Whether the engine thread is alive (false after it died; requests then fail with
    /// `ShuttingDown`).
    pub fn is_running(&self) -> bool {
        self.inner.running.load(Ordering::Acquire)
    }

    /// The latest snapshot of the engine's counters (updated after every step).
    pub fn stats(&self) -> EngineStats {
        self.inner.stats.lock().map(|stats| *stats).unwrap_or_default()
    }

    /// Validates `request` and queues it. The stream yields its deltas.
    pub fn add(&self, request: EngineRequest) -> Result<DeltaStream> {
        self.validate(&request)?;
        let id = RequestId(self.inner.next_request_id.fetch_add(1, Ordering::Relaxed));
        let (deltas_tx, deltas_rx) = unbounded_channel();
        self.inner
            .commands
            .send(Command::Add { id, request, deltas: deltas_tx })
            .map_err(|_| EngineError::ShuttingDown)?;
        Ok(DeltaStream { id, deltas: deltas_rx, commands: self.inner.commands.clone(), finished: false })
    }

    fn validate(&self, request: &EngineRequest) -> Result<()> {
        let num_prompt_tokens = request.prompt_token_ids.len();
        if num_prompt_tokens == 0 {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        if request.max_tokens == 0 {
            return Err(EngineError::Invalid("max_tokens must be at least 1".into()));
        }
        let context_length = self.inner.config.max_model_len;
        if num_prompt_tokens.saturating_add(request.max_tokens) > context_length {
            return Err(EngineError::ContextOverflow {
                num_prompt_tokens,
                max_new_tokens: request.max_tokens,
                context_length,
            });
        }
        let vocab_size = self.inner.config.vocab_size;
        if let Some(&bad) = request.prompt_token_ids.iter().chain(&request.stop_token_ids).find(|&&id| id as usize >= vocab_size) {
            return Err(EngineError::Invalid(format!("token id {bad} is outside the vocabulary of {vocab_size} tokens")));
        }
        if request.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(EngineError::Invalid(format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}")));
        }
        if request.stop_strings.iter().any(String::is_empty) {
            return Err(EngineError::Invalid("stop strings must not be empty".into()));
        }
        request.sampling.validate()?;
        Ok(())
    }
}

/// The engine's thread. It stops once every `EngineHandle` and `DeltaStream` is dropped (after
/// finishing the steps in flight), dropping its executor: the model, the KV pool, the GPUs'
/// buffers.
pub struct EngineThread(Option<JoinHandle<()>>);

impl EngineThread {
    /// Waits up to `timeout` for the thread to stop; true when it has. (A panic on it was already
    /// reported by the panic hook, and requests failed with `ShuttingDown`.)
    pub fn join_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Some(thread) = &self.0 else { return true };
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.0.take().map(JoinHandle::join);
        true
    }
}

/// The deltas of one request. Dropping it before the final delta aborts the request.
pub struct DeltaStream {
    id: RequestId,
    deltas: UnboundedReceiver<Delta>,
    commands: mpsc::Sender<Command>,
    finished: bool,
}

impl DeltaStream {
    pub fn request_id(&self) -> RequestId {
        self.id
    }

    /// The next delta, or `None` after the final one.
    pub async fn recv(&mut self) -> Option<Delta> {
        if self.finished {
            return None;
        }
        let delta = self.deltas.recv().await;
        self.observe(&delta);
        delta
    }

    fn observe(&mut self, delta: &Option<Delta>) {
        if delta.as_ref().is_none_or(|delta| delta.finish.is_some()) {
            self.finished = true;
        }
    }
}

impl futures_core::Stream for DeltaStream {
    type Item = Delta;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delta>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let polled = self.deltas.poll_recv(cx);
        if let Poll::Ready(delta) = &polled {
            self.observe(delta);
        }
        polled
    }
}

impl Drop for DeltaStream {
    fn drop(&mut self) {
        if !self.finished {
            // The engine may already be gone; then there is nothing left to abort.
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

/// The engine side's end of a request's stream.
pub(crate) type DeltaSender = UnboundedSender<Delta>;
