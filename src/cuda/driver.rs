//! The real GPU through cudarc's driver API: the context, the stream every kernel runs on, the
//! modules loaded lazily from the embedded cubins (PTX where the cubin does not fit the GPU), and
//! device memory.

use super::{families, Element, Launch, CUDA_BUILT};
use crate::{Error, Result};
use cudarc::driver::{sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// What `ptrag-engine info` reports about the GPU.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
    pub driver_version: i32,
    pub multiprocessors: i32,
}

/// The driver's CUDA version as `1000 * major + 10 * minor` (13000 for 13.0).
fn driver_version() -> Result<i32> {
    let mut version = 0;
    // SAFETY: the driver library is loaded (checked by the caller) and `version` outlives the call.
    unsafe { sys::cuDriverGetVersion(&mut version) }.result().map_err(|e| driver_error("driver version", e))?;
    Ok(version)
}

pub struct Driver {
    pub info: DeviceInfo,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// cuBLAS, created at the first product (the library is loaded then).
    blas: std::sync::OnceLock<cudarc::cublas::CudaBlas>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// Dynamic shared memory one block may use (opted in above the default 48 KiB, see `function`).
    shared_limit: u32,
    /// Page-locked buffers for `read_later`, kept and reused: allocating and freeing page-locked
    /// memory every step is slow, and freeing it may wait for the GPU.
    pinned: Arc<Mutex<Vec<PinnedHostSlice<u8>>>>,
}

fn driver_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

/// Keeps device memory freed by the engine in the stream-ordered allocator's pool. With the driver's
/// default release threshold (0), every wait for the stream or an event (each step's readback) hands
/// the pool's free memory back, and the next step's allocations map it again.
fn keep_freed_memory(context: &CudaContext) -> Result<()> {
    let pools = context
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)
        .map_err(|e| driver_error("device attribute", e))?;
    if pools == 0 {
        return Ok(()); // allocations are synchronous cuMemAlloc: no pool to keep
    }
    let mut keep = u64::MAX;
    // SAFETY: the device is this context's own; the release threshold's value type is cuuint64_t,
    // and `keep` outlives the call.
    unsafe {
        let pool = cudarc::driver::result::device::get_default_mem_pool(context.cu_device()).map_err(|e| driver_error("memory pool", e))?;
        let attribute = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
        cudarc::driver::result::mem_pool::set_attribute(pool, attribute, (&mut keep as *mut u64).cast())
    }
    .map_err(|e| driver_error("memory pool release threshold", e))
}

