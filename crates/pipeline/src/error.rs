//! The pipeline crate's one error type. A failure of a remote stage names the stage (index,
//! layers, address) so that `hearth serve`'s error says which machine to look at.

use std::ops::Range;

/// Which stage of the pipeline, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageName {
    pub stage_idx: usize,
    pub layers: Range<usize>,
    /// `host:port` of a remote stage; `None` for a stage in this process.
    pub address: Option<String>,
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pipeline stage {} (layers {}..{}", self.stage_idx, self.layers.start, self.layers.end)?;
        match &self.address {
            Some(address) => write!(f, " at {address})"),
            None => write!(f, ", in this process)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A payload that does not decode: wrong tag, truncated, inconsistent lengths. The
    /// connection it came from is closed.
    #[error("malformed pipeline message: {0}")]
    Malformed(String),
    /// A well-formed message that breaks the protocol (unexpected at this point, wrong step).
    #[error("pipeline protocol violation: {0}")]
    Protocol(String),
    /// A stage failed, went silent or its connection broke.
    #[error("{stage}: {reason}")]
    Stage { stage: StageName, reason: String },
    /// A stage (or the chain of stages) does not fit the model or the KV pool.
    #[error("pipeline configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] hearth_models::ModelError),
    #[error(transparent)]
    Cluster(#[from] hearth_cluster::ClusterError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, PipelineError>;

impl From<PipelineError> for hearth_engine::EngineError {
    fn from(err: PipelineError) -> Self {
        hearth_engine::EngineError::Execution(err.to_string())
    }
}
