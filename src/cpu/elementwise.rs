//! Elementwise activations and the row softmax. Backward kernels accumulate into `dx`.

use crate::real::Real;
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise scheduling, small enough to split a
/// layer's activations over the cores. Elementwise work gives the same result in any split.
const CHUNK: usize = 1 << 14;

/// `y[i] = f(x[i])`, in parallel, 16 lanes wide where the CPU has AVX-512.
fn map<T: Real>(x: &[T], y: &mut [T], f: impl Fn(T) -> T + Sync) {
    let wide = super::has_avx512();
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        if wide {
            // SAFETY: has_avx512() checked that the CPU has AVX-512F.
            unsafe { map_wide(x, y, &f) }
        } else {
            map_chunk(x, y, &f)
        }
    });
}

/// `dx[i] += f(x[i], dy[i])`, in parallel, 16 lanes wide where the CPU has AVX-512.
fn accumulate<T: Real>(x: &[T], dy: &[T], dx: &mut [T], f: impl Fn(T, T) -> T + Sync) {
    let wide = super::has_avx512();
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dx, (x, dy))| {
        if wide {
            // SAFETY: has_avx512() checked that the CPU has AVX-512F.
            unsafe { accumulate_wide(x, dy, dx, &f) }
        } else {
            accumulate_chunk(x, dy, dx, &f)
        }
    });
}

#[inline(always)]
fn map_chunk<T: Real>(x: &[T], y: &mut [T], f: &impl Fn(T) -> T) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = f(x));
}

#[inline(always)]
fn accumulate_chunk<T: Real>(x: &[T], dy: &[T], dx: &mut [T], f: &impl Fn(T, T) -> T) {
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        *dx = *dx + f(x, dy);
    }
}

/// The same loops compiled for AVX-512 (the crate's baseline target is SSE2), so the branch-free
/// f32 `exp_activation` and `erf` vectorise 16 wide. Same operations, so the same results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn map_wide<T: Real>(x: &[T], y: &mut [T], f: &impl Fn(T) -> T) {
    map_chunk(x, y, f)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate_wide<T: Real>(x: &[T], dy: &[T], dx: &mut [T], f: &impl Fn(T, T) -> T) {
    accumulate_chunk(x, dy, dx, f)
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn map_wide<T: Real>(x: &[T], y: &mut [T], f: &impl Fn(T) -> T) {
    map_chunk(x, y, f)
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn accumulate_wide<T: Real>(x: &[T], dy: &[T], dx: &mut [T], f: &impl Fn(T, T) -> T) {
    accumulate_chunk(x, dy, dx, f)
}

pub fn silu_forward<T: Real>(x: &[T], y: &mut [T]) {
    map(x, y, |x| x / (T::one() + (-x).exp_activation()));
}
pub fn silu_backward<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    accumulate(x, dy, dx, |x, dy| {
        let s = T::one() / (T::one() + (-x).exp_activation());
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
        let pdf = pdf_scale * (-half * x * x).exp_activation();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 activations (branch-free exp and erf, vectorised) against the f64 ones (libm).
    #[test]
    fn f32_activations_match_f64_within_rounding() {
        let x64: Vec<f64> = (-4000..=4000).map(|i| i as f64 * 0.005).chain([-100.0, -88.5, -40.0, 40.0, 88.5, 100.0]).collect();
        let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
        let x64: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
        let dy64 = vec![0.75f64; x64.len()];
        let dy32 = vec![0.75f32; x32.len()];
        type Pair = (fn(&[f32], &mut [f32]), fn(&[f64], &mut [f64]), fn(&[f32], &[f32], &mut [f32]), fn(&[f64], &[f64], &mut [f64]));
        let pairs: [(&str, Pair); 2] = [
            ("silu", (silu_forward, silu_forward, silu_backward, silu_backward)),
            ("gelu", (gelu_forward, gelu_forward, gelu_backward, gelu_backward)),
        ];
        for (name, (f32f, f64f, f32b, f64b)) in pairs {
            let (mut y32, mut y64) = (vec![0.0f32; x32.len()], vec![0.0f64; x64.len()]);
            f32f(&x32, &mut y32);
            f64f(&x64, &mut y64);
            let (mut d32, mut d64) = (vec![0.0f32; x32.len()], vec![0.0f64; x64.len()]);
            f32b(&x32, &dy32, &mut d32);
            f64b(&x64, &dy64, &mut d64);
            for (what, got, want) in [("forward", &y32, &y64), ("backward", &d32, &d64)] {
                for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
                    let tol = 1e-6 + 1e-6 * w.abs();
                    assert!((g as f64 - w).abs() <= tol, "{name} {what} at x = {}: {g} vs {w}", x64[i]);
                }
            }
        }
    }

    #[test]
    fn f32_exp_is_accurate_over_its_range() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (got, want) = (crate::real::exp_f32(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got}, want {want}");
        }
    }
}