impl Driver {
    pub fn new(ordinal: usize) -> Result<Self> {
        if !CUDA_BUILT {
            return Err(Error::Device("this binary was built without nvcc, so it has no GPU kernels (see tools/install_cuda.sh)".into()));
        }
        // SAFETY: only checks whether libcuda can be loaded; CudaContext::new panics when it cannot.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Device("no CUDA driver (libcuda.so) on this machine".into()));
        }
        let context = CudaContext::new(ordinal).map_err(|e| driver_error("no usable GPU", e))?;
        // SAFETY: every allocation, copy, kernel and cuBLAS call of this engine goes to the one
        // stream below, in order, so no use needs ordering against another stream. Without this,
        // cudarc creates and destroys two CUDA events per allocation (a step makes thousands), for
        // synchronisation between streams we never have.
        unsafe { context.disable_event_tracking() };
        let attribute = |a| context.attribute(a).map_err(|e| driver_error("device attribute", e));
        let info = DeviceInfo {
            name: context.name().map_err(|e| driver_error("device name", e))?,
            compute_capability: context.compute_capability().map_err(|e| driver_error("compute capability", e))?,
            memory_bytes: context.total_mem().map_err(|e| driver_error("device memory", e))?,
            driver_version: driver_version()?,
            multiprocessors: attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        };
        if info.compute_capability < (7, 5) {
            let (major, minor) = info.compute_capability;
            return Err(Error::Device(format!(
                "{} has compute capability {major}.{minor}; the kernels need 7.5 or newer (Turing on)",
                info.name
            )));
        }
        keep_freed_memory(&context)?;
        let shared_limit = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
        let stream = context.default_stream();
        Ok(Driver {
            info,
            context,
            stream,
            blas: std::sync::OnceLock::new(),
            modules: Mutex::default(),
            functions: Mutex::default(),
            shared_limit,
            pinned: Arc::default(),
        })
    }

    pub fn upload<T: Element>(&self, data: &[T]) -> Result<DeviceSlice<T>> {
        let slice = self.stream.clone_htod(data).map_err(|e| driver_error("copy to the GPU", e))?;
        Ok(DeviceSlice { slice, stream: self.stream.clone() })
    }

    /// Copies `src` into `dst` from element `offset` on, and waits for the copy, so that `src` may be
    /// reused or freed at once (an upload in chunks stages one chunk at a time).
    pub fn copy_into<T: Element>(&self, dst: &mut DeviceSlice<T>, offset: usize, src: &[T]) -> Result<()> {
        let mut view = dst.slice.slice_mut(offset..offset + src.len());
        self.stream.memcpy_htod(src, &mut view).map_err(|e| driver_error("copy to the GPU", e))?;
        self.synchronize()
    }

    pub fn zeros<T: Element>(&self, len: usize) -> Result<DeviceSlice<T>> {
        let slice = self.stream.alloc_zeros(len).map_err(|e| driver_error(&format!("allocating {len} elements on the GPU"), e))?;
        Ok(DeviceSlice { slice, stream: self.stream.clone() })
    }

    pub fn unfilled<T: Element>(&self, len: usize) -> Result<DeviceSlice<T>> {
        // SAFETY: stream-ordered memory whose contents are undefined: the caller's kernels write
        // every element before anything reads it (`Gpu::unfilled`), and any bit pattern is a valid
        // `Element` (plain numbers), so even a stray read is no memory unsafety.
        let slice = unsafe { self.stream.alloc(len) }.map_err(|e| driver_error(&format!("allocating {len} elements on the GPU"), e))?;
        Ok(DeviceSlice { slice, stream: self.stream.clone() })
    }

    pub fn download<T: Element>(&self, buffer: &DeviceSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(&buffer.slice).map_err(|e| driver_error("copy from the GPU", e))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_error("synchronize", e))
    }

    /// Queues copies of `buffers` into pinned host memory and an event after them: the host waits
    /// (`Readback::wait`) only for the work queued so far, not for what is queued later.
    pub fn read_later<T: Element>(&self, buffers: &[&DeviceSlice<T>]) -> Result<Readback<T>> {
        let lens: Vec<usize> = buffers.iter().map(|b| b.len()).collect();
        let bytes = (lens.iter().sum::<usize>() * std::mem::size_of::<T>()).max(PINNED_BYTES);
        let reused = {
            let mut pool = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
            pool.iter().position(|b| b.len() >= bytes).map(|i| pool.swap_remove(i))
        };
        let mut host = match reused {
            Some(host) => host,
            // SAFETY: page-locked host memory (not write-combined: the host reads it); every element
            // read later is written first by the copies below, which `wait` waits for.
            None => unsafe { self.context.alloc_pinned_with_flags::<u8>(bytes, 0) }.map_err(|e| driver_error("pinned memory", e))?,
        };
        let raw = host.as_mut_slice().map_err(|e| driver_error("pinned memory", e))?;
        // SAFETY: the allocation is page-aligned and holds at least `lens` elements of T, a plain
        // number type (`Element`: valid for any bits); `raw` is not used while this view lives.
        let slice = unsafe { std::slice::from_raw_parts_mut(raw.as_mut_ptr().cast::<T>(), raw.len() / std::mem::size_of::<T>()) };
        let mut offset = 0;
        for (b, &len) in buffers.iter().zip(&lens) {
            // A plain host slice: the copy is queued, not waited for (the memory is pinned, so it is
            // asynchronous).
            self.stream.memcpy_dtoh(&b.slice, &mut slice[offset..offset + len]).map_err(|e| driver_error("copy from the GPU", e))?;
            offset += len;
        }
        let blocking = Some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC);
        let done = self.stream.record_event(blocking).map_err(|e| driver_error("recording an event", e))?;
        Ok(Readback { host: Some(host), done, lens, pool: self.pinned.clone(), element: std::marker::PhantomData })
    }

    fn function(&self, kernel: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().expect("function cache").get(kernel) {
            return Ok(f.clone());
        }
        let family = families()
            .iter()
            .find(|f| f.kernels.contains(&kernel))
            .ok_or_else(|| Error::Device(format!("no kernel named {kernel} in kernels/*.cu")))?;
        let module = {
            let mut modules = self.modules.lock().expect("module cache");
            match modules.get(family.name) {
                Some(m) => m.clone(),
                None => {
                    // The sm_90 cubin runs on Hopper; elsewhere the driver compiles the compute_75 PTX.
                    let image = if self.info.compute_capability == (9, 0) {
                        cudarc::nvrtc::Ptx::from_binary(family.cubin.to_vec())
                    } else {
                        cudarc::nvrtc::Ptx::from_src(family.ptx)
                    };
                    let m = self.context.load_module(image).map_err(|e| driver_error(&format!("loading kernels/{}.cu", family.name), e))?;
                    modules.insert(family.name, m.clone());
                    m
                }
            }
        };
        let f = module.load_function(kernel).map_err(|e| driver_error(kernel, e))?;
        // Let kernels use more than the default 48 KiB of dynamic shared memory where the GPU has it.
        f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, self.shared_limit as i32)
            .map_err(|e| driver_error(kernel, e))?;
        self.functions.lock().expect("function cache").insert(kernel, f.clone());
        Ok(f)
    }

    pub fn launch(&self, kernel: &'static str, launch: Launch, params: &mut [*mut c_void]) -> Result<()> {
        if launch.shared_bytes > self.shared_limit {
            let why =
                format!("needs {} bytes of shared memory per block; {} has {}", launch.shared_bytes, self.info.name, self.shared_limit);
            return Err(Error::Kernel { kernel, why });
        }
        let f = self.function(kernel)?;
        let [x, y, z] = launch.grid;
        // SAFETY: `params` are the kernel's parameters in its declared order (the launchers build
        // them from the signature), device pointers come from live `DeviceSlice`s on this context
        // whose sizes the launchers checked, and the launch goes to this context's own stream.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                (x, y, z),
                (launch.block, 1, 1),
                launch.shared_bytes,
                self.stream.cu_stream(),
                params,
            )
        }
        .map_err(|e| Error::Kernel { kernel, why: format!("{e:?}") })
    }
}

