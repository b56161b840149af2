//! Large f32 products on CPUs with AVX2 and FMA but no AVX-512 (or `PTRAG_CPU=avx2`):
//! matrixmultiply's packed kernel, single-threaded per call, on blocks of C that rayon runs in
//! parallel (its own threads stop at 4 and would sit beside rayon's).

use rayon::prelude::*;

/// Below this many multiply-adds the `gemm` crate's lower overhead wins.
const MIN_WORK: usize = 1 << 20;
/// Rows (or columns) of C per parallel block, at least.
const MIN_BLOCK: usize = 64;

/// The path is taken: AVX2 and FMA, and not the AVX-512 kernel.
pub fn available() -> bool {
    !crate::cpu::has_avx512() && crate::cpu::has_avx2_fma()
}

pub fn suits(m: usize, n: usize, k: usize) -> bool {
    m * n * k >= MIN_WORK && available()
}

/// `c (+)= a[m, k] b[k, n]` on this thread (matrixmultiply without its threading feature);
/// every operand as `(row stride, column stride)`.
///
/// # Safety
/// The pointers address every element their strides reach; `c`'s aliases neither `a` nor `b`
/// and, with `accumulate`, is initialised (without it, matrixmultiply writes C without reading).
#[allow(clippy::too_many_arguments)]
pub unsafe fn serial(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    (a_rs, a_cs): (isize, isize),
    b: *const f32,
    (b_rs, b_cs): (isize, isize),
    c: *mut f32,
    (c_rs, c_cs): (isize, isize),
    accumulate: bool,
) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: the caller's contract, passed on.
    unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a, a_rs, a_cs, b, b_rs, b_cs, beta, c, c_rs, c_cs) }
}

/// `c[m, n] (+)= a[m, k] b[k, n]`, `c` row-major; operand element `(r, c)` at `r * rs + c * cs`.
///
/// # Safety
/// `c` is valid for writes of `m * n` elements and aliases neither `a` nor `b`; with `accumulate`
/// they are also initialised. `a` and `b` hold every element their strides address.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    (a_rs, a_cs): (isize, isize),
    b: &[f32],
    (b_rs, b_cs): (isize, isize),
    c: *mut f32,
    accumulate: bool,
) {
    let threads = rayon::current_num_threads().max(1);
    // split the longer side of C, so that each thread has a block
    let by_rows = m >= n;
    let long = if by_rows { m } else { n };
    let block = long.div_ceil(threads).max(MIN_BLOCK);
    let c_addr = c as usize;
    (0..long.div_ceil(block)).into_par_iter().for_each(|i| {
        let (lo, len) = (i * block, block.min(long - i * block));
        let (rows, cols, a_off, b_off, c_off) =
            if by_rows { (len, n, lo as isize * a_rs, 0, lo * n) } else { (m, len, 0, lo as isize * b_cs, lo) };
        // SAFETY: the block's rows/columns lie inside a, b and c (the contract above); blocks of
        // c are disjoint, so no two tasks write one element.
        unsafe {
            serial(
                rows,
                k,
                cols,
                a.as_ptr().offset(a_off),
                (a_rs, a_cs),
                b.as_ptr().offset(b_off),
                (b_rs, b_cs),
                (c_addr as *mut f32).add(c_off),
                (n as isize, 1),
                accumulate,
            )
        };
    });
}
