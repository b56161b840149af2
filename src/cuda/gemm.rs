//! Dense products on the GPU: cuBLAS, not a hand-written kernel (twin of `src/cpu/gemm/`; there
//! is no `kernels/gemm.cu`). Under the emulator, whose buffers are host memory, the CPU GEMM runs.

use super::{check_len, Buffer, Gpu, Storage};
use crate::Result;

/// Row-major `c[m, n] = op(a)[m, k] op(b)[k, n]` (added to `c` when `accumulate`); `trans_*`: the
/// operand is stored transposed.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    gpu: &Gpu,
    a: &Buffer<f32>,
    b: &Buffer<f32>,
    c: &mut Buffer<f32>,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) -> Result<()> {
    check_len("matmul", "a", a, m * k)?;
    check_len("matmul", "b", b, k * n)?;
    check_len("matmul", "c", c, m * n)?;
    match (gpu, &a.storage, &b.storage, &mut c.storage) {
        (Gpu::Cuda(d), Storage::Device(a), Storage::Device(b), Storage::Device(c)) => {
            d.gemm(a, b, c, [m, k, n], trans_a, trans_b, accumulate)
        }
        (Gpu::Emulated { .. }, Storage::Host(a), Storage::Host(b), Storage::Host(c)) => {
            crate::cpu::gemm::matmul(a, b, c, m, k, n, trans_a, trans_b, accumulate);
            Ok(())
        }
        _ => Err(crate::Error::invalid("buffer", "a product's operands are not all on its device")),
    }
}
