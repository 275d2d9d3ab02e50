//! Running a generation: submit one engine request per choice, merge their delta streams,
//! and either collect them (non-streaming responses) or render them chunk by chunk through an
//! API's `ChunkRenderer` into SSE or NDJSON bodies.
//!
//! Owns: choice bookkeeping (which choices finished, summed usage, first-token time) and the
//! order of chunks: `start`, then `delta`/`finish` per engine delta, then `end` once every
//! choice finished, or `error` and nothing more. Does not own: JSON shapes (the renderers).
//!
//! Invariants: the `DeltaStream`s live only inside the response body (or the collecting
//! future), so a client that disconnects drops them and the engine aborts its requests; the
//! same happens to every generation when `AppState::cancel_generations` is called.
//! Streamed and collected text are the same concatenation of delta texts.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use hearth_engine::serve::{Delta, DeltaStream, Finish, FinishReason, TokenLogprob, Usage};
use hearth_engine::EngineError;
use tokio::sync::watch;

use crate::error::ServerError;
use crate::metrics::RequestTracker;
use crate::params::GenerationSpec;
use crate::state::AppState;

/// One choice's engine stream, with its latency tracker.
struct ChoiceStream {
    choice_idx: usize,
    deltas: DeltaStream,
    tracker: RequestTracker,
}

