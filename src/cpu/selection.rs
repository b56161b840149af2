//! Straight-through Gumbel-Softmax, PT-RAG's differentiable candidate selection.
//!
//! Shapes: `logits, noise, soft, hard: [rows, classes]`. Forward: `soft = softmax((logits + noise) / tau)`,
//! `hard = one_hot(argmax soft)` (first index on ties): the forward value is exactly 0/1. Backward uses
//! the soft path's gradient (`hard - soft.detach() + soft`): `dlogits += (1/tau) * soft * (dy - <dy, soft>)`.
//! The noise is an input (standard Gumbel samples), so tests and parity checks can fix it;
//! `gumbel_noise` draws it from a counter stream, the same on every engine.

use crate::scalar::Scalar;
use rayon::prelude::*;

/// Standard Gumbel samples `out[i] = -ln(-ln(u_i))`, with `u_i` in (0, 1) from the top 53 bits of
/// `counter_draw(key, i)`, in f64 and rounded once: a pure function of `(key, i)`, so the GPU draws
/// the same noise where it is used (`gumbel_noise_f32`) instead of the host drawing and uploading it.
pub fn gumbel_noise<T: Scalar>(key: u64, out: &mut [T]) {
    out.par_chunks_mut(1 << 14).enumerate().for_each(|(c, chunk)| {
        for (j, o) in chunk.iter_mut().enumerate() {
            let bits = crate::cpu::counter_draw(key, ((c << 14) + j) as u64) >> 11;
            let u = (bits as f64 + 0.5) * (1.0 / 9_007_199_254_740_992.0);
            *o = T::f((-(-u.ln()).ln()) as f32 as f64);
        }
    });
}

pub fn gumbel_st_forward<T: Scalar>(logits: &[T], noise: &[T], tau: f64, classes: usize, soft: &mut [T], hard: &mut [T]) {
    assert!(logits.len() == noise.len() && logits.len() == soft.len() && soft.len() == hard.len());
    let inv_tau = T::one() / T::f(tau);
    for (((l, g), s), h) in logits.chunks(classes).zip(noise.chunks(classes)).zip(soft.chunks_mut(classes)).zip(hard.chunks_mut(classes)) {
        let z: Vec<T> = l.iter().zip(g).map(|(&l, &g)| (l + g) * inv_tau).collect();
        let max = z.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
        let mut sum = T::zero();
        for (s, &z) in s.iter_mut().zip(&z) {
            *s = (z - max).exp();
            sum = sum + *s;
        }
        s.iter_mut().for_each(|s| *s = *s / sum);
        let arg = (0..classes).fold(0, |best, c| if z[c] > z[best] { c } else { best });
        h.iter_mut().enumerate().for_each(|(c, h)| *h = if c == arg { T::one() } else { T::zero() });
    }
}

pub fn gumbel_st_backward<T: Scalar>(soft: &[T], dy: &[T], tau: f64, classes: usize, dlogits: &mut [T]) {
    let inv_tau = T::one() / T::f(tau);
    for ((s, dy), dl) in soft.chunks(classes).zip(dy.chunks(classes)).zip(dlogits.chunks_mut(classes)) {
        let dot: T = s.iter().zip(dy).map(|(&s, &d)| s * d).sum();
        for ((dl, &s), &d) in dl.iter_mut().zip(s).zip(dy) {
            *dl = *dl + inv_tau * s * (d - dot);
        }
    }
}

/// How PT-RAG's triplets index their three parts: `cells` control cells in `rows` retrieval rows
/// (sets, or cells with per-cell retrieval), `k` candidates per row. Triplet `t = i * k + j` joins
/// cell `i`, its row `s = i / (cells / rows)` (the perturbation) and candidate `s * k + j`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TripletLayout {
    pub cells: usize,
    pub rows: usize,
    pub k: usize,
}

impl TripletLayout {
    pub fn triplets(&self) -> usize {
        self.cells * self.k
    }
    pub fn cells_per_row(&self) -> usize {
        self.cells / self.rows
    }
    /// Rows of the three parts: cells, perturbation rows, candidates.
    pub fn part_rows(&self) -> [usize; 3] {
        [self.cells, self.rows, self.rows * self.k]
    }
    fn check(&self) {
        assert!(self.rows > 0 && self.k > 0 && self.cells.is_multiple_of(self.rows), "triplet layout {self:?}");
    }
    /// The part rows triplet `t` reads: (cell, perturbation row, candidate).
    #[inline]
    fn parts_of(&self, t: usize) -> [usize; 3] {
        let (i, j) = (t / self.k, t % self.k);
        let s = i / self.cells_per_row();
        [i, s, s * self.k + j]
    }
}

