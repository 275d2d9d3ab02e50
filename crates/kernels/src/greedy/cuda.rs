//! The CUDA launch of `greedy.cu`: a candle custom op, one block per row.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape, Tensor};

use super::CUDA_SOURCE;
use crate::nvrtc::{contiguous_view, CudaModule};
use crate::Result;

pub static MODULE: CudaModule = CudaModule::new("hearth_greedy", "greedy.cu", CUDA_SOURCE);

/// Threads per block; matches GREEDY_THREADS in greedy.cu.
const THREADS: u32 = 1024;

struct GreedyTokens;

impl CustomOp1 for GreedyTokens {
    fn name(&self) -> &'static str {
        "greedy-tokens"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("greedy_tokens: the op has only a CUDA body; the CPU runs the reference")
    }

    fn cuda_fwd(&self, logits: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, vocab) = layout.shape().dims2()?;
        let view = contiguous_view::<f32>(logits, layout, "greedy_tokens: logits")?;
        let dev = logits.device().clone();
        // SAFETY: one entry per row, each written by its block (rows > 0 checked by the caller).
        let out = unsafe { dev.alloc::<u32>(rows)? };
        let func = MODULE.function(logits, "greedy_tokens_f32")?;
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let vocab_u32 = vocab as u32;
        let mut b = func.builder();
        b.arg(&view).arg(&out).arg(&vocab_u32);
        // SAFETY: argument order and types match greedy_tokens_f32; view holds rows x vocab.
        unsafe { b.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(rows)))
    }
}

pub fn greedy_tokens(logits: &Tensor) -> Result<Tensor> {
    if logits.dim(0)? == 0 {
        // A GPU cannot allocate an empty buffer.
        return Ok(Tensor::zeros(0, candle_core::DType::U32, &candle_core::Device::Cpu)?);
    }
    Ok(logits.apply_op1_no_bwd(&GreedyTokens)?)
}