impl Driver {
    /// cuBLAS on this driver's stream, loaded at the first call; an error when the library is missing.
    pub fn blas(&self) -> Result<&cudarc::cublas::CudaBlas> {
        if let Some(blas) = self.blas.get() {
            return Ok(blas);
        }
        // SAFETY: only tries to open the library (cudarc's CudaBlas::new panics without it).
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Device("cuBLAS (libcublas.so) not found; add its folder to LD_LIBRARY_PATH".into()));
        }
        let blas = cudarc::cublas::CudaBlas::new(self.stream.clone()).map_err(|e| driver_error("loading cuBLAS", e))?;
        Ok(self.blas.get_or_init(|| blas))
    }

    /// Row-major `c[m, n] (+)= op(a)[m, k] op(b)[k, n]` with cuBLAS. cuBLAS is column-major, and a
    /// row-major matrix read column-major is its transpose, so this asks for `c^T = op(b)^T op(a)^T`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        a: &DeviceSlice<f32>,
        b: &DeviceSlice<f32>,
        c: &mut DeviceSlice<f32>,
        [m, k, n]: [usize; 3],
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    ) -> Result<()> {
        use cudarc::cublas::{sys::cublasOperation_t as Op, Gemm, GemmConfig};
        let blas = self.blas()?;
        let op = |t: bool| if t { Op::CUBLAS_OP_T } else { Op::CUBLAS_OP_N };
        let int = |v: usize| i32::try_from(v).map_err(|_| Error::Shape { op: "matmul", why: format!("{v} exceeds cuBLAS's 32-bit sizes") });
        let cfg = GemmConfig {
            transa: op(trans_b),
            transb: op(trans_a),
            m: int(n)?,
            n: int(m)?,
            k: int(k)?,
            alpha: 1.0f32,
            lda: int(if trans_b { k } else { n })?,
            ldb: int(if trans_a { m } else { k })?,
            beta: if accumulate { 1.0 } else { 0.0 },
            ldc: int(n)?,
        };
        // SAFETY: the caller (`cuda::gemm::matmul`) checked that a, b and c hold m*k, k*n and m*n
        // elements; the leading dimensions above describe exactly those row-major layouts, and all
        // three slices live on this driver's stream, which cuBLAS was created on.
        unsafe { blas.gemm(cfg, &b.slice, &a.slice, &mut c.slice) }.map_err(|e| driver_error("cuBLAS sgemm", e))
    }
}

/// The smallest page-locked buffer `read_later` allocates (a step reads a few scalars).
const PINNED_BYTES: usize = 4096;

/// Copies on their way to the host (`Driver::read_later`).
pub struct Readback<T: Element> {
    /// Back to `pool` when dropped.
    host: Option<PinnedHostSlice<u8>>,
    /// Recorded after the copies (event tracking is off, so nothing else records it).
    done: CudaEvent,
    lens: Vec<usize>,
    pool: Arc<Mutex<Vec<PinnedHostSlice<u8>>>>,
    element: std::marker::PhantomData<T>,
}

impl<T: Element> Drop for Readback<T> {
    /// The copies must be done before the buffer is reused (also when `wait` was never called).
    fn drop(&mut self) {
        if self.done.synchronize().is_ok() {
            if let Some(host) = self.host.take() {
                self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(host);
            }
        }
    }
}

impl<T: Element> Readback<T> {
    /// Waits for the copies and returns one vector per buffer.
    pub fn wait(self) -> Result<Vec<Vec<T>>> {
        self.done.synchronize().map_err(|e| driver_error("waiting for the GPU", e))?;
        let raw = self.host.as_ref().expect("present until dropped").as_slice().map_err(|e| driver_error("pinned memory", e))?;
        // SAFETY: as in `read_later`: aligned, long enough, and written by the copies just waited for.
        let all = unsafe { std::slice::from_raw_parts(raw.as_ptr().cast::<T>(), raw.len() / std::mem::size_of::<T>()) };
        let mut offset = 0;
        Ok(self
            .lens
            .iter()
            .map(|&len| {
                offset += len;
                all[offset - len..offset].to_vec()
            })
            .collect())
    }
}

/// A device allocation with the stream it belongs to.
pub struct DeviceSlice<T: Element> {
    slice: CudaSlice<T>,
    stream: Arc<CudaStream>,
}

impl<T: Element> DeviceSlice<T> {
    pub fn len(&self) -> usize {
        self.slice.len()
    }
    pub fn address(&self) -> u64 {
        let (address, _sync) = self.slice.device_ptr(&self.stream);
        address
    }
}
