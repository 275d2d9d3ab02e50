//! Helpers of the pipeline's loopback tests: fixtures, the shared cluster key and short
//! timings, and `StageThread` (a `StageServer` on a thread behind its own listener).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;
use hearth_cluster::{ClusterKey, ConnectionTiming, Dialer, HandshakeConfig, NodeId, VersionInfo};
use hearth_engine::serve::{EngineConfig, EngineHandle, Executor, ModelInfo};
use hearth_models::{LoadOptions, ModelFiles, PipelineStage};
use hearth_pipeline::{
    PipelineExecutor, PipelineParams, PipelineTiming, PoolShape, StageLocation, StageOffer, StageServer, StageServerParams,
};
use hearth_tokenizer::Tokenizer;

pub const BLOCK_SIZE: usize = 4;
pub const NUM_BLOCKS: usize = 24;
pub const TOLERANCE: f32 = 1e-5;
pub const KEY: &str = "pipeline loopback test key, 32+ bytes";

pub fn fixture_dir(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden").join(arch)
}

pub fn smollm2() -> Option<PathBuf> {
    let assets = std::env::var_os("HEARTH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/hearth/assets"));
    let path = assets.join("smollm2-135m-instruct-q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping SmolLM2: {} is missing (run scripts/fetch-assets.sh)", path.display());
        None
    }
}

pub fn handshake() -> HandshakeConfig {
    HandshakeConfig {
        key: ClusterKey::from_text(KEY).unwrap(),
        node_id: NodeId::random(),
        version: VersionInfo::current(),
        timeout: Duration::from_secs(2),
    }
}

pub fn connection_timing() -> ConnectionTiming {
    ConnectionTiming { connect_timeout: Duration::from_secs(1), handshake_timeout: Duration::from_secs(2), io_timeout: Duration::from_secs(2) }
}

pub fn dialer() -> Dialer {
    Dialer { identity: handshake(), timing: connection_timing(), listen_port: None }
}

/// Generous: a loaded CI machine can starve a stage thread for seconds, and only the tests
/// that measure silence detection need a short bound ([`silence_timing`]).
pub fn timing() -> PipelineTiming {
    PipelineTiming { silence_timeout: Duration::from_secs(15) }
}

/// The short silence bound of the tests that measure how fast silence is detected.
pub fn silence_timing() -> PipelineTiming {
    PipelineTiming { silence_timeout: Duration::from_secs(2) }
}

pub fn server_params() -> StageServerParams {
    StageServerParams {
        handshake: handshake(),
        timing: connection_timing(),
        device: Device::Cpu,
        max_kv_bytes: 1 << 30,
        busy_interval: Duration::from_millis(200),
        offer: StageOffer { memory_bytes: 1 << 30, bandwidth_bytes_per_s: 1e10, flops_per_s: 1e11 },
    }
}

/// A `StageServer` on a thread; stopped (its connections closed) when dropped or stopped.
pub struct StageThread {
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StageThread {
    pub fn start(model_path: &Path, layers: Range<usize>) -> Self {
        let files = ModelFiles::open(model_path).unwrap();
        let stage = PipelineStage::load(&files, layers, &LoadOptions::default()).unwrap();
        let server = StageServer::new(stage, server_params());
        Self::spawn(server)
    }

    pub fn spawn(server: StageServer) -> Self {
        Self::spawn_at(server, "127.0.0.1:0".parse().unwrap())
    }

    /// A fixed-layer stage on `address` (a stage process restarted on its old port).
    pub fn start_at(model_path: &Path, layers: Range<usize>, address: SocketAddr) -> Self {
        let files = ModelFiles::open(model_path).unwrap();
        let stage = PipelineStage::load(&files, layers, &LoadOptions::default()).unwrap();
        Self::spawn_at(StageServer::new(stage, server_params()), address)
    }

    pub fn spawn_at(mut server: StageServer, address: SocketAddr) -> Self {
        let listener = TcpListener::bind(address).unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || server.serve(&listener, &stop).unwrap()
        });
        Self { address, stop, thread: Some(thread) }
    }

    /// A stage that loads whatever layers its coordinator names.
    pub fn start_on_demand(model_path: &Path) -> Self {
        let files = ModelFiles::open(model_path).unwrap();
        let server = StageServer::on_demand(files, LoadOptions::default(), server_params());
        Self::spawn(server)
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for StageThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An engine over `executor` for the fixture `files` (tokenizer from its GGUF), with the tests'
/// KV pool and at most `max_num_batched_tokens` tokens per step.
pub fn start_engine(executor: impl Executor, files: &ModelFiles, max_num_batched_tokens: usize) -> EngineHandle {
    let config = &files.config;
    let tokenizer = Arc::new(Tokenizer::from_gguf(&files.gguf.as_ref().unwrap().content).unwrap());
    let info = ModelInfo {
        name: "pipeline".into(),
        architecture: config.arch.name().to_string(),
        context_length: config.context_length,
        quantization: "F32".into(),
        num_parameters: 0,
        format: "gguf".into(),
        size_bytes: 0,
        created: 0,
    };
    let engine_config = EngineConfig {
        block_size: BLOCK_SIZE,
        num_blocks: NUM_BLOCKS,
        max_num_batched_tokens,
        max_num_seqs: 8,
        max_model_len: config.context_length.min(NUM_BLOCKS * BLOCK_SIZE),
        vocab_size: config.vocab_size,
        cache_salt: 7,
    };
    EngineHandle::spawn(Box::new(executor), tokenizer, info, engine_config).unwrap()
}

/// Where stage 0 of a test pipeline runs (the others are `StageThread`s).
#[derive(Clone, Copy, PartialEq)]
pub enum Stage0 {
    Remote,
    InCoordinator,
}

/// A pipeline over `ranges` of `model_path` on the CPU with the tests' pool and timings.
pub fn open_pipeline(model_path: &Path, ranges: &[Range<usize>], stage0: Stage0) -> (PipelineExecutor, Vec<StageThread>) {
    let files = ModelFiles::open(model_path).unwrap();
    let mut threads = Vec::new();
    let stages = ranges
        .iter()
        .enumerate()
        .map(|(stage_idx, layers)| {
            let location = if stage_idx == 0 && stage0 == Stage0::InCoordinator {
                StageLocation::Local(Box::new(PipelineStage::load(&files, layers.clone(), &LoadOptions::default()).unwrap()))
            } else {
                let thread = StageThread::start(model_path, layers.clone());
                let address = thread.address;
                threads.push(thread);
                StageLocation::Remote(address)
            };
            (layers.clone(), location)
        })
        .collect();
    let dialer = dialer();
    let params = PipelineParams {
        config: &files.config,
        stages,
        pool: PoolShape { num_blocks: NUM_BLOCKS, block_size: BLOCK_SIZE },
        dialer: &dialer,
        timing: timing(),
        device: Device::Cpu,
    };
    (PipelineExecutor::connect(params).unwrap(), threads)
}
