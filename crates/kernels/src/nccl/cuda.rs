//! The NCCL FFI, loaded with `dlopen`, and the CUDA side of [`super::NcclComm`].

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::{sys::CUstream, DevicePtr};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::{NcclId, NcclInfo};
use crate::nvrtc::contiguous_view;
use crate::{KernelError, Result};

type NcclResult = c_int;
type RawComm = *mut c_void;

#[repr(C)]
#[derive(Clone, Copy)]
struct RawUniqueId {
    internal: [c_char; 128],
}

// nccl.h: ncclDataType_t and ncclRedOp_t values (stable since NCCL 2.10).
const NCCL_FLOAT16: c_int = 6;
const NCCL_FLOAT32: c_int = 7;
const NCCL_BFLOAT16: c_int = 9;
const NCCL_SUM: c_int = 0;
/// ncclInProgress: a non-blocking operation has not finished (not an error).
const NCCL_IN_PROGRESS: NcclResult = 7;

/// The NCCL entry points hearth uses.
struct Library {
    path: String,
    _lib: libloading::Library,
    get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult,
    get_unique_id: unsafe extern "C" fn(*mut RawUniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut RawComm, c_int, RawUniqueId, c_int) -> NcclResult,
    comm_abort: unsafe extern "C" fn(RawComm) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(RawComm) -> NcclResult,
    comm_get_async_error: unsafe extern "C" fn(RawComm, *mut NcclResult) -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, CUstream) -> NcclResult,
    all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, RawComm, CUstream) -> NcclResult,
}

fn error(message: String) -> KernelError {
    KernelError::Candle(candle_core::Error::Msg(message))
}

impl Library {
    fn open() -> std::result::Result<Self, String> {
        let candidates: Vec<String> = match std::env::var("HEARTH_NCCL_LIBRARY") {
            Ok(path) if !path.is_empty() => vec![path],
            _ => vec!["libnccl.so.2".into(), "libnccl.so".into()],
        };
        let mut failures = Vec::new();
        for path in &candidates {
            // SAFETY: loading NCCL runs its initializers, which have no preconditions.
            match unsafe { libloading::Library::new(path) } {
                Ok(lib) => return Self::bind(path.clone(), lib),
                Err(e) => failures.push(format!("{path}: {e}")),
            }
        }
        Err(format!(
            "NCCL is not available: {} (install NCCL, e.g. `pip install nvidia-nccl-cu13`, and put its lib directory on \
             LD_LIBRARY_PATH, or set HEARTH_NCCL_LIBRARY to the libnccl.so.2 file)",
            failures.join("; ")
        ))
    }

    fn bind(path: String, lib: libloading::Library) -> std::result::Result<Self, String> {
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: the symbol's type is the declaration in nccl.h.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{path} lacks `{}` ({e}); NCCL 2.10 or newer is required", $name))?
            };
        }
        Ok(Self {
            get_version: symbol!("ncclGetVersion"),
            get_unique_id: symbol!("ncclGetUniqueId"),
            comm_init_rank: symbol!("ncclCommInitRank"),
            comm_abort: symbol!("ncclCommAbort"),
            comm_destroy: symbol!("ncclCommDestroy"),
            comm_get_async_error: symbol!("ncclCommGetAsyncError"),
            get_error_string: symbol!("ncclGetErrorString"),
            all_reduce: symbol!("ncclAllReduce"),
            all_gather: symbol!("ncclAllGather"),
            path,
            _lib: lib,
        })
    }

    /// `Ok` for ncclSuccess, else an error naming `what` and NCCL's message.
    fn check(&self, code: NcclResult, what: &str) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
        let message = unsafe { CStr::from_ptr((self.get_error_string)(code)) }.to_string_lossy().into_owned();
        Err(error(format!("NCCL {what} failed: {message} (code {code})")))
    }
}

fn library() -> Result<&'static Library> {
    static LIBRARY: OnceLock<std::result::Result<Library, String>> = OnceLock::new();
    LIBRARY.get_or_init(Library::open).as_ref().map_err(|e| error(e.clone()))
}

pub fn probe() -> Result<NcclInfo> {
    let lib = library()?;
    let mut version = 0;
    // SAFETY: writes one int.
    lib.check(unsafe { (lib.get_version)(&mut version) }, "ncclGetVersion")?;
    Ok(NcclInfo { library: lib.path.clone(), version })
}

pub fn unique_id() -> Result<NcclId> {
    let lib = library()?;
    let mut raw = RawUniqueId { internal: [0; 128] };
    // SAFETY: writes the 128-byte id.
    lib.check(unsafe { (lib.get_unique_id)(&mut raw) }, "ncclGetUniqueId")?;
    Ok(NcclId(raw.internal.map(|c| c as u8)))
}

/// A communicator handle; NCCL allows abort from any thread, calls are serialized per rank by
/// the caller (one rank = one thread).
pub struct Comm {
    raw: RawComm,
    device: candle_core::CudaDevice,
    aborted: AtomicBool,
    /// Serializes abort against destroy.
    teardown: Mutex<()>,
}

// SAFETY: an NCCL communicator may be used from any thread; hearth issues a rank's collectives
// from one thread at a time (the rank's), and abort/destroy are serialized by `teardown`.
unsafe impl Send for Comm {}
unsafe impl Sync for Comm {}

