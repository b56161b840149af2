//! Dense matrix products, generic over f32/f64: through the `gemm` crate, except large f32
//! products, which go on CPUs with AVX-512 to our own packed kernel (`avx512` below; the `gemm`
//! crate uses AVX-512 only on nightly Rust) and on CPUs with AVX2 and FMA but no AVX-512 to
//! `matrixmultiply`'s kernel (`fma` below), which reached 1.2-2.0 times the `gemm` crate's rate on
//! the step's shapes (criterion group `cpu/gemm-candidates`, docs/benchmarks.md).

use crate::scalar::Scalar;
use std::any::TypeId;

/// `c[m, n] = beta * c + op(a) @ op(b)` where `op(a)` is `a[m, k]` or, with `trans_a`, `a[k, m]`
/// transposed (likewise `b[k, n]` or `b[n, k]` with `trans_b`). `beta` is 0 (overwrite) or 1 (accumulate).
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Scalar>(a: &[T], b: &[T], c: &mut [T], m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, accumulate: bool) {
    assert_eq!(c.len(), m * n, "matmul: c has {} elements, expected {m}x{n}", c.len());
    // SAFETY: c holds m * n initialised elements and is a distinct &mut borrow (no aliasing).
    unsafe { product_into(a, b, c.as_mut_ptr(), m, k, n, trans_a, trans_b, accumulate) }
}

/// `op(a) @ op(b)` as a new `m x n` matrix. On the AVX-512 path each element is written once, with
/// no zero-fill before the product overwrites it (that fill was a full extra pass over the step's
/// largest tensors).
#[allow(clippy::too_many_arguments)]
pub fn matmul_new<T: Scalar>(a: &[T], b: &[T], m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool) -> Vec<T> {
    if !on_avx512_path::<T>(m, n, k) && !on_fma_path::<T>(m, n, k) {
        let mut c = vec![T::zero(); m * n];
        matmul(a, b, &mut c, m, k, n, trans_a, trans_b, false);
        return c;
    }
    let mut c = Vec::with_capacity(m * n);
    // SAFETY: the capacity is m * n, and on the AVX-512 and FMA paths an overwriting product writes
    // every one of the m * n elements (reading none), so all are initialised before the length is set.
    unsafe {
        product_into(a, b, c.as_mut_ptr(), m, k, n, trans_a, trans_b, false);
        c.set_len(m * n);
    }
    c
}

/// Whether an f32 product of this size goes to our AVX-512 kernel.
fn on_avx512_path<T: Scalar>(m: usize, n: usize, k: usize) -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>() && avx512::suits(m, n, k)
}

/// Whether an f32 product of this size goes to matrixmultiply's AVX2+FMA kernel.
fn on_fma_path<T: Scalar>(m: usize, n: usize, k: usize) -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>() && fma::suits(m, n, k)
}

