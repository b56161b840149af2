//! Elementwise activations and the row softmax. Backward kernels accumulate into `dx`.

use crate::real::Real;
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise scheduling, small enough to split a
/// layer's activations over the cores. Elementwise work gives the same result in any split.
const CHUNK: usize = 1 << 14;

/// `y[i] = f(x[i])`, in parallel.
fn map<T: Real>(x: &[T], y: &mut [T], f: impl Fn(T) -> T + Sync) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = f(x)));
}

/// `dx[i] += f(x[i], dy[i])`, in parallel.
fn accumulate<T: Real>(x: &[T], dy: &[T], dx: &mut [T], f: impl Fn(T, T) -> T + Sync) {
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dx, (x, dy))| {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            *dx = *dx + f(x, dy);
        }
    });
}

pub fn silu_forward<T: Real>(x: &[T], y: &mut [T]) {
    map(x, y, |x| x / (T::one() + (-x).exp()));
}
pub fn silu_backward<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    accumulate(x, dy, dx, |x, dy| {
        let s = T::one() / (T::one() + (-x).exp());
        dy * s * (T::one() + x * (T::one() - s))
    });
}

/// Exact (erf) GELU, PyTorch's `nn.GELU()` default.
pub fn gelu_forward<T: Real>(x: &[T], y: &mut [T]) {
    let r = T::f(std::f64::consts::FRAC_1_SQRT_2);
    let half = T::f(0.5);
    map(x, y, |x| half * x * (T::one() + (x * r).erf()));
}
pub fn gelu_backward<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    let r = T::f(std::f64::consts::FRAC_1_SQRT_2);
    let pdf_scale = T::f(1.0 / (2.0 * std::f64::consts::PI).sqrt());
    let half = T::f(0.5);
    accumulate(x, dy, dx, |x, dy| {
        let cdf = half * (T::one() + (x * r).erf());
        let pdf = pdf_scale * (-half * x * x).exp();
        dy * (cdf + x * pdf)
    });
}

pub fn relu_forward<T: Real>(x: &[T], y: &mut [T]) {
    map(x, y, |x| if x > T::zero() { x } else { T::zero() });
}
pub fn relu_backward<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    accumulate(x, dy, dx, |x, dy| if x > T::zero() { dy } else { T::zero() });
}

/// Softmax over the last dimension: `x, y: [rows, cols]`.
pub fn softmax_forward<T: Real>(x: &[T], y: &mut [T], cols: usize) {
    y.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(y, x)| {
        let max = x.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
        let mut sum = T::zero();
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - max).exp();
            sum = sum + *y;
        }
        y.iter_mut().for_each(|y| *y = *y / sum);
    });
}
/// `dx += y * (dy - sum(dy * y))` per row.
pub fn softmax_backward<T: Real>(y: &[T], dy: &[T], dx: &mut [T], cols: usize) {
    dx.par_chunks_mut(cols).zip(y.par_chunks(cols).zip(dy.par_chunks(cols))).for_each(|(dx, (y, dy))| {
        let dot: T = y.iter().zip(dy).map(|(&y, &dy)| y * dy).sum();
        for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
            *dx = *dx + y * (dy - dot);
        }
    });
}
