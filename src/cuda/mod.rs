//! The CUDA engine: the kernels of `kernels/*.cu` launched on a GPU through cudarc, or run on the
//! CPU by the emulator (the same source compiled with g++, see `kernels/emulation/`), behind one
//! small interface. Each family module (`attention`, `energy`, ...) is the twin of `src/cpu/<family>.rs`:
//! the same functions in the same argument order, on [`Buffer`]s instead of slices.
//!
//! - [`Gpu`] is where kernels run: [`Gpu::cuda`] (a real device) or [`Gpu::emulated`] (the CPU,
//!   for the tests; threads in forward or reverse order).
//! - [`Buffer`] is memory on that device; [`Args`] lists a launch's arguments in the kernel's order,
//!   inputs borrowed shared and outputs borrowed mutably.
//! - Nothing here panics on a missing GPU or driver: every failure is an [`Error`].

pub mod attention;
mod driver;
pub mod elementwise;
mod emulator;
pub mod energy;
pub mod gemm;
#[rustfmt::skip]
pub mod kernels;
pub mod norm;
pub mod optim;
#[rustfmt::skip]
pub mod params;
pub mod retrieval;
pub mod selection;
pub mod tensor;

use crate::{Error, Result};
use std::ffi::{c_char, c_void};
use std::marker::PhantomData;
use std::sync::Arc;

pub use driver::DeviceInfo;

/// One `kernels/<name>.cu`: its kernels and, when nvcc was found at build time, its sm_90 cubin and
/// compute_75 PTX.
pub struct KernelFamily {
    pub name: &'static str,
    pub kernels: &'static [&'static str],
    pub cubin: &'static [u8],
    pub ptx: &'static str,
}

/// The launch record the emulated entry points take (`EmuLaunch` in `cuda_emulation.h`).
#[repr(C)]
struct EmuLaunch {
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    reverse_order: u32,
    workers: u32,
}

type EmulatedEntry = unsafe extern "C" fn(*const EmuLaunch, *mut *mut c_void, *mut c_char, usize) -> i32;

mod generated {
    use super::{EmuLaunch, EmulatedEntry, KernelFamily};
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Whether build.rs compiled the kernels with nvcc (the binary can run them on a GPU).
pub const CUDA_BUILT: bool = generated::CUDA_BUILT;

/// The kernel families compiled into this binary.
pub fn families() -> &'static [KernelFamily] {
    generated::FAMILIES
}

/// Whether the emulated kernels were built (they need a C++20 compiler at build time).
pub fn emulation_built() -> bool {
    !generated::EMULATED.is_empty()
}

/// The order in which the emulator runs the threads of a block (and the blocks of a grid): a kernel
/// that is missing a barrier reads poisoned shared memory in at least one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadOrder {
    Forward,
    Reverse,
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: u32,
    pub shared_bytes: u32,
}

/// CUDA's grid limits in blocks (x, y, z), checked for every launch so that the emulator refuses
/// what a GPU would.
const GRID_LIMITS: [u32; 3] = [i32::MAX as u32, 65_535, 65_535];

impl Launch {
    pub fn new(grid: [usize; 3], block: u32, shared_floats: usize) -> Result<Self> {
        let blocks = grid.map(|n| u32::try_from(n).ok().filter(|&n| n > 0));
        let shared_bytes = shared_floats.checked_mul(4).and_then(|b| u32::try_from(b).ok());
        match (blocks, shared_bytes) {
            ([Some(x), Some(y), Some(z)], Some(shared_bytes)) => Ok(Launch { grid: [x, y, z], block, shared_bytes }),
            _ => Err(Error::invalid("kernel launch", format!("grid of {grid:?} blocks with {shared_floats} shared floats"))),
        }
    }
    /// A 1-D grid-stride launch over `n` elements: 256 threads per block, at most 65,535 blocks.
    pub fn elementwise(n: usize) -> Self {
        let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
        Launch { grid: [blocks, 1, 1], block: 256, shared_bytes: 0 }
    }
}

/// Element types a [`Buffer`] may hold.
pub trait Element: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy + Default + Send + Sync + 'static {}
impl Element for f32 {}
impl Element for f64 {}
impl Element for u32 {}
impl Element for i32 {}
impl Element for u8 {}
impl Element for u16 {}