/// The product behind `matmul` and `matmul_new`.
///
/// # Safety
/// `c` is valid for writes of `m * n` elements and aliases neither `a` nor `b`. Its elements are
/// initialised, except that without `accumulate` on the AVX-512 and FMA paths (`on_avx512_path`,
/// `on_fma_path`) they may not be: those kernels then write every element before reading any.
#[allow(clippy::too_many_arguments)]
unsafe fn product_into<T: Scalar>(
    a: &[T],
    b: &[T],
    c: *mut T,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) {
    assert_eq!(a.len(), m * k, "matmul: a has {} elements, expected {m}x{k}", a.len());
    assert_eq!(b.len(), k * n, "matmul: b has {} elements, expected {k}x{n}", b.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            // SAFETY: c is valid for m * n writes (the caller's contract).
            (0..m * n).for_each(|i| unsafe { c.add(i).write(T::zero()) });
        }
        return;
    }
    // Strides (column stride, row stride) of each operand as stored.
    let (a_cs, a_rs) = if trans_a { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if trans_b { (k as isize, 1) } else { (1, n as isize) };
    if on_avx512_path::<T>(m, n, k) {
        // SAFETY: T is f32 (checked just above), so these are the same slices and pointer as f32.
        let (a, b, c) = unsafe { (&*(a as *const [T] as *const [f32]), &*(b as *const [T] as *const [f32]), c as *mut f32) };
        let av = avx512::View { rs: a_rs as usize, cs: a_cs as usize };
        let bv = avx512::View { rs: b_rs as usize, cs: b_cs as usize };
        // SAFETY: the caller's contract on c, passed on; avx512::gemm writes every element when
        // not accumulating (each tile of the first KC slice overwrites).
        unsafe { avx512::gemm(m, n, k, a, av, b, bv, c, accumulate) };
        return;
    }
    if on_fma_path::<T>(m, n, k) {
        // SAFETY: T is f32 (checked just above), so these are the same slices and pointer as f32.
        let (a, b, c) = unsafe { (&*(a as *const [T] as *const [f32]), &*(b as *const [T] as *const [f32]), c as *mut f32) };
        // SAFETY: the caller's contract on c, passed on; the strides describe a [m, k] and b [k, n]
        // inside slices whose lengths were checked above.
        unsafe { fma::gemm(m, n, k, a, (a_rs, a_cs), b, (b_rs, b_cs), c, accumulate) };
        return;
    }
    let parallelism = if m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the lengths of a and b were checked above against (m, k, n), c holds m * n initialised
    // elements (the caller's contract off the AVX-512 path), and the strides describe exactly those
    // row-major layouts, so every index gemm forms is in bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A strided view of a matrix inside a flat slice: element `(r, c)` is at `offset + r*row_stride + c*col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Strided {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Strided {
    /// A `rows x cols` block starting at `offset` of a row-major matrix `ld` columns wide.
    pub fn block(offset: usize, rows: usize, cols: usize, ld: usize) -> Self {
        Strided { offset, rows, cols, row_stride: ld, col_stride: 1 }
    }
    pub fn t(self) -> Self {
        Strided { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
    fn last_index(&self) -> usize {
        self.offset + (self.rows.max(1) - 1) * self.row_stride + (self.cols.max(1) - 1) * self.col_stride
    }
}

/// `c_view (+)= a_view @ b_view` on strided views (used per head inside attention); single-threaded,
/// callers parallelise over independent blocks.
pub fn matmul_strided<T: Scalar>(a: &[T], av: Strided, b: &[T], bv: Strided, c: &mut [T], cv: Strided, accumulate: bool) {
    assert!(av.cols == bv.rows && av.rows == cv.rows && bv.cols == cv.cols, "matmul_strided: shapes do not chain");
    assert!(av.last_index() < a.len() && bv.last_index() < b.len() && cv.last_index() < c.len(), "matmul_strided: view out of bounds");
    if cv.rows == 0 || cv.cols == 0 || av.cols == 0 {
        return;
    }
    let unit_stride = |v: Strided| v.row_stride == 1 || v.col_stride == 1;
    let avx512_fits = cv.rows >= avx512::MR && cv.cols >= avx512::NR / 2 && cv.col_stride == 1 && unit_stride(av) && unit_stride(bv);
    if TypeId::of::<T>() == TypeId::of::<f32>() && ((avx512_fits && crate::cpu::has_avx512()) || fma::available()) {
        // SAFETY: T is f32 (checked just above), so these are the same slices as f32.
        let (a, b, c) =
            unsafe { (&*(a as *const [T] as *const [f32]), &*(b as *const [T] as *const [f32]), &mut *(c as *mut [T] as *mut [f32])) };
        if avx512_fits && crate::cpu::has_avx512() {
            strided_avx512(a, av, b, bv, c, cv, accumulate);
        } else {
            strided_fma(a, av, b, bv, c, cv, accumulate);
        }
        return;
    }
    strided_portable(a, av, b, bv, c, cv, accumulate);
}

/// `matmul_strided` on our AVX-512 kernel: views checked by the caller, C with unit column stride.
fn strided_avx512(a: &[f32], av: Strided, b: &[f32], bv: Strided, c: &mut [f32], cv: Strided, accumulate: bool) {
    let view = |v: Strided| avx512::View { rs: v.row_stride, cs: v.col_stride };
    // SAFETY: the caller checked has_avx512(); the last element of every view lies inside its slice
    // (asserted by matmul_strided), so C's rows x cols at row stride cv.row_stride from cv.offset
    // are inside c, which is a distinct &mut borrow, initialised.
    unsafe {
        avx512::gemm_serial(
            cv.rows,
            cv.cols,
            av.cols,
            &a[av.offset..],
            view(av),
            &b[bv.offset..],
            view(bv),
            c.as_mut_ptr().add(cv.offset),
            cv.row_stride,
            accumulate,
        )
    };
}

/// `matmul_strided` on matrixmultiply's AVX2+FMA kernel (CPUs without AVX-512).
fn strided_fma(a: &[f32], av: Strided, b: &[f32], bv: Strided, c: &mut [f32], cv: Strided, accumulate: bool) {
    let stride = |v: Strided| (v.row_stride as isize, v.col_stride as isize);
    // SAFETY: the caller checked fma::available(); every view's last element lies inside its slice
    // (asserted by matmul_strided) and c is a distinct borrow, so the product reads and writes only
    // inside them.
    unsafe {
        fma::serial(
            cv.rows,
            av.cols,
            cv.cols,
            a.as_ptr().add(av.offset),
            stride(av),
            b.as_ptr().add(bv.offset),
            stride(bv),
            c.as_mut_ptr().add(cv.offset),
            stride(cv),
            accumulate,
        )
    };
}

/// `matmul_strided` through the `gemm` crate: f64, and f32 on CPUs without AVX2+FMA.
fn strided_portable<T: Scalar>(a: &[T], av: Strided, b: &[T], bv: Strided, c: &mut [T], cv: Strided, accumulate: bool) {
    // SAFETY: the last element of each view was checked to lie inside its slice (matmul_strided),
    // and views address only offset + r*rs + c*cs with r < rows, c < cols, so every access is in
    // bounds; c is a distinct mutable borrow and cannot alias a or b.
    unsafe {
        gemm::gemm(
            cv.rows,
            cv.cols,
            av.cols,
            c.as_mut_ptr().add(cv.offset),
            cv.col_stride as isize,
            cv.row_stride as isize,
            accumulate,
            a.as_ptr().add(av.offset),
            av.col_stride as isize,
            av.row_stride as isize,
            b.as_ptr().add(bv.offset),
            bv.col_stride as isize,
            bv.row_stride as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

mod fma;

mod avx512;

#[cfg(test)]
mod tests {
    use super::*;

    /// `matmul_strided` in f32 (the AVX-512 path where the views allow it) against the same product
    /// in f64, on the views attention uses: head blocks inside wider rows, transposed views, partial
    /// tiles, overwrite and accumulate.
    #[test]
    fn strided_f32_matches_f64() {
        let (rows, heads, head_dim) = (37, 3, 29);
        let width = heads * head_dim;
        let value = |i: usize, salt: usize| (((i * 2654435761 + salt * 97) % 1000) as f64) / 500.0 - 1.0;
        let q64: Vec<f64> = (0..rows * width).map(|i| value(i, 1)).collect();
        let k64: Vec<f64> = (0..rows * width).map(|i| value(i, 2)).collect();
        let c0: Vec<f64> = (0..rows * width).map(|i| value(i, 3)).collect();
        let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let head = |h: usize| Strided::block(h * head_dim, rows, head_dim, width);
        let square = Strided::block(0, rows, rows, rows);
        // (a view, b view, c view, c is the square scores buffer)
        let cases = [(head(1), head(2).t(), square, true), (square, head(0), head(2), false), (square.t(), head(1), head(0), false)];
        for (av, bv, cv, c_square) in cases {
            for accumulate in [false, true] {
                let a64 = if av.cols == rows { &c0[..rows * rows] } else { &q64[..] };
                let c_len = if c_square { rows * rows } else { rows * width };
                let mut want = c0[..c_len].to_vec();
                matmul_strided(a64, av, &k64, bv, &mut want, cv, accumulate);
                let mut got = f32s(&c0[..c_len]);
                matmul_strided(&f32s(a64), av, &f32s(&k64), bv, &mut got, cv, accumulate);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!((g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()), "{av:?} x {bv:?} acc={accumulate} at {i}: {g} vs {w}");
                }
            }
        }
    }

    /// `matmul_new` (no zero-fill on the AVX-512 path) gives exactly what `matmul` gives into a
    /// buffer, on and off that path, for every transpose.
    #[test]
    fn matmul_new_equals_matmul() {
        let value = |i: usize| (((i * 2654435761) % 1000) as f32) / 500.0 - 1.0;
        for &(m, n, k) in &[(301, 70, 101), (5, 3, 2), (40, 17, 0)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: Vec<f32> = (0..m * k).map(value).collect();
                let b: Vec<f32> = (0..k * n).map(|i| value(i + 7)).collect();
                let mut want = vec![f32::NAN; m * n];
                matmul(&a, &b, &mut want, m, k, n, ta, tb, false);
                assert_eq!(matmul_new(&a, &b, m, k, n, ta, tb), want, "{m}x{n}x{k} ta={ta} tb={tb}");
            }
        }
    }

    /// The AVX-512 path against a plain triple loop in f64, on shapes that are not multiples of the
    /// tiles or blocks, every transpose, overwrite and accumulate; B packed once and shared, and
    /// (20 x 2100 x 2100, B over `SHARED_B_MAX`) packed per block.
    /// A kernel `(m, n, k, a, (a_rs, a_cs), b, (b_rs, b_cs), c, accumulate)` against the plain
    /// product in f64 on awkward shapes, every transpose and both overwrite (C full of NaN: every
    /// element must be written) and accumulate.
    fn check_against_plain_product(
        shapes: &[(usize, usize, usize)],
        kernel: impl Fn(usize, usize, usize, &[f32], (usize, usize), &[f32], (usize, usize), &mut [f32], bool),
    ) {
        let value = |i: usize, salt: usize| (((i * 2654435761 + salt * 97) % 1000) as f32) / 500.0 - 1.0;
        for &(m, n, k) in shapes {
            for (ta, tb, acc) in [(false, false, false), (true, false, true), (false, true, false), (true, true, true)] {
                let a: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
                let b: Vec<f32> = (0..k * n).map(|i| value(i, 2)).collect();
                let c0: Vec<f32> = (0..m * n).map(|i| if acc { value(i, 3) } else { f32::NAN }).collect();
                let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] } as f64;
                let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] } as f64;
                let mut c = c0.clone();
                let av = if ta { (1, m) } else { (k, 1) };
                let bv = if tb { (1, k) } else { (n, 1) };
                kernel(m, n, k, &a, av, &b, bv, &mut c, acc);
                for i in 0..m {
                    for j in 0..n {
                        let want = (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>() + if acc { c0[i * n + j] as f64 } else { 0.0 };
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()) * (k as f64).sqrt(),
                            "{m}x{n}x{k} ta={ta} tb={tb} acc={acc} at ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn avx512_gemm_matches_a_plain_product() {
        if !crate::cpu::has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512 (or PTRAG_CPU=avx2)");
            return;
        }
        let shapes = [(1, 1, 1), (13, 33, 7), (25, 70, 300), (150, 40, 200), (37, 1100, 5), (300, 3, 500), (20, 2100, 2100)];
        check_against_plain_product(&shapes, |m, n, k, a, (a_rs, a_cs), b, (b_rs, b_cs), c, acc| {
            let (av, bv) = (avx512::View { rs: a_rs, cs: a_cs }, avx512::View { rs: b_rs, cs: b_cs });
            // SAFETY: c holds m * n floats and is not aliased; the views address a and b only.
            unsafe { avx512::gemm(m, n, k, a, av, b, bv, c.as_mut_ptr(), acc) }
        });
    }

    /// The FMA path (matrixmultiply on rayon blocks), split by rows and by columns.
    #[test]
    fn fma_gemm_matches_a_plain_product() {
        if !crate::cpu::has_avx2_fma() {
            eprintln!("skipped: this CPU has no AVX2+FMA");
            return;
        }
        let shapes = [(1, 1, 1), (13, 33, 7), (150, 40, 200), (37, 1100, 5), (300, 3, 500), (200, 2100, 300)];
        check_against_plain_product(&shapes, |m, n, k, a, (a_rs, a_cs), b, (b_rs, b_cs), c, acc| {
            let (av, bv) = ((a_rs as isize, a_cs as isize), (b_rs as isize, b_cs as isize));
            // SAFETY: c holds m * n floats and is not aliased; the strides address a and b only.
            unsafe { fma::gemm(m, n, k, a, av, b, bv, c.as_mut_ptr(), acc) }
        });
    }
}
