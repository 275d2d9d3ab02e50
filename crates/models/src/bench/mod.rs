//! Random-weight benchmark models in the exact shapes of real ones (Llama-3-8B, Llama-3.2-1B,
//! Qwen2.5-7B), written as standard GGUF files that llama.cpp and hearth both load, so the two
//! engines can be timed on the same file (DESIGN.md §5, §7).
//!
//! Owns: the shape table (`shapes`), the tensor list with llama.cpp's per-tensor types and the
//! metadata (`plan`), the GGUF header (`gguf_writer`) and the streaming data writer
//! (`generate`). Does not own: tokenizers — the `tokenizer.*` metadata arrives ready-made and is
//! copied as is — or any command-line handling.
//!
//! Invariant: a written file loads through [`crate::ModelFiles`] with no missing or unexpected
//! tensor, and its bytes depend only on (shape, quant, vocabulary, seed).

pub mod generate;
pub mod gguf_writer;
pub mod plan;
pub mod shapes;

pub use generate::{summarize, write_bench_model, BenchModelParams, BenchModelSummary, Progress};
pub use plan::{bench_metadata, plan_tensors, use_more_bits, Init, PlannedTensor, WEIGHT_STD};
pub use shapes::{BenchQuant, BenchShape, Llama3RopeScaling, ShapeName};