/// Where kernels run.
pub enum Gpu {
    Cuda(Box<driver::Driver>),
    Emulated { order: ThreadOrder },
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Device memory: host memory under the emulator.
pub struct Buffer<T: Element> {
    storage: Storage<T>,
}

enum Storage<T: Element> {
    Host(Vec<T>),
    Device(driver::DeviceSlice<T>),
}

impl<T: Element> Buffer<T> {
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Host(v) => v.len(),
            Storage::Device(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gpu {
    /// The first CUDA device; an error (never a panic) when this binary was built without nvcc,
    /// or no driver or GPU is present.
    pub fn cuda() -> Result<Gpu> {
        driver::Driver::new(0).map(|d| Gpu::Cuda(Box::new(d)))
    }

    /// The CPU emulator; an error when the emulated kernels were not built.
    pub fn emulated(order: ThreadOrder) -> Result<Gpu> {
        if !emulation_built() {
            return Err(Error::invalid("device", "the emulated kernels were not built (build.rs needs g++ with C++20)"));
        }
        Ok(Gpu::Emulated { order })
    }

    pub fn name(&self) -> String {
        match self {
            Gpu::Cuda(d) => d.info.name.clone(),
            Gpu::Emulated { order } => format!("CPU emulation ({order:?} thread order)"),
        }
    }

    pub fn upload<T: Element>(&self, data: &[T]) -> Result<Buffer<T>> {
        let storage = match self {
            Gpu::Cuda(d) => Storage::Device(d.upload(data)?),
            Gpu::Emulated { .. } => Storage::Host(data.to_vec()),
        };
        Ok(Buffer { storage })
    }

    /// Copies `src` into `dst` from element `offset` on: a buffer filled piece by piece, so that the
    /// host holds one piece at a time.
    pub fn copy_into<T: Element>(&self, dst: &mut Buffer<T>, offset: usize, src: &[T]) -> Result<()> {
        let end = offset + src.len();
        if end > dst.len() {
            return Err(Error::Shape { op: "copy_into", why: format!("elements {offset}..{end} of a buffer of {}", dst.len()) });
        }
        match (self, &mut dst.storage) {
            (Gpu::Cuda(d), Storage::Device(slice)) => d.copy_into(slice, offset, src),
            (Gpu::Emulated { .. }, Storage::Host(v)) => {
                v[offset..end].copy_from_slice(src);
                Ok(())
            }
            _ => Err(Error::Device("copy_into: a buffer of another device".into())),
        }
    }

    pub fn zeros<T: Element>(&self, len: usize) -> Result<Buffer<T>> {
        let storage = match self {
            Gpu::Cuda(d) => Storage::Device(d.zeros(len)?),
            Gpu::Emulated { .. } => Storage::Host(vec![T::default(); len]),
        };
        Ok(Buffer { storage })
    }

    /// An f32 buffer for a kernel that writes every element: its contents are undefined until then
    /// (no zero-filling pass on the GPU). The emulator fills it with NaN, so that an element a kernel
    /// fails to write shows in every emulated test.
    pub fn unfilled(&self, len: usize) -> Result<Buffer<f32>> {
        let storage = match self {
            Gpu::Cuda(d) => Storage::Device(d.unfilled(len)?),
            Gpu::Emulated { .. } => Storage::Host(vec![f32::NAN; len]),
        };
        Ok(Buffer { storage })
    }

    /// Copies a buffer back to the host (waiting for the kernels that write it).
    pub fn download<T: Element>(&self, buffer: &Buffer<T>) -> Result<Vec<T>> {
        match (&buffer.storage, self) {
            (Storage::Host(v), Gpu::Emulated { .. }) => Ok(v.clone()),
            (Storage::Device(s), Gpu::Cuda(d)) => d.download(s),
            _ => Err(Error::invalid("buffer", "downloaded from a device it does not belong to")),
        }
    }

    /// Queues copies of `buffers` to the host, to be read by `Readback::wait`, which waits only for
    /// the work queued before this call (a later step's kernels keep running). The emulator, which
    /// runs every launch to completion, copies at once.
    pub fn read_later<T: Element>(&self, buffers: &[&Buffer<T>]) -> Result<Readback<T>> {
        match self {
            Gpu::Emulated { .. } => Ok(Readback(Copies::Done(buffers.iter().map(|b| self.download(b)).collect::<Result<_>>()?))),
            Gpu::Cuda(d) => {
                let slices = buffers
                    .iter()
                    .map(|b| match &b.storage {
                        Storage::Device(s) => Ok(s),
                        Storage::Host(_) => Err(Error::invalid("buffer", "read from a device it does not belong to")),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Readback(Copies::Queued(d.read_later(&slices)?)))
            }
        }
    }

    /// Launches `kernel` with `args`, which must match its declared parameters (`kernels.rs`).
    pub fn launch(&self, declared: &Kernel, launch: Launch, args: Args) -> Result<()> {
        let kernel = declared.symbol;
        if launch.block == 0 || launch.block > 1024 || !launch.block.is_multiple_of(32) {
            return Err(Error::invalid(
                "kernel launch",
                format!("{kernel}: block of {} threads (a multiple of 32, at most 1024)", launch.block),
            ));
        }
        if launch.grid.iter().zip(GRID_LIMITS).any(|(&n, max)| n == 0 || n > max) {
            return Err(Error::invalid(
                "kernel launch",
                format!("{kernel}: grid of {:?} blocks (1 to {GRID_LIMITS:?} in x, y, z)", launch.grid),
            ));
        }
        if args.kinds != declared.params {
            return Err(Error::invalid(
                "kernel launch",
                format!("{kernel}: arguments {:?} where the kernel declares {:?}", args.kinds, declared.params),
            ));
        }
        let mut params: Vec<*mut c_void> = args.starts.iter().map(|&i| &args.slots[i] as *const u64 as *mut c_void).collect();
        match self {
            Gpu::Cuda(d) => d.launch(kernel, launch, &mut params),
            Gpu::Emulated { order } => emulator::launch(kernel, launch, *order, &mut params),
        }
    }

    /// Waits for every launched kernel (a no-op under the emulator, which runs launches to completion).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Gpu::Cuda(d) => d.synchronize(),
            Gpu::Emulated { .. } => Ok(()),
        }
    }
}

/// Buffers on their way to the host (`Gpu::read_later`).
pub struct Readback<T: Element>(Copies<T>);

enum Copies<T: Element> {
    Done(Vec<Vec<T>>),
    Queued(driver::Readback<T>),
}

impl<T: Element> Readback<T> {
    /// One vector per buffer, once the copies are done.
    pub fn wait(self) -> Result<Vec<Vec<T>>> {
        match self.0 {
            Copies::Done(v) => Ok(v),
            Copies::Queued(r) => r.wait(),
        }
    }
}

/// Where training and evaluation run (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Cpu,
    /// The first GPU; an error when none is usable.
    Cuda,
    /// The first GPU when one is usable, else the CPU, saying why.
    Auto,
    /// The GPU path with its kernels run by the CPU emulator: very slow, for testing that path
    /// without a GPU.
    #[value(hide = true)]
    Emulated,
}

impl DeviceChoice {
    /// The GPU to use (None: the CPU engine). A GPU counts as usable when the driver opens it and
    /// cuBLAS loads, so that a run fails (or `auto` falls back) before its first step, not during it.
    pub fn open(self, say: impl Fn(&str)) -> Result<Option<Arc<Gpu>>> {
        let cuda = || -> Result<Gpu> {
            let gpu = Gpu::cuda()?;
            if let Gpu::Cuda(d) = &gpu {
                d.blas()?;
            }
            Ok(gpu)
        };
        match self {
            DeviceChoice::Cpu => Ok(None),
            DeviceChoice::Cuda => match cuda() {
                Ok(g) => Ok(Some(Arc::new(g))),
                Err(Error::Device(why)) => Err(Error::Device(format!("{why}; --device cpu or auto runs on the CPU"))),
                Err(e) => Err(e),
            },
            DeviceChoice::Emulated => Gpu::emulated(ThreadOrder::Forward).map(|g| Some(Arc::new(g))),
            DeviceChoice::Auto => match cuda() {
                Ok(g) => {
                    say(&format!("device: {}", g.name()));
                    Ok(Some(Arc::new(g)))
                }
                Err(e) => {
                    say(&format!("device: the CPU ({e})"));
                    Ok(None)
                }
            },
        }
    }
}

/// A kernel's arguments, each stored from the start of an 8-byte slot whose address is passed to the
/// launch, as `cuLaunchKernel` expects (scalars narrower than 8 bytes sit in the low bytes:
/// little-endian; a parameter struct takes as many slots as its size needs). The lifetime keeps the
/// borrowed buffers alive and unmoved until the launch.
pub struct Args<'a> {
    slots: Vec<u64>,
    /// The first slot of each argument.
    starts: Vec<usize>,
    /// What each argument is, checked against the kernel's declaration at launch.
    kinds: Vec<Param>,
    borrows: PhantomData<&'a mut ()>,
}

