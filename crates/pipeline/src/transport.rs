//! Stage messages over an authenticated cluster `Connection`: one frame per message — `Kv`
//! frames for K/V layers, `Activation` frames for the rest — with the pipeline's frame limits.
//!
//! Owns: which frame kind carries pipeline messages and how large one may be. Does not own:
//! the bytes of a message (`wire`), what the peers do (`stage_server`, `remote_stage`).
//!
//! Invariant: any frame of another kind, or a payload that does not decode, is an error; the
//! caller then closes the connection (after telling the peer why, if it wants to).

use std::time::Duration;

use hearth_cluster::{Connection, FrameKind, FrameLimits};

use crate::error::{PipelineError, Result};
use crate::wire::StageMessage;

/// Pipeline connections carry hidden states and logits: up to 256 MiB per message (a step's
/// logits are `num_sampling_sequences x vocab x 4` bytes). Control frames are not used.
pub const PIPELINE_FRAME_LIMITS: FrameLimits = FrameLimits { max_control_bytes: 64 << 10, max_data_bytes: 256 << 20 };

pub(crate) fn send(connection: &mut Connection, message: &StageMessage) -> Result<()> {
    let kind = match message {
        StageMessage::KvLayer { .. } => FrameKind::Kv,
        _ => FrameKind::Activation,
    };
    Ok(connection.send_frame(kind, &message.encode())?)
}

/// The next message within `wait`, or `None` (the connection stays in step).
pub(crate) fn poll(connection: &mut Connection, wait: Duration) -> Result<Option<StageMessage>> {
    let Some(frame) = connection.poll_frame(wait)? else { return Ok(None) };
    if !matches!(frame.kind, FrameKind::Activation | FrameKind::Kv) {
        return Err(PipelineError::Protocol(format!("a {} frame on a pipeline connection", frame.kind.name())));
    }
    let message = StageMessage::decode(&frame.payload)?;
    let is_kv = matches!(message, StageMessage::KvLayer { .. });
    if is_kv != (frame.kind == FrameKind::Kv) {
        return Err(PipelineError::Protocol(format!("{} in a {} frame", message.name(), frame.kind.name())));
    }
    Ok(Some(message))
}
