//! RMSNorm and LayerNorm over the last dimension, `x, y: [rows, cols]`, with their backward passes.
//! Forward saves the per-row statistics the backward pass needs (mean, reciprocal std).

use crate::scalar::Scalar;
use rayon::prelude::*;

/// `y = w * x / sqrt(mean(x^2) + eps)`; saves `rstd[rows]`.
pub fn rmsnorm_forward<T: Scalar>(x: &[T], w: &[T], eps: f64, y: &mut [T], rstd: &mut [T]) {
    let cols = w.len();
    let eps = T::f(eps);
    y.par_chunks_mut(cols).zip(x.par_chunks(cols)).zip(rstd.par_iter_mut()).for_each(|((y, x), rstd)| {
        let ms = x.iter().map(|&v| v * v).sum::<T>() / T::f(cols as f64);
        let r = T::one() / (ms + eps).sqrt();
        *rstd = r;
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = w * x * r;
        }
    });
}

/// `dx += ...`, `dw += sum_rows(dy * x * rstd)`.
pub fn rmsnorm_backward<T: Scalar>(x: &[T], w: &[T], rstd: &[T], dy: &[T], dx: &mut [T], dw: &mut [T]) {
    let cols = w.len();
    let n = T::f(cols as f64);
    dx.par_chunks_mut(cols).zip(x.par_chunks(cols)).zip(dy.par_chunks(cols)).zip(rstd.par_iter()).for_each(|(((dx, x), dy), &r)| {
        // xhat = x * r; d/dx = r * (g - xhat * mean(g * xhat)) with g = dy * w
        let dot: T = x.iter().zip(dy).zip(w).map(|((&x, &dy), &w)| dy * w * x * r).sum::<T>() / n;
        for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
            *dx = *dx + r * (dy * w - x * r * dot);
        }
    });
    for ((x, dy), &r) in x.chunks(cols).zip(dy.chunks(cols)).zip(rstd) {
        for ((dw, &x), &dy) in dw.iter_mut().zip(x).zip(dy) {
            *dw = *dw + dy * x * r;
        }
    }
}

/// `y = (x - mean) * rstd * w + b`; saves `mean[rows]` and `rstd[rows]` (biased variance, as PyTorch).
pub fn layernorm_forward<T: Scalar>(x: &[T], w: &[T], b: &[T], eps: f64, y: &mut [T], mean: &mut [T], rstd: &mut [T]) {
    let cols = w.len();
    let n = T::f(cols as f64);
    let eps = T::f(eps);
    y.par_chunks_mut(cols).zip(x.par_chunks(cols)).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).for_each(|((y, x), (mean, rstd))| {
        let mu = x.iter().copied().sum::<T>() / n;
        let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<T>() / n;
        let r = T::one() / (var + eps).sqrt();
        *mean = mu;
        *rstd = r;
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = (x - mu) * r * w + b;
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Scalar>(x: &[T], w: &[T], mean: &[T], rstd: &[T], dy: &[T], dx: &mut [T], dw: &mut [T], db: &mut [T]) {
    let cols = w.len();
    let n = T::f(cols as f64);
    dx.par_chunks_mut(cols).zip(x.par_chunks(cols).zip(dy.par_chunks(cols))).zip(mean.par_iter().zip(rstd)).for_each(
        |((dx, (x, dy)), (&mu, &r))| {
            // g = dy * w; dx = r * (g - mean(g) - xhat * mean(g * xhat))
            let mut g_mean = T::zero();
            let mut gx_mean = T::zero();
            for ((&x, &dy), &w) in x.iter().zip(dy).zip(w) {
                let g = dy * w;
                g_mean = g_mean + g;
                gx_mean = gx_mean + g * (x - mu) * r;
            }
            g_mean = g_mean / n;
            gx_mean = gx_mean / n;
            for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                let xhat = (x - mu) * r;
                *dx = *dx + r * (dy * w - g_mean - xhat * gx_mean);
            }
        },
    );
    for ((x, dy), (&mu, &r)) in x.chunks(cols).zip(dy.chunks(cols)).zip(mean.iter().zip(rstd)) {
        for (((dw, db), &x), &dy) in dw.iter_mut().zip(db.iter_mut()).zip(x).zip(dy) {
            *dw = *dw + dy * (x - mu) * r;
            *db = *db + dy;
        }
    }
}
