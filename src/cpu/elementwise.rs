//! Elementwise activations and the row softmax. Backward kernels accumulate into `dx`.

use super::{counter_draw, mix64, vectorised};
use crate::scalar::Scalar;
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise scheduling, small enough to split a
/// layer's activations over the cores. Elementwise work gives the same result in any split.
const CHUNK: usize = 1 << 14;

/// `y[i] = f(x[i])`, in parallel, 16 lanes wide where the CPU has AVX-512.
fn map<T: Scalar>(x: &[T], y: &mut [T], f: impl Fn(T) -> T + Sync) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| map_chunk(x, y, &f));
}
vectorised!(fn map_chunk<T>(x: &[T], y: &mut [T], f: &impl Fn(T) -> T) => map_loop);
#[inline(always)]
fn map_loop<T: Scalar>(x: &[T], y: &mut [T], f: &impl Fn(T) -> T) {
    // a `for` loop: `for_each` goes through `fold`, which was not always inlined into the AVX-512 context
    for (y, &x) in y.iter_mut().zip(x) {
        *y = f(x);
    }
}

/// `dx[i] += f(x[i], dy[i])`, in parallel, 16 lanes wide where the CPU has AVX-512.
fn accumulate<T: Scalar>(x: &[T], dy: &[T], dx: &mut [T], f: impl Fn(T, T) -> T + Sync) {
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dx, (x, dy))| accumulate_chunk(x, dy, dx, &f));
}
vectorised!(fn accumulate_chunk<T>(x: &[T], dy: &[T], dx: &mut [T], f: &impl Fn(T, T) -> T) => accumulate_loop);
#[inline(always)]
fn accumulate_loop<T: Scalar>(x: &[T], dy: &[T], dx: &mut [T], f: &impl Fn(T, T) -> T) {
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        *dx = *dx + f(x, dy);
    }
}

pub fn silu_forward<T: Scalar>(x: &[T], y: &mut [T]) {
    map(x, y, |x| x / (T::one() + (-x).exp_activation()));
}
pub fn silu_backward<T: Scalar>(x: &[T], dy: &[T], dx: &mut [T]) {
    accumulate(x, dy, dx, |x, dy| {
        let s = T::one() / (T::one() + (-x).exp_activation());
        dy * s * (T::one() + x * (T::one() - s))
    });
}

/// Exact (erf) GELU, PyTorch's `nn.GELU()` default.
pub fn gelu_forward<T: Scalar>(x: &[T], y: &mut [T]) {
    let r = T::f(std::f64::consts::FRAC_1_SQRT_2);
    let half = T::f(0.5);
    map(x, y, |x| half * x * (T::one() + (x * r).erf()));
}
pub fn gelu_backward<T: Scalar>(x: &[T], dy: &[T], dx: &mut [T]) {
    let r = T::f(std::f64::consts::FRAC_1_SQRT_2);
    let pdf_scale = T::f(1.0 / (2.0 * std::f64::consts::PI).sqrt());
    let half = T::f(0.5);
    accumulate(x, dy, dx, |x, dy| {
        let cdf = half * (T::one() + (x * r).erf());
        let pdf = pdf_scale * (-half * x * x).exp_activation();
        dy * (cdf + x * pdf)
    });
}

pub fn relu_forward<T: Scalar>(x: &[T], y: &mut [T]) {
    map(x, y, |x| if x > T::zero() { x } else { T::zero() });
}
pub fn relu_backward<T: Scalar>(x: &[T], dy: &[T], dx: &mut [T]) {
    accumulate(x, dy, dx, |x, dy| if x > T::zero() { dy } else { T::zero() });
}

/// SwiGLU, the Llama MLP's gating: `y = silu(gate) * up`, fused so that `silu(gate)` is never
/// stored (it would be a third tensor of the MLP's width, written and read back).
pub fn swiglu_forward<T: Scalar>(gate: &[T], up: &[T], y: &mut [T]) {
    assert!(gate.len() == y.len() && up.len() == y.len(), "swiglu: gate, up and y differ in length");
    y.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(y, (gate, up))| {
        swiglu_chunk(gate, up, y);
    });
}
vectorised!(fn swiglu_chunk<T>(gate: &[T], up: &[T], y: &mut [T]) => swiglu_loop);
#[inline(always)]
fn swiglu_loop<T: Scalar>(gate: &[T], up: &[T], y: &mut [T]) {
    for ((y, &g), &u) in y.iter_mut().zip(gate).zip(up) {
        *y = g / (T::one() + (-g).exp_activation()) * u;
    }
}
/// `dgate += dy * up * silu'(gate)`, `dup += dy * silu(gate)`.
pub fn swiglu_backward<T: Scalar>(gate: &[T], up: &[T], dy: &[T], dgate: &mut [T], dup: &mut [T]) {
    let n = dy.len();
    assert!([gate.len(), up.len(), dgate.len(), dup.len()].iter().all(|&l| l == n), "swiglu backward: lengths differ");
    let inputs = gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK));
    let outputs = dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK));
    inputs.zip(outputs).for_each(|(((gate, up), dy), (dgate, dup))| swiglu_backward_chunk(gate, up, dy, dgate, dup));
}
vectorised!(fn swiglu_backward_chunk<T>(gate: &[T], up: &[T], dy: &[T], dgate: &mut [T], dup: &mut [T]) => swiglu_backward_loop);
#[inline(always)]
fn swiglu_backward_loop<T: Scalar>(gate: &[T], up: &[T], dy: &[T], dgate: &mut [T], dup: &mut [T]) {
    for ((((&g, &u), &dy), dg), du) in gate.iter().zip(up).zip(dy).zip(dgate.iter_mut()).zip(dup.iter_mut()) {
        let e = (-g).exp_activation();
        let s = T::one() / (T::one() + e);
        *dg = *dg + dy * u * s * (T::one() + g * (T::one() - s));
        *du = *du + dy * (g / (T::one() + e));
    }
}

