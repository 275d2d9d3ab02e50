//! Our CUDA C kernels compiled at run time by NVRTC (through candle's cudarc), one module per
//! source file, and the small glue every launcher needs.
//!
//! Owns: compile options (PTX for the oldest architecture CUDA 13 supports, or for a newer one
//! where a module needs its instructions; the driver JIT-compiles it for the GPU at hand), the process-wide PTX cache (compiling costs ~100 ms per source and a
//! source never changes), and contiguous views of tensor storage. Does not own: any kernel.

use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaStream, CudaView, LaunchArgs};
use candle_core::cuda_backend::cudarc::nvrtc::{self, CompileOptions, Ptx};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, Layout, Storage, Tensor};

/// One CUDA C source file and its compiled PTX.
pub struct CudaModule {
    /// Module name in candle's per-device module cache.
    pub name: &'static str,
    pub file_name: &'static str,
    pub source: &'static str,
    /// Virtual architecture the PTX targets (`compute_75`, Turing, unless the module needs more).
    pub arch: &'static str,
    ptx: OnceLock<Result<String, String>>,
}

impl CudaModule {
    pub const fn new(name: &'static str, file_name: &'static str, source: &'static str) -> Self {
        Self::for_arch(name, file_name, source, "compute_75")
    }

    /// A module whose kernels need a newer architecture (launch them only on GPUs that have it).
    pub const fn for_arch(name: &'static str, file_name: &'static str, source: &'static str, arch: &'static str) -> Self {
        Self { name, file_name, source, arch, ptx: OnceLock::new() }
    }

    /// Compiles the source to PTX (no GPU needed, only libnvrtc).
    pub fn compile(&self) -> Result<Ptx, nvrtc::CompileError> {
        self.compile_source(self.source)
    }

    fn compile_source(&self, source: &str) -> Result<Ptx, nvrtc::CompileError> {
        let options = CompileOptions { arch: Some(self.arch), name: Some(self.file_name.into()), ..Default::default() };
        nvrtc::compile_ptx_with_opts(source, options)
    }

    /// A development aid for trying kernel variants without rebuilding: with
    /// `HEARTH_CUDA_SOURCE_DIR=dir`, a file `dir/<file_name>` replaces this module's whole source
    /// (the headers and .cu files that the module's `CUDA_SOURCE` concatenates, in its order).
    fn override_source(&self) -> Option<String> {
        let path = std::path::Path::new(&std::env::var_os("HEARTH_CUDA_SOURCE_DIR")?).join(self.file_name);
        let source = std::fs::read_to_string(&path).ok()?;
        eprintln!("hearth: compiling {} instead of the built-in {}", path.display(), self.file_name);
        Some(source)
    }

    /// The PTX, compiled once per process.
    pub fn ptx(&self) -> candle_core::Result<&str> {
        self.ptx
            .get_or_init(|| {
                let compiled = match self.override_source() {
                    Some(source) => self.compile_source(&source),
                    None => self.compile(),
                };
                compiled.map(|p| p.to_src()).map_err(|e| format!("{e:?}"))
            })
            .as_deref()
            .map_err(|e| candle_core::Error::Msg(format!("compiling the CUDA kernels of {}: {e}", self.file_name)))
    }

    /// A kernel of this module on `storage`'s device.
    pub fn function(&self, storage: &CudaStorage, kernel: &str) -> candle_core::Result<Kernel> {
        self.function_on(storage.device(), kernel)
    }

    /// A kernel of this module on `dev`.
    pub fn function_on(&self, dev: &candle_core::CudaDevice, kernel: &str) -> candle_core::Result<Kernel> {
        let func = dev.get_or_load_custom_func(kernel, self.name, self.ptx()?)?.into_cuda_function();
        Ok(Kernel { func, stream: dev.cuda_stream() })
    }
}

/// A loaded kernel and the device stream it launches on.
pub struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

/// Dynamic shared memory a block gets without opting in to more.
pub const DEFAULT_SHARED_BYTES: usize = 48 * 1024;

impl Kernel {
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }

    /// Lets launches of this kernel use `bytes` of dynamic shared memory: beyond
    /// [`DEFAULT_SHARED_BYTES`] a kernel must opt in (up to the device's per-block maximum).
    pub fn allow_shared_bytes(&self, bytes: usize) -> candle_core::Result<()> {
        if bytes > DEFAULT_SHARED_BYTES {
            use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
            let attribute = CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            self.func.set_attribute(attribute, bytes as i32).map_err(|e| candle_core::Error::Msg(format!("allowing {bytes} bytes of shared memory: {e:?}")))?;
        }
        Ok(())
    }
}

/// The contiguous elements of `storage` under `layout` (`what` names the operand in errors).
pub fn contiguous_view<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    let slice = storage.as_cuda_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// A CUDA tensor's storage and layout, as a launch reads it.
pub type Operand<'a> = (&'a CudaStorage, &'a Layout);

/// A tensor's storage (from `storage_and_layout`) as a CUDA operand (`op` names the op in the
/// error when the tensor is elsewhere).
pub fn cuda_operand<'a>(storage: &'a Storage, layout: &'a Layout, op: &str) -> candle_core::Result<Operand<'a>> {
    match storage {
        Storage::Cuda(s) => Ok((s, layout)),
        _ => candle_core::bail!("{op}: every operand must be on the GPU"),
    }
}

/// A grouped launch's flat output (matrix i's `[rows, nᵢ]` block at `rows * Σ_{j<i} nⱼ`) split
/// into one `[rows, nᵢ]` tensor per matrix, `heights` = the nᵢ in launch order.
pub fn split_group_output(flat: &Tensor, rows: usize, heights: impl IntoIterator<Item = usize>) -> candle_core::Result<Vec<Tensor>> {
    let mut offset = 0;
    heights
        .into_iter()
        .map(|n| {
            let out = flat.narrow(0, offset, rows * n)?.reshape((rows, n))?;
            offset += rows * n;
            Ok(out)
        })
        .collect()
}
