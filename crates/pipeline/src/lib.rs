//! hearth's pipeline data plane: one model served by stages of contiguous layers, in this
//! process or in `hearth stage` processes reached over authenticated cluster connections.
//!
//! Map:
//! - `wire`: the stage messages (describe, resources, open, ready, step, busy, output, failed,
//!   export-KV, KV layer) and their binary encoding, tensors as dtype + shape + raw
//!   little-endian bytes; every length checked.
//! - `transport`: those messages as `Activation` (and `Kv`) frames on a
//!   `hearth_cluster::Connection`.
//! - `stage_server`: the stage worker (`hearth stage`): accept a coordinator, describe what it
//!   offers, open its layers (fixed, or loaded on demand) and KV pool, run steps with `Busy`
//!   heartbeats.
//! - `remote_stage`: the coordinator's connection to one stage, with bounded waits.
//! - `executor`: `PipelineExecutor`, the engine's `Executor` over the stages (star topology:
//!   the coordinator relays hidden states; see its docs for why); `executor/replan.rs`: when a
//!   planned pipeline re-places its layers around a gone stage (through a `Replanner`).
//! - `split_executor`: `SplitExecutor`, split prefill/decode: fresh prompts computed on a
//!   prefill node, their K/V streamed back layer by layer, decode here.
//!
//! Not here: the model math of a stage (`hearth_models::PipelineStage`), frames, the handshake
//! and membership (`hearth-cluster`, which stays free of tensors), placement (`hearth-planner`).

mod error;
mod executor;
mod remote_stage;
mod split_executor;
mod stage_server;
mod transport;
mod wire;

pub use error::{PipelineError, Result, StageName};
pub use executor::{check_contiguous, HeldStages, LocalStage, PipelineExecutor, PipelineParams, Replanner, StageLocation, StageRunner, RETRY_INTERVAL};
pub use remote_stage::{PipelineTiming, PoolShape, RemoteStage};
pub use split_executor::{SplitExecutor, SplitParams};
pub use stage_server::{StageOffer, StageServer, StageServerParams};
pub use transport::PIPELINE_FRAME_LIMITS;
pub use wire::{OutputKind, StageDescription, StageMessage, StageResources, WireTensor};