/// LayerNorm statistics of every triplet `[c_i; p_s; k_sj]` (width `width` = the three parts'
/// widths together) from per-part row sums and sums of squares, without forming the triplet:
/// `stats[t] = (mean, 1 / sqrt(var + eps))`, biased variance as PyTorch's LayerNorm.
/// `sums[p], squares[p]: [part_rows[p]]`, `stats: [triplets, 2]`.
pub fn triplet_stats_forward<T: Scalar>(
    sums: [&[T]; 3],
    squares: [&[T]; 3],
    layout: TripletLayout,
    width: usize,
    eps: f64,
    stats: &mut [T],
) {
    layout.check();
    for p in 0..3 {
        assert!(sums[p].len() == layout.part_rows()[p] && squares[p].len() == sums[p].len(), "triplet_stats: part {p} sizes");
    }
    assert_eq!(stats.len(), 2 * layout.triplets(), "triplet_stats: output size");
    let (w, eps) = (T::f(width as f64), T::f(eps));
    stats.par_chunks_mut(2).enumerate().for_each(|(t, st)| {
        let r = layout.parts_of(t);
        let mean = (sums[0][r[0]] + sums[1][r[1]] + sums[2][r[2]]) / w;
        let var = ((squares[0][r[0]] + squares[1][r[1]] + squares[2][r[2]]) / w - mean * mean).max(T::zero());
        st[0] = mean;
        st[1] = T::one() / (var + eps).sqrt();
    });
}

/// Accumulates the sums' and squares' gradients from `dstats: [triplets, 2]` (d mean, d rstd).
pub fn triplet_stats_backward<T: Scalar>(
    stats: &[T],
    dstats: &[T],
    layout: TripletLayout,
    width: usize,
    dsums: [&mut [T]; 3],
    dsquares: [&mut [T]; 3],
) {
    layout.check();
    assert!(stats.len() == 2 * layout.triplets() && dstats.len() == stats.len(), "triplet_stats backward: sizes");
    let w = T::f(width as f64);
    let [ds_c, ds_p, ds_k] = dsums;
    let [dq_c, dq_p, dq_k] = dsquares;
    for t in 0..layout.triplets() {
        let (mean, r, d_mean, d_r) = (stats[2 * t], stats[2 * t + 1], dstats[2 * t], dstats[2 * t + 1]);
        // r = (q/w - mean^2 + eps)^(-1/2): dr/dq = -r^3 / (2w); dr/dsum = r^3 mean / w; dmean/dsum = 1/w
        let r3 = r * r * r;
        let d_sum = (d_mean + d_r * r3 * mean) / w;
        let d_square = -(d_r * r3) / (T::f(2.0) * w);
        let [i, s, c] = layout.parts_of(t);
        ds_c[i] = ds_c[i] + d_sum;
        ds_p[s] = ds_p[s] + d_sum;
        ds_k[c] = ds_k[c] + d_sum;
        dq_c[i] = dq_c[i] + d_square;
        dq_p[s] = dq_p[s] + d_square;
        dq_k[c] = dq_k[c] + d_square;
    }
}

/// A linear layer applied to the LayerNorm of every triplet, from the parts' projections:
/// `out[t] = rstd_t * (a_c[i] + a_p[s] + a_k[sj] - mean_t * v) + c`: `LayerNorm(triplet) W^T + b`
/// expanded, where each `a_x` is part `x` times its block of columns of `W diag(gamma)` (transposed),
/// `v = W gamma` and `c = W beta + b`. `parts[p]: [part_rows[p], h]`, `stats: [triplets, 2]`,
/// `v, c: [h]`, `out: [triplets, h]`.
pub fn triplet_assemble_forward<T: Scalar>(parts: [&[T]; 3], stats: &[T], v: &[T], c: &[T], layout: TripletLayout, out: &mut [T]) {
    layout.check();
    let h = v.len();
    for (p, (part, rows)) in parts.iter().zip(layout.part_rows()).enumerate() {
        assert_eq!(part.len(), rows * h, "triplet_assemble: part {p} size");
    }
    assert!(c.len() == h && stats.len() == 2 * layout.triplets() && out.len() == layout.triplets() * h, "triplet_assemble: sizes");
    out.par_chunks_mut(h.max(1)).enumerate().for_each(|(t, o)| {
        let [i, s, k] = layout.parts_of(t);
        let (mean, r) = (stats[2 * t], stats[2 * t + 1]);
        let (a, b, d) = (&parts[0][i * h..][..h], &parts[1][s * h..][..h], &parts[2][k * h..][..h]);
        for e in 0..h {
            o[e] = r * (a[e] + b[e] + d[e] - mean * v[e]) + c[e];
        }
    });
}