impl Comm {
    pub fn init_rank(device: &Device, id: &NcclId, rank: usize, world_size: usize) -> Result<Self> {
        let lib = library()?;
        let Device::Cuda(dev) = device else {
            return Err(error(format!("NCCL rank {rank}: needs a CUDA device, got {device:?}")));
        };
        // NCCL binds the communicator to the calling thread's current device.
        dev.cuda_stream().context().bind_to_thread().map_err(|e| error(format!("NCCL rank {rank}: binding the device: {e}")))?;
        let mut raw = std::ptr::null_mut();
        let id = RawUniqueId { internal: id.0.map(|b| b as c_char) };
        // SAFETY: writes one communicator handle; the id is passed by value as nccl.h declares.
        let code = unsafe { (lib.comm_init_rank)(&mut raw, world_size as c_int, id, rank as c_int) };
        lib.check(code, &format!("ncclCommInitRank (rank {rank} of {world_size})"))?;
        Ok(Self { raw, device: dev.clone(), aborted: AtomicBool::new(false), teardown: Mutex::new(()) })
    }

    fn live(&self) -> Result<()> {
        match self.aborted.load(Ordering::Acquire) {
            true => Err(error("NCCL communicator was aborted (another rank failed)".into())),
            false => Ok(()),
        }
    }

    pub fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        self.live()?;
        self.on_device(x)?;
        Ok(x.apply_op1_no_bwd(&Collective { comm: self, kind: Kind::AllReduceSum })?)
    }

    pub fn all_gather(&self, x: &Tensor, world_size: usize) -> Result<Tensor> {
        self.live()?;
        self.on_device(x)?;
        Ok(x.apply_op1_no_bwd(&Collective { comm: self, kind: Kind::AllGather { world_size } })?)
    }

    fn on_device(&self, x: &Tensor) -> Result<()> {
        match x.device() {
            Device::Cuda(d) if d.same_device(&self.device) => Ok(()),
            other => Err(error(format!("NCCL: tensor on {other:?}, not on the communicator's device {:?}", self.device.location()))),
        }
    }

    pub fn abort(&self) {
        let _guard = self.teardown.lock();
        if !self.aborted.swap(true, Ordering::AcqRel) {
            if let Ok(lib) = library() {
                // SAFETY: the handle is live (not yet aborted or destroyed).
                unsafe { (lib.comm_abort)(self.raw) };
            }
        }
    }

    pub fn check_async_error(&self) -> Result<()> {
        self.live()?;
        let lib = library()?;
        let mut state = 0;
        // SAFETY: live handle; writes one int.
        lib.check(unsafe { (lib.comm_get_async_error)(self.raw, &mut state) }, "ncclCommGetAsyncError")?;
        match state {
            0 | NCCL_IN_PROGRESS => Ok(()),
            code => lib.check(code, "a collective (asynchronous error)"),
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        let _guard = self.teardown.lock();
        if !self.aborted.load(Ordering::Acquire) {
            if let Ok(lib) = library() {
                // SAFETY: live handle, destroyed once.
                unsafe { (lib.comm_destroy)(self.raw) };
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    AllReduceSum,
    AllGather { world_size: usize },
}

struct Collective<'a> {
    comm: &'a Comm,
    kind: Kind,
}

impl CustomOp1 for Collective<'_> {
    fn name(&self) -> &'static str {
        "nccl-collective"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives run on CUDA tensors only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match x.dtype() {
            DType::F32 => self.launch::<f32>(x, layout, NCCL_FLOAT32),
            DType::BF16 => self.launch::<half::bf16>(x, layout, NCCL_BFLOAT16),
            DType::F16 => self.launch::<half::f16>(x, layout, NCCL_FLOAT16),
            other => candle_core::bail!("NCCL collectives: unsupported dtype {other:?}"),
        }
    }
}

impl Collective<'_> {
    fn launch<T: CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
        &self,
        x: &CudaStorage,
        layout: &Layout,
        nccl_type: c_int,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let lib = library().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let input = contiguous_view::<T>(x, layout, "NCCL collective input")?;
        let count = layout.shape().elem_count();
        let dev = x.device().clone();
        let stream = dev.cuda_stream();
        let (out_count, out_shape) = match self.kind {
            Kind::AllReduceSum => (count, layout.shape().clone()),
            Kind::AllGather { world_size } => {
                let mut dims = vec![world_size];
                dims.extend_from_slice(layout.shape().dims());
                (count * world_size, Shape::from(dims))
            }
        };
        // SAFETY: NCCL writes every element of the output.
        let out = unsafe { dev.alloc::<T>(out_count.max(1))? };
        let (send, _send_guard) = input.device_ptr(&stream);
        let (recv, _recv_guard) = out.device_ptr(&stream);
        let (send, recv) = (send as *const c_void, recv as *mut c_void);
        let raw_stream = stream.cu_stream();
        stream.context().bind_to_thread().map_err(|e| candle_core::Error::Msg(format!("NCCL: binding the device: {e}")))?;
        // SAFETY: send holds `count` elements, recv `out_count`; both on this communicator's
        // device; the stream is the device's candle stream.
        let code = unsafe {
            match self.kind {
                Kind::AllReduceSum => (lib.all_reduce)(send, recv, count, nccl_type, NCCL_SUM, self.comm.raw, raw_stream),
                Kind::AllGather { .. } => (lib.all_gather)(send, recv, count, nccl_type, self.comm.raw, raw_stream),
            }
        };
        lib.check(code, "collective launch").map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        drop((_send_guard, _recv_guard));
        Ok((CudaStorage::wrap_cuda_slice(out, dev), out_shape))
    }
}