/// A kernel's declaration (`kernels.rs`, written from the `.cu` signatures): its symbol and the
/// kinds of its parameters, in order.
#[derive(Debug)]
pub struct Kernel {
    pub symbol: &'static str,
    pub params: &'static [Param],
}

/// A kernel parameter: a pointer the kernel only reads (`const T*`) or may write (`T*`), a scalar
/// of a C type (`int`, `long long`, `unsigned`, `unsigned long long`, `float`, `double`), or a
/// struct of `kernels/params.h` passed by value (named by its C type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    In,
    Out,
    Int,
    I64,
    U32,
    U64,
    F32,
    F64,
    Struct(&'static str),
}

/// A parameter struct of `kernels/params.h` (its Rust twin in `params.rs`), passed to kernels by value.
///
/// # Safety
/// Only for the `#[repr(C)]` structs of `params.rs`: plain numbers, alignment at most 8, and
/// `C_NAME` the C type the kernels declare (the launch checks arguments by that name).
pub unsafe trait KernelParams: Copy {
    const C_NAME: &'static str;
}
// SAFETY: bindgen's #[repr(C)] twins of the header's structs, all-number fields of 4-byte alignment.
unsafe impl KernelParams for params::AttentionParams {
    const C_NAME: &'static str = "AttentionParams";
}
// SAFETY: as above.
unsafe impl KernelParams for params::TripletLayoutParams {
    const C_NAME: &'static str = "TripletLayoutParams";
}
// SAFETY: as above.
unsafe impl KernelParams for params::AdamParams {
    const C_NAME: &'static str = "AdamParams";
}

