//! Dense matrix products through the `gemm` crate (no hand-written GEMM), generic over f32/f64.

use crate::real::Real;

/// `c[m, n] = beta * c + op(a) @ op(b)` where `op(a)` is `a[m, k]` or, with `trans_a`, `a[k, m]`
/// transposed (likewise `b[k, n]` or `b[n, k]` with `trans_b`). `beta` is 0 (overwrite) or 1 (accumulate).
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(a: &[T], b: &[T], c: &mut [T], m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, accumulate: bool) {
    assert_eq!(a.len(), m * k, "matmul: a has {} elements, expected {m}x{k}", a.len());
    assert_eq!(b.len(), k * n, "matmul: b has {} elements, expected {k}x{n}", b.len());
    assert_eq!(c.len(), m * n, "matmul: c has {} elements, expected {m}x{n}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(T::zero());
        }
        return;
    }
    // Strides (column stride, row stride) of each operand as stored.
    let (a_cs, a_rs) = if trans_a { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if trans_b { (k as isize, 1) } else { (1, n as isize) };
    let parallelism = if m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the lengths of a, b and c were checked above against (m, k, n) and the strides describe
    // exactly those row-major layouts, so every index gemm forms is in bounds; c does not alias a or b
    // (it is a distinct &mut borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
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
pub fn matmul_strided<T: Real>(a: &[T], av: Strided, b: &[T], bv: Strided, c: &mut [T], cv: Strided, accumulate: bool) {
    assert!(av.cols == bv.rows && av.rows == cv.rows && bv.cols == cv.cols, "matmul_strided: shapes do not chain");
    assert!(av.last_index() < a.len() && bv.last_index() < b.len() && cv.last_index() < c.len(), "matmul_strided: view out of bounds");
    if cv.rows == 0 || cv.cols == 0 || av.cols == 0 {
        return;
    }
    // SAFETY: the last element of each view was checked to lie inside its slice, and views address
    // only offset + r*rs + c*cs with r < rows, c < cols, so every access is in bounds; c is a distinct
    // mutable borrow and cannot alias a or b.
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
