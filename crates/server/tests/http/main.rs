//! HTTP behavior of hearth-server through `router` (no socket) and `serve_on` (loopback),
//! over an engine whose executor generates a scripted token sequence.

mod common;
mod errors;
mod lifecycle;
mod metrics;
mod ollama;
mod openai;