impl<'a> Args<'a> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Args { slots: Vec::with_capacity(16), starts: Vec::with_capacity(16), kinds: Vec::with_capacity(16), borrows: PhantomData }
    }
    fn push(mut self, kind: Param, slot: u64) -> Self {
        self.kinds.push(kind);
        self.starts.push(self.slots.len());
        self.slots.push(slot);
        self
    }
    /// A buffer the kernel only reads.
    pub fn input<T: Element>(self, buffer: &'a Buffer<T>) -> Self {
        let address = match &buffer.storage {
            Storage::Host(v) => v.as_ptr() as u64,
            Storage::Device(d) => d.address(),
        };
        self.push(Param::In, address)
    }
    /// A buffer the kernel writes.
    pub fn output<T: Element>(self, buffer: &'a mut Buffer<T>) -> Self {
        let address = match &mut buffer.storage {
            Storage::Host(v) => v.as_mut_ptr() as u64,
            Storage::Device(d) => d.address(),
        };
        self.push(Param::Out, address)
    }
    /// A null pointer, for an optional input the kernel tests for.
    pub fn null(self) -> Self {
        self.push(Param::In, 0)
    }
    pub fn i32(self, value: i32) -> Self {
        self.push(Param::Int, value as u32 as u64)
    }
    /// A size or count as a C `int`; the launchers check shapes fit before calling this.
    pub fn int(self, value: usize) -> Self {
        self.i32(value as i32)
    }
    pub fn i64(self, value: i64) -> Self {
        self.push(Param::I64, value as u64)
    }
    pub fn u64(self, value: u64) -> Self {
        self.push(Param::U64, value)
    }
    pub fn u32(self, value: u32) -> Self {
        self.push(Param::U32, value as u64)
    }
    pub fn f32(self, value: f32) -> Self {
        self.push(Param::F32, value.to_bits() as u64)
    }
    pub fn f64(self, value: f64) -> Self {
        self.push(Param::F64, value.to_bits())
    }
    /// A parameter struct, by value: its bytes copied into as many slots as it needs.
    pub fn params<P: KernelParams>(mut self, value: &P) -> Self {
        let (bytes, first) = (std::mem::size_of::<P>(), self.slots.len());
        self.slots.resize(first + bytes.div_ceil(8), 0);
        // SAFETY: `value` is `bytes` readable bytes of plain numbers (KernelParams), the slots from
        // `first` hold at least `bytes` bytes, and the two do not overlap.
        unsafe { std::ptr::copy_nonoverlapping((value as *const P).cast::<u8>(), self.slots[first..].as_mut_ptr().cast::<u8>(), bytes) };
        self.kinds.push(Param::Struct(P::C_NAME));
        self.starts.push(first);
        self
    }
}