/// Backward of `triplet_assemble_forward`: accumulates into the parts, the stats, `v` and `c`.
/// Parallel over retrieval rows: the cells and candidates of a row are its own.
#[allow(clippy::too_many_arguments)]
pub fn triplet_assemble_backward<T: Scalar>(
    parts: [&[T]; 3],
    stats: &[T],
    v: &[T],
    dout: &[T],
    layout: TripletLayout,
    dparts: [&mut [T]; 3],
    dstats: &mut [T],
    dv: &mut [T],
    dc: &mut [T],
) {
    layout.check();
    let (h, per_row, k) = (v.len(), layout.cells_per_row(), layout.k);
    assert!(
        dout.len() == layout.triplets() * h && dstats.len() == stats.len() && dv.len() == h && dc.len() == h,
        "triplet_assemble backward: sizes"
    );
    let [d_cells, d_rows, d_cands] = dparts;
    // Per row: its cells' and candidates' gradients in place, and its share of dv and dc.
    let partial: Vec<(Vec<T>, Vec<T>)> = d_cells
        .par_chunks_mut((per_row * h).max(1))
        .zip(d_rows.par_chunks_mut(h.max(1)))
        .zip(d_cands.par_chunks_mut((k * h).max(1)))
        .zip(dstats.par_chunks_mut(2 * per_row * k))
        .enumerate()
        .map(|(s, (((dcell, drow), dcand), dst))| {
            let (mut dv_s, mut dc_s) = (vec![T::zero(); h], vec![T::zero(); h]);
            let b = &parts[1][s * h..][..h];
            for ci in 0..per_row {
                let i = s * per_row + ci;
                let a = &parts[0][i * h..][..h];
                for j in 0..k {
                    let t = i * k + j;
                    let d = &parts[2][(s * k + j) * h..][..h];
                    let g = &dout[t * h..][..h];
                    let (mean, r) = (stats[2 * t], stats[2 * t + 1]);
                    let (mut d_mean, mut d_r) = (T::zero(), T::zero());
                    for e in 0..h {
                        let rg = r * g[e];
                        dcell[ci * h + e] = dcell[ci * h + e] + rg;
                        drow[e] = drow[e] + rg;
                        dcand[j * h + e] = dcand[j * h + e] + rg;
                        dv_s[e] = dv_s[e] - rg * mean;
                        dc_s[e] = dc_s[e] + g[e];
                        d_mean = d_mean - rg * v[e];
                        d_r = d_r + g[e] * (a[e] + b[e] + d[e] - mean * v[e]);
                    }
                    let local = (ci * k + j) * 2;
                    dst[local] = dst[local] + d_mean;
                    dst[local + 1] = dst[local + 1] + d_r;
                }
            }
            (dv_s, dc_s)
        })
        .collect();
    for (dv_s, dc_s) in partial {
        dv.iter_mut().zip(dv_s).for_each(|(d, x)| *d = *d + x);
        dc.iter_mut().zip(dc_s).for_each(|(d, x)| *d = *d + x);
    }
}

#[cfg(test)]
mod noise_tests {
    use super::gumbel_noise;

    /// Standard Gumbel: mean Euler's gamma, variance pi^2 / 6, P(g <= 0) = 1/e; other keys, other samples.
    #[test]
    fn gumbel_noise_is_standard_gumbel() {
        let n = 200_000;
        let mut g = vec![0.0f64; n];
        gumbel_noise(5, &mut g);
        let mean = g.iter().sum::<f64>() / n as f64;
        let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let below = g.iter().filter(|&&x| x <= 0.0).count() as f64 / n as f64;
        assert!((mean - 0.577_215_66).abs() < 0.01, "mean {mean}");
        assert!((var - std::f64::consts::PI.powi(2) / 6.0).abs() < 0.03, "variance {var}");
        assert!((below - (-1.0f64).exp()).abs() < 0.004, "P(g <= 0) = {below}");
        let mut other = vec![0.0f64; 1000];
        gumbel_noise(6, &mut other);
        assert!(other.iter().zip(&g).filter(|(a, b)| a == b).count() < 5, "keys 5 and 6 draw the same noise");
    }
}