/// Inverted dropout whose mask is never stored: element `i` is dropped when the `i`-th draw of a
/// counter-based generator keyed by the step's seed falls below `p`, so the backward pass and the
/// GPU recompute the same mask from `(key, i)` (PT-RAG's scorer mask has 16.8 M entries per step:
/// stored, it was 67 MB to fill, keep and, on a GPU, upload every step). The draw is the high half of
/// `counter_draw(key, i)`; integer arithmetic, so every engine agrees exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    /// The counter stream's key: the seed mixed once (`mix64(seed)`), so that nearby seeds give
    /// unrelated masks.
    pub key: u64,
    /// A draw below this is dropped: `p * 2^32`.
    pub threshold: u32,
    /// Kept elements are scaled by `1 / (1 - p)`.
    pub scale: f64,
}

impl DropoutMask {
    /// The mask of drop probability `p` (in `[0, 1)`) drawn with `seed`.
    pub fn new(seed: u64, p: f64) -> Self {
        assert!((0.0..1.0).contains(&p), "dropout probability {p} is not in [0, 1)");
        DropoutMask { key: mix64(seed), threshold: (p * 4_294_967_296.0) as u32, scale: 1.0 / (1.0 - p) }
    }
    /// Whether element `i` is kept.
    #[inline(always)]
    pub fn keeps(&self, i: u64) -> bool {
        (counter_draw(self.key, i) >> 32) as u32 >= self.threshold
    }
}

/// `y[i] = keep(i) ? x[i] * scale : 0`. Linear and diagonal, so it is also its own backward pass
/// (`dx = dropout(dy)`).
pub fn dropout<T: Scalar>(x: &[T], y: &mut [T], mask: &DropoutMask) {
    assert_eq!(x.len(), y.len(), "dropout: x and y differ in length");
    let scale = T::f(mask.scale);
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).enumerate().for_each(|(c, (y, x))| {
        dropout_chunk(x, y, mask, (c * CHUNK) as u64, scale);
    });
}
vectorised!(fn dropout_chunk<T>(x: &[T], y: &mut [T], mask: &DropoutMask, first: u64, scale: T) => dropout_loop);
#[inline(always)]
fn dropout_loop<T: Scalar>(x: &[T], y: &mut [T], mask: &DropoutMask, first: u64, scale: T) {
    for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
        *y = if mask.keeps(first + j as u64) { x * scale } else { T::zero() };
    }
}

/// Softmax over the last dimension: `x, y: [rows, cols]`.
pub fn softmax_forward<T: Scalar>(x: &[T], y: &mut [T], cols: usize) {
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
pub fn softmax_backward<T: Scalar>(y: &[T], dy: &[T], dx: &mut [T], cols: usize) {
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

    /// The mask drops a fraction p, independently of neighbouring elements and of the thread count;
    /// it depends on the seed; kept elements are scaled by 1 / (1 - p).
    #[test]
    fn dropout_mask_is_seeded_uncorrelated_and_thread_independent() {
        let (n, p) = (300_001, 0.1);
        let mask = DropoutMask::new(7, p);
        let x: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
        let mut y = vec![f32::NAN; n];
        dropout(&x, &mut y, &mask);
        let kept: Vec<bool> = (0..n as u64).map(|i| mask.keeps(i)).collect();
        for ((&x, &y), &k) in x.iter().zip(&y).zip(&kept) {
            assert_eq!(y, if k { x * (1.0 / 0.9f64) as f32 } else { 0.0 });
        }
        let dropped = kept.iter().filter(|&&k| !k).count() as f64 / n as f64;
        assert!((dropped - p).abs() < 0.003, "dropped {dropped}, want {p}");
        let both = kept.windows(2).filter(|w| !w[0] && !w[1]).count() as f64 / (n - 1) as f64;
        assert!((both - p * p).abs() < 0.001, "neighbours both dropped {both}, want {}", p * p);
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let mut y1 = vec![f32::NAN; n];
        one_thread.install(|| dropout(&x, &mut y1, &mask));
        assert!(y1 == y, "the mask depends on the thread count");
        let other = DropoutMask::new(8, p);
        let differ = (0..n as u64).filter(|&i| other.keeps(i) != mask.keeps(i)).count() as f64 / n as f64;
        assert!((differ - 2.0 * p * (1.0 - p)).abs() < 0.005, "seeds 7 and 8 differ in {differ} of the elements");
        assert!((0..1000).all(|i| DropoutMask::new(7, 0.0).keeps(i)), "p = 0 drops nothing");
        let most = DropoutMask::new(7, 0.999);
        assert!((0..10_000).filter(|&i| most.keeps(i)).count() < 30);
    }

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
            let (got, want) = (crate::scalar::exp_f32(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got}, want {want}");
        }
    }
}