/// Errors unless every size fits the kernels' `int` indices.
pub(crate) fn check_int(what: &'static str, sizes: &[usize]) -> Result<()> {
    match sizes.iter().find(|&&s| s > i32::MAX as usize) {
        Some(s) => Err(Error::Shape { op: what, why: format!("size {s} exceeds the kernels' 32-bit indices") }),
        None => Ok(()),
    }
}

/// The row count of `len` values in rows of `cols`; an error unless they divide evenly and fit the
/// kernels' 32-bit indices.
pub(crate) fn check_rows(op: &'static str, len: usize, cols: usize) -> Result<usize> {
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(Error::Shape { op, why: format!("{len} values in rows of {cols}") });
    }
    check_int(op, &[len])?;
    Ok(len / cols)
}

/// Errors unless `buffer` holds `expected` elements.
pub(crate) fn check_len<T: Element>(op: &'static str, name: &str, buffer: &Buffer<T>, expected: usize) -> Result<()> {
    if buffer.len() == expected {
        Ok(())
    } else {
        Err(Error::Shape { op, why: format!("{name} has {} elements, expected {expected}", buffer.len()) })
    }
}

/// What `ptrag-engine info` reports: how this binary was built and what GPU (if any) it can use.
#[derive(Debug, serde::Serialize)]
pub struct EngineInfo {
    pub version: &'static str,
    /// Kernel families compiled with nvcc into sm_90 cubins (empty without nvcc at build time).
    pub cuda_kernel_families: Vec<&'static str>,
    pub emulated_kernels: bool,
    /// The CPU kernels' path (`cpu::cpu_path`).
    pub cpu_path: &'static str,
    pub gpu: Option<DeviceInfo>,
    /// Why no GPU can be used, when none can.
    pub gpu_unavailable: Option<String>,
}

pub fn engine_info() -> EngineInfo {
    let (gpu, gpu_unavailable) = match driver::Driver::new(0) {
        Ok(d) => (Some(d.info), None),
        Err(e) => (None, Some(e.to_string())),
    };
    EngineInfo {
        version: env!("CARGO_PKG_VERSION"),
        cuda_kernel_families: if CUDA_BUILT { families().iter().map(|f| f.name).collect() } else { Vec::new() },
        emulated_kernels: emulation_built(),
        cpu_path: crate::cpu::cpu_path(),
        gpu,
        gpu_unavailable,
    }
}

impl std::fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "ptrag-engine {}", self.version)?;
        match self.cuda_kernel_families.as_slice() {
            [] => writeln!(f, "CUDA kernels: not built (no nvcc at build time; tools/install_cuda.sh installs one)")?,
            names => writeln!(f, "CUDA kernels: sm_90 cubin + compute_75 PTX for {}", names.join(", "))?,
        }
        writeln!(f, "emulated kernels (CPU, for tests): {}", if self.emulated_kernels { "built" } else { "not built" })?;
        writeln!(f, "CPU kernels: {}", self.cpu_path)?;
        match (&self.gpu, &self.gpu_unavailable) {
            (Some(g), _) => writeln!(
                f,
                "GPU: {} (compute {}.{}, {:.1} GiB, {} SMs), driver CUDA {}.{}",
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                g.memory_bytes as f64 / (1u64 << 30) as f64,
                g.multiprocessors,
                g.driver_version / 1000,
                g.driver_version % 1000 / 10
            ),
            (None, why) => writeln!(f, "GPU: none usable: {}", why.as_deref().unwrap_or("unknown")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A launch whose arguments differ from the kernel's declaration (a missing scalar, or an
    /// output where an input belongs) is refused before anything runs, naming the kernel.
    #[test]
    fn a_launch_must_match_its_declaration() {
        let gpu = Gpu::Emulated { order: ThreadOrder::Forward };
        let (x, mut y) = (gpu.upload(&[1.0f32; 4]).unwrap(), gpu.upload(&[0.0f32; 4]).unwrap());
        let missing = Args::new().input(&x).output(&mut y);
        let err = gpu.launch(&kernels::SILU_FORWARD_F32, Launch::elementwise(4), missing).unwrap_err().to_string();
        assert!(err.contains("silu_forward_f32") && err.contains("declares"), "{err}");
        let swapped = Args::new().output(&mut y).input(&x).i64(4);
        assert!(gpu.launch(&kernels::SILU_FORWARD_F32, Launch::elementwise(4), swapped).is_err());
    }
}
