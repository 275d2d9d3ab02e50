//! hearth's own compute kernels, each a fast path beside a slow reference twin.
//!
//! Owns: paged attention over a block-structured KV pool (CPU custom op + candle-ops reference);
//! quantized matmul for the ggml block types candle runs without SIMD (Q4_1, Q5_0, Q5_1) and for
//! Q8_0 (AVX2 tiles on a small work-sharing pool + dequantize-and-matmul reference). Timings and
//! their method: `PERF.md`. Fused elementwise steps of a block (`fused`: add + RMSNorm, RoPE +
//! KV write, gated activation; CUDA bodies with references). Device graphs (`graph`): record a
//! step's GPU work once, replay it. `quant_matvec` and `dense_matvec`: GPU products of quantized
//! and of BF16/F16 weights with a few activation rows (generation). `nvrtc`: compiling our CUDA C sources at run time.
//! Does not own: model structure, weight loading, scheduling. Kernels see tensors and plain
//! metadata (block tables, sequence lengths), never requests.
//!
//! Feature flags for accelerators (`cuda`, `metal`) belong here and in the CLI only.

pub mod dense_matvec;
pub mod fused;
pub mod graph;
#[cfg(all(test, feature = "cuda"))]
mod graph_tests;
pub mod greedy;
pub mod math;
pub mod nccl;
#[cfg(feature = "cuda")]
pub mod nvrtc;
pub mod paged_attention;
pub mod prefill_attention;
pub mod quant_matmul;
pub mod quant_matvec;
pub mod quant_mma;

pub use paged_attention::{
    kernel_metadata, paged_attention, paged_attention_reference, write_kv, AttentionLayout, SequenceSpan,
};
pub use quant_matmul::QuantizedMatrix;

/// Errors raised by hearth's kernels.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("invalid attention metadata: {0}")]
    InvalidMetadata(String),
    #[error("device graph: {0}")]
    Graph(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, KernelError>;

/// Makes `device`'s CUDA context current on the calling thread (nothing to do elsewhere).
///
/// cudarc binds a GPU's context before every call it makes but one: freeing. A tensor of one GPU
/// dropped on a thread with no current context fails to free, and the failure is reported by
/// that GPU's next call (`CUDA_ERROR_INVALID_CONTEXT`). Code that hands tensors of several GPUs
/// between threads binds the right device before dropping them.
pub fn bind_device_to_thread(device: &candle_core::Device) -> Result<()> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => dev
            .cuda_stream()
            .context()
            .bind_to_thread()
            .map_err(|e| KernelError::Candle(candle_core::Error::Msg(format!("binding {device:?} to this thread: {e}")))),
        _ => Ok(()),
    }
}

/// The GPU of a device test: `None` (the test prints why and passes) without one, unless
/// `HEARTH_REQUIRE_GPU=1`, which makes a missing GPU a failure.
#[cfg(all(test, feature = "cuda"))]
pub(crate) fn test_gpu() -> Option<candle_core::Device> {
    match candle_core::Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(e) if std::env::var("HEARTH_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("HEARTH_REQUIRE_GPU=1 but no CUDA device: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Max |fast - reference| relative to the reference's largest |value|: how GPU tests compare a
/// kernel with its F32 reference (summation order and the final rounding differ).
#[cfg(all(test, feature = "cuda"))]
pub(crate) fn relative_diff(fast: &candle_core::Tensor, slow: &candle_core::Tensor) -> f32 {
    use candle_core::DType;
    let fast = fast.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let slow = slow.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let scale = slow.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-6);
    (fast - slow).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() / scale
}
