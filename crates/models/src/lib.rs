//! Model definitions and weight loading: a forward pass over a paged-KV `ForwardBatch`.
//!
//! Owns: model configs (`config`), weight files (GGUF and Hugging Face safetensors, `weights`),
//! the shared transformer layers (`layers`, `attention`, `transformer`), one file per
//! architecture (`arch`), the `ForwardBatch` and the paged KV pool (`kv_cache`), a model
//! restricted to a layer range for pipeline stages (`pipeline_stage`), random-weight benchmark
//! GGUF files in real models' shapes (`bench`), and generation steps replayed as device graphs
//! (`decode_graph`).
//! Does not own: requests, scheduling, sampling, tokenization, HTTP. A forward pass sees
//! flattened tokens, positions, slots and block tables — never a request.
//!
//! Invariant: there is exactly one attention path, the paged one in `hearth-kernels`.

pub mod arch;
pub mod attention;
pub mod bench;
pub mod config;
pub mod decode_graph;
pub mod error;
pub mod export;
pub mod forward_batch;
pub mod kv_cache;
pub mod layers;
pub mod loader;
pub mod numerics;
pub mod pipeline_stage;
pub mod tensor_parallel;
pub mod transformer;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use decode_graph::DecodeGraphs;
pub use forward_batch::{DecodePadding, ForwardBatch, PackedStep, SequenceInput};
pub use kv_cache::PagedKvCache;
pub use loader::{load_model, LoadOptions, LoadedModel, ModelFiles, ModelFormat, QuantizeTo, WeightSummary};
pub use pipeline_stage::{PipelineStage, StageInput, StageOutput};
pub use transformer::Transformer;
