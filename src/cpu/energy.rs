//! Energy distance between predicted and observed cell sets, the training loss.
//!
//! Shapes: `pred: [sets, cells_pred, genes]`, `obs: [sets, cells_obs, genes]`, `energy: [sets]`.
//! Per set, with `d(a, b) = sqrt(max(|a - b|^2, 1e-8))` and means over all ordered pairs
//! (V-statistic, diagonal included):
//!   `energy = mean d(x_i, y_j) - 0.5 mean d(x_i, x_j) - 0.5 mean d(y_i, y_j)`,
//! i.e. HALF the energy distance, exactly what the reference's geomloss `SamplesLoss("energy")` returns.
//! Squared distances come from Gram matrices (`|a|^2 + |b|^2 - 2 a.b`) computed by GEMM.
//! Backward gives the gradient with respect to `pred` only (observations are data) and accumulates.

use super::gemm::matmul;
use crate::scalar::Scalar;
use rayon::prelude::*;

pub const ENERGY_CLAMP: f64 = 1e-8;

#[derive(Clone, Copy, Debug)]
pub struct EnergyShape {
    pub sets: usize,
    pub cells_pred: usize,
    pub cells_obs: usize,
    pub genes: usize,
}

/// Distances `d[i, j]` between rows of `a: [n, g]` and `b: [m, g]`, and whether each was clamped.
fn distances<T: Scalar>(a: &[T], b: &[T], n: usize, m: usize, g: usize) -> Vec<T> {
    let mut dot = vec![T::zero(); n * m];
    matmul(a, b, &mut dot, n, g, m, false, true, false);
    let sq = |x: &[T]| -> Vec<T> { x.chunks(g).map(|r| r.iter().map(|&v| v * v).sum()).collect() };
    let (na, nb) = (sq(a), sq(b));
    let clamp = T::f(ENERGY_CLAMP);
    for i in 0..n {
        for j in 0..m {
            let d2 = na[i] + nb[j] - T::f(2.0) * dot[i * m + j];
            dot[i * m + j] = d2.max(clamp).sqrt();
        }
    }
    dot
}

fn mean<T: Scalar>(x: &[T]) -> T {
    x.iter().copied().sum::<T>() / T::f(x.len().max(1) as f64)
}

pub fn energy_forward<T: Scalar>(pred: &[T], obs: &[T], shape: EnergyShape, energy: &mut [T]) {
    let EnergyShape { sets, cells_pred: n, cells_obs: m, genes: g } = shape;
    assert!(pred.len() == sets * n * g && obs.len() == sets * m * g && energy.len() == sets);
    energy.par_iter_mut().enumerate().for_each(|(b, e)| {
        let x = &pred[b * n * g..][..n * g];
        let y = &obs[b * m * g..][..m * g];
        let half = T::f(0.5);
        *e = mean(&distances(x, y, n, m, g)) - half * mean(&distances(x, x, n, n, g)) - half * mean(&distances(y, y, m, m, g));
    });
}

/// `dpred += d_energy[b] * d energy_b / d pred`.
pub fn energy_backward<T: Scalar>(pred: &[T], obs: &[T], shape: EnergyShape, d_energy: &[T], dpred: &mut [T]) {
    let EnergyShape { sets, cells_pred: n, cells_obs: m, genes: g } = shape;
    assert!(pred.len() == sets * n * g && obs.len() == sets * m * g && dpred.len() == sets * n * g);
    let clamp = T::f(ENERGY_CLAMP).sqrt();
    dpred.par_chunks_mut((n * g).max(1)).enumerate().for_each(|(b, dx)| {
        let x = &pred[b * n * g..][..n * g];
        let y = &obs[b * m * g..][..m * g];
        // weights[i, j] = upstream / (pairs * d_ij), zero where the distance was clamped (no gradient there)
        let weights = |d: Vec<T>, pairs: usize, sign: T| -> Vec<T> {
            let c = sign * d_energy[b] / T::f(pairs as f64);
            d.into_iter().map(|d| if d > clamp { c / d } else { T::zero() }).collect()
        };
        // cross term: + mean d(x_i, y_j); self term: -0.5 mean d(x_i, x_j), counted twice (i,j) and (j,i)
        let w_xy = weights(distances(x, y, n, m, g), n * m, T::one());
        let w_xx = weights(distances(x, x, n, n, g), n * n, -T::one());
        // dx_i += sum_j w_xy[i,j] (x_i - y_j) + sum_j w_xx[i,j] (x_i - x_j)
        let row_sum = |w: &[T], cols: usize| -> Vec<T> { w.chunks(cols).map(|r| r.iter().copied().sum()).collect() };
        let (s_xy, s_xx) = (row_sum(&w_xy, m), row_sum(&w_xx, n));
        for i in 0..n {
            let coef = s_xy[i] + s_xx[i];
            for (d, &xv) in dx[i * g..][..g].iter_mut().zip(&x[i * g..][..g]) {
                *d = *d + coef * xv;
            }
        }
        let neg_xy: Vec<T> = w_xy.iter().map(|&w| -w).collect();
        let neg_xx: Vec<T> = w_xx.iter().map(|&w| -w).collect();
        matmul(&neg_xy, y, dx, n, m, g, false, false, true);
        matmul(&neg_xx, x, dx, n, n, g, false, false, true);
    });
}