impl Stream for ChoiceStream {
    type Item = (usize, Delta);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.deltas).poll_next(cx) {
            Poll::Ready(Some(delta)) => {
                this.tracker.observe(&delta);
                Poll::Ready(Some((this.choice_idx, delta)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// When a request arrived and produced its first token (for Ollama's durations).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub arrived: Instant,
    pub first_token_at: Option<Instant>,
}

/// The merged deltas of every choice of one request.
pub struct Generation {
    merged: SelectAll<ChoiceStream>,
    num_choices: usize,
    timings: Timings,
    /// `AppState::cancelled`; once true the generation ends early.
    cancel: watch::Receiver<bool>,
    cancelled: bool,
}

impl Generation {
    /// Submits `spec`'s engine requests. If any is refused, the ones already added are
    /// dropped (aborted) and the engine's error is returned.
    pub fn start(
        state: &AppState,
        spec: &GenerationSpec,
        arrived: Instant,
    ) -> Result<Self, ServerError> {
        let handle = state.handle();
        let streams = spec
            .engine_requests(handle.config().max_model_len)
            .into_iter()
            .enumerate()
            .map(|(choice_idx, request)| {
                let deltas = handle.add(request)?;
                Ok(ChoiceStream {
                    choice_idx,
                    deltas,
                    tracker: RequestTracker::new(state.clone(), arrived),
                })
            })
            .collect::<Result<Vec<_>, ServerError>>()?;
        Ok(Self {
            merged: stream::select_all(streams),
            num_choices: spec.num_choices,
            timings: Timings {
                arrived,
                first_token_at: None,
            },
            cancel: state.cancelled(),
            cancelled: false,
        })
    }

    pub fn num_choices(&self) -> usize {
        self.num_choices
    }

    /// The next delta of any choice; `None` when all ended or the server cancelled them.
    async fn next(&mut self) -> Option<(usize, Delta)> {
        if self.cancelled {
            return None;
        }
        let item = tokio::select! {
            item = self.merged.next() => item,
            Ok(_) = self.cancel.wait_for(|&cancelled| cancelled) => {
                self.cancelled = true;
                None
            }
        };
        if self.timings.first_token_at.is_none()
            && item.as_ref().is_some_and(|(_, d)| !d.token_ids.is_empty())
        {
            self.timings.first_token_at = Some(Instant::now());
        }
        item
    }
}

/// One choice's whole output.
#[derive(Debug, Clone)]
pub struct ChoiceOutput {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Finish,
}

#[derive(Debug, Clone)]
pub struct Collected {
    /// In choice order.
    pub choices: Vec<ChoiceOutput>,
    pub usage: Usage,
    pub timings: Timings,
}

/// Waits for every choice to finish. A generation error fails the whole request.
pub async fn collect(mut generation: Generation) -> Result<Collected, ServerError> {
    let num_choices = generation.num_choices;
    let mut parts: Vec<(String, Vec<TokenLogprob>)> = vec![Default::default(); num_choices];
    let mut finishes: Vec<Option<Finish>> = vec![None; num_choices];
    while let Some((choice_idx, delta)) = generation.next().await {
        let Some(part) = parts.get_mut(choice_idx) else {
            continue;
        };
        part.0.push_str(&delta.text);
        part.1.extend(delta.logprobs);
        if let Some(finish) = delta.finish {
            if let FinishReason::Error(message) = &finish.reason {
                return Err(ServerError::Generation(message.clone()));
            }
            finishes[choice_idx] = Some(finish);
        }
    }
    let finishes: Vec<Finish> = finishes
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| ended_early(&generation))?;
    let usage = combined_usage(&finishes);
    let choices = parts
        .into_iter()
        .zip(finishes)
        .map(|((text, logprobs), finish)| ChoiceOutput {
            text,
            logprobs,
            finish,
        })
        .collect();
    Ok(Collected {
        choices,
        usage,
        timings: generation.timings,
    })
}

/// Why a generation ended before every choice finished.
fn ended_early(generation: &Generation) -> ServerError {
    if generation.cancelled {
        ServerError::Engine(EngineError::ShuttingDown)
    } else {
        ServerError::Generation("the engine stopped before the request finished".into())
    }
}

/// One usage for all choices: the prompt counted once (its cached tokens from the first
/// choice), completion tokens summed.
pub fn combined_usage(finishes: &[Finish]) -> Usage {
    let first = finishes.first().map(|f| f.usage).unwrap_or_default();
    Usage {
        prompt_tokens: first.prompt_tokens,
        completion_tokens: finishes.iter().map(|f| f.usage.completion_tokens).sum(),
        cached_tokens: first.cached_tokens,
    }
}

/// Turns a generation's events into an API's chunk payloads (one JSON text each, or `[DONE]`).
pub trait ChunkRenderer: Send + 'static {
    /// Before any delta (e.g. OpenAI's role chunks).
    fn start(&mut self, num_choices: usize) -> Vec<String>;
    /// A delta's text and logprobs (its `finish` goes to `finish`).
    fn delta(&mut self, choice_idx: usize, delta: &Delta) -> Vec<String>;
    /// A choice finished with `Stop` or `Length`.
    fn finish(&mut self, choice_idx: usize, finish: &Finish) -> Vec<String>;
    /// Every choice finished; `usage` is `combined_usage`.
    fn end(&mut self, usage: &Usage, timings: &Timings) -> Vec<String>;
    /// The generation failed; nothing follows.
    fn error(&mut self, err: &ServerError) -> Vec<String>;
}

struct Drive<R> {
    generation: Generation,
    renderer: R,
    finishes: Vec<Option<Finish>>,
    started: bool,
    done: bool,
}

/// The chunk payloads of `generation` as `renderer` writes them.
pub fn drive<R: ChunkRenderer>(
    generation: Generation,
    renderer: R,
) -> impl Stream<Item = String> + Send {
    let finishes = vec![None; generation.num_choices];
    let drive = Drive {
        generation,
        renderer,
        finishes,
        started: false,
        done: false,
    };
    stream::unfold(drive, |mut drive| async move {
        if drive.done {
            return None;
        }
        if !drive.started {
            drive.started = true;
            let chunks = drive.renderer.start(drive.generation.num_choices);
            return Some((chunks, drive));
        }
        let chunks = match drive.generation.next().await {
            Some((choice_idx, delta)) => drive.on_delta(choice_idx, delta),
            None => {
                drive.done = true;
                match drive
                    .finishes
                    .iter()
                    .cloned()
                    .collect::<Option<Vec<Finish>>>()
                {
                    Some(finishes) => {
                        let timings = drive.generation.timings;
                        drive.renderer.end(&combined_usage(&finishes), &timings)
                    }
                    None => drive.renderer.error(&ended_early(&drive.generation)),
                }
            }
        };
        Some((chunks, drive))
    })
    .flat_map(stream::iter)
}

impl<R: ChunkRenderer> Drive<R> {
    fn on_delta(&mut self, choice_idx: usize, delta: Delta) -> Vec<String> {
        let mut chunks = self.renderer.delta(choice_idx, &delta);
        if let Some(finish) = delta.finish {
            if let FinishReason::Error(message) = &finish.reason {
                chunks.extend(
                    self.renderer
                        .error(&ServerError::Generation(message.clone())),
                );
                self.done = true;
            } else if let Some(slot) = self.finishes.get_mut(choice_idx) {
                chunks.extend(self.renderer.finish(choice_idx, &finish));
                *slot = Some(finish);
            }
        }
        chunks
    }
}

/// `text/event-stream`: each payload as one `data: ...` event.
pub fn sse_response(payloads: impl Stream<Item = String> + Send + 'static) -> Response {
    Sse::new(payloads.map(|data| Ok::<_, Infallible>(Event::default().data(data)))).into_response()
}

/// `application/x-ndjson`: each payload on its own line.
pub fn ndjson_response(payloads: impl Stream<Item = String> + Send + 'static) -> Response {
    let body = Body::from_stream(payloads.map(|mut line| {
        line.push('\n');
        Ok::<_, Infallible>(Bytes::from(line))
    }));
    ([(CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}
