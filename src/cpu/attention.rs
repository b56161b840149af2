//! Multi-head attention within each set (the set transformer's mixing step, and Vanilla RAG's
//! cross-attention from a set's cells to its retrieved candidates), plus rotary position encoding
//! for the reference-compatibility mode.
//!
//! Shapes: `q, out: [sets * cells, heads * head_dim]` (one row per query, heads side by side in the
//! columns), `k, v: [sets * keys, heads * head_dim]`, `lse: [sets, heads, cells]` (log-sum-exp of
//! each query row's scores, saved for the backward pass, as a flash-attention kernel does). Scores
//! are scaled by `1/sqrt(head_dim)`. Bidirectional by default (a set has no order); `causal` masks
//! keys after the query (the reference-compatibility mode; needs `keys == cells`).
//! Backward recomputes the probabilities from `lse` and accumulates into `dq, dk, dv`.

use super::gemm::{matmul_strided, Strided};
use super::vectorised;
use crate::scalar::Scalar;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub sets: usize,
    /// Query rows per set.
    pub cells: usize,
    /// Key/value rows per set (`cells` for self-attention).
    pub keys: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

impl AttentionShape {
    /// Self-attention over the cells of each set.
    pub fn within_sets(sets: usize, cells: usize, heads: usize, head_dim: usize, causal: bool) -> Self {
        AttentionShape { sets, cells, keys: cells, heads, head_dim, causal }
    }
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn head_block(&self, h: usize, rows: usize) -> Strided {
        Strided::block(h * self.head_dim, rows, self.head_dim, self.width())
    }
    fn scale<T: Scalar>(&self) -> T {
        T::one() / T::f(self.head_dim as f64).sqrt()
    }
    fn check(&self, q: usize, k: usize, v: usize) {
        let w = self.width();
        assert!(q == self.sets * self.cells * w && k == self.sets * self.keys * w && v == k, "attention: buffer sizes vs {self:?}");
        assert!(!self.causal || self.keys == self.cells, "causal attention needs as many keys as queries");
    }
}

vectorised!(
    /// Softmax probabilities of one (set, head) from raw scores `[cells, keys]`, in place; returns the
    /// log-sum-exp of every row. Vectorised: the branch-free f32 exp, and the row max and sum kept in
    /// `LANES` partial results (so the sum's order is fixed but not left to right).
    fn probabilities<T>(scores: &mut [T], keys: usize, scale: T, causal: bool, lse: &mut [T]) => softmax_rows
);
#[inline(always)]
fn softmax_rows<T: Scalar>(scores: &mut [T], keys: usize, scale: T, causal: bool, lse: &mut [T]) {
    for (i, row) in scores.chunks_mut(keys).enumerate() {
        let (live, masked) = row.split_at_mut(if causal { i + 1 } else { keys });
        live.iter_mut().for_each(|s| *s = *s * scale);
        let max = lanes(live, T::neg_infinity(), |a, b| a.max(b));
        live.iter_mut().for_each(|s| *s = (*s - max).exp_activation());
        let sum = lanes(live, T::zero(), |a, b| a + b);
        live.iter_mut().for_each(|s| *s = *s / sum);
        masked.fill(T::zero());
        lse[i] = max + sum.ln();
    }
}

vectorised!(
    /// `p = exp(scale * scores - lse)` per row, in place, zero where causal attention masks a key.
    fn recompute_probabilities<T>(scores: &mut [T], keys: usize, scale: T, causal: bool, lse: &[T]) => recompute_rows
);
#[inline(always)]
fn recompute_rows<T: Scalar>(scores: &mut [T], keys: usize, scale: T, causal: bool, lse: &[T]) {
    for (i, row) in scores.chunks_mut(keys).enumerate() {
        let (live, masked) = row.split_at_mut(if causal { i + 1 } else { keys });
        live.iter_mut().for_each(|s| *s = (*s * scale - lse[i]).exp_activation());
        masked.fill(T::zero());
    }
}

const LANES: usize = 16;

/// `x` folded with `op` in `LANES` independent partial results (which vectorise), then those in order.
#[inline(always)]
fn lanes<T: Scalar>(x: &[T], init: T, op: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        acc.iter_mut().zip(chunk).for_each(|(a, &v)| *a = op(*a, v));
    }
    acc.iter_mut().zip(rest).for_each(|(a, &v)| *a = op(*a, v));
    acc.into_iter().fold(init, op)
}

pub fn attention_forward<T: Scalar>(q: &[T], k: &[T], v: &[T], shape: AttentionShape, out: &mut [T], lse: &mut [T]) {
    shape.check(q.len(), k.len(), v.len());
    assert!(out.len() == q.len() && lse.len() == shape.sets * shape.heads * shape.cells);
    let (w, cells, keys) = (shape.width(), shape.cells, shape.keys);
    let (q_len, kv_len) = (cells * w, keys * w);
    let sq = Strided::block(0, cells, keys, keys);
    out.par_chunks_mut(q_len.max(1)).zip(lse.par_chunks_mut((shape.heads * cells).max(1))).enumerate().for_each(|(b, (out, lse))| {
        let (q, k, v) = (&q[b * q_len..][..q_len], &k[b * kv_len..][..kv_len], &v[b * kv_len..][..kv_len]);
        let mut p = vec![T::zero(); cells * keys];
        for h in 0..shape.heads {
            let (qb, kb) = (shape.head_block(h, cells), shape.head_block(h, keys));
            matmul_strided(q, qb, k, kb.t(), &mut p, sq, false);
            probabilities(&mut p, keys, shape.scale(), shape.causal, &mut lse[h * cells..][..cells]);
            matmul_strided(&p, sq, v, kb, out, qb, false);
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Scalar>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[T],
    dout: &[T],
    shape: AttentionShape,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    shape.check(q.len(), k.len(), v.len());
    let (w, cells, keys, scale) = (shape.width(), shape.cells, shape.keys, shape.scale::<T>());
    let (q_len, kv_len) = (cells * w, keys * w);
    let sq = Strided::block(0, cells, keys, keys);
    dq.par_chunks_mut(q_len.max(1)).zip(dk.par_chunks_mut(kv_len.max(1))).zip(dv.par_chunks_mut(kv_len.max(1))).enumerate().for_each(
        |(b, ((dq, dk), dv))| {
            let (rq, rk) = (b * q_len..(b + 1) * q_len, b * kv_len..(b + 1) * kv_len);
            let (q, out, dout) = (&q[rq.clone()], &out[rq.clone()], &dout[rq]);
            let (k, v) = (&k[rk.clone()], &v[rk]);
            let mut p = vec![T::zero(); cells * keys];
            let mut dp = vec![T::zero(); cells * keys];
            for h in 0..shape.heads {
                let (qb, kb) = (shape.head_block(h, cells), shape.head_block(h, keys));
                let lse = &lse[(b * shape.heads + h) * cells..][..cells];
                // Recompute P = exp(scale * q k^T - lse), masked.
                matmul_strided(q, qb, k, kb.t(), &mut p, sq, false);
                recompute_probabilities(&mut p, keys, scale, shape.causal, lse);
                // dV += P^T dO ; dP = dO V^T
                matmul_strided(&p, sq.t(), dout, qb, dv, kb, true);
                matmul_strided(dout, qb, v, kb.t(), &mut dp, sq, false);
                // dS = P * (dP - rowsum(dO * O)), then scaled
                for i in 0..cells {
                    let base = i * w + h * shape.head_dim;
                    let delta: T = (0..shape.head_dim).map(|d| dout[base + d] * out[base + d]).sum();
                    for j in 0..keys {
                        let idx = i * keys + j;
                        dp[idx] = p[idx] * (dp[idx] - delta) * scale;
                    }
                }
                // dQ += dS K ; dK += dS^T Q
                matmul_strided(&dp, sq, k, kb, dq, qb, true);
                matmul_strided(&dp, sq.t(), q, qb, dk, kb, true);
            }
        },
    );
}

/// Rotary position encoding (Llama's "rotate half" layout) of `x: [sets * cells, heads * head_dim]`:
/// the position of a row is its index within its set. For `i < head_dim / 2`, the pair
/// `(x[i], x[i + head_dim/2])` of every head is rotated by `position * theta^(-2i / head_dim)`.
#[derive(Clone, Copy, Debug)]
pub struct Rope {
    pub cells: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub theta: f64,
}

impl Rope {
    /// `[cells, head_dim / 2, 2]`: the sine and cosine of every position's angle for every pair,
    /// computed in f64 (the CUDA kernel reads the same table).
    pub fn sin_cos_table(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let freq: Vec<f64> = (0..half).map(|i| self.theta.powf(-2.0 * i as f64 / self.head_dim as f64)).collect();
        (0..self.cells).flat_map(|pos| freq.iter().flat_map(move |&f| <[f64; 2]>::from((pos as f64 * f).sin_cos()))).collect()
    }

    /// Rotates every row by its position's angles; `inverse` rotates back (the backward pass, as a
    /// rotation's transpose is its inverse). Accumulates into `out` when `accumulate`.
    fn apply<T: Scalar>(&self, x: &[T], out: &mut [T], inverse: bool, accumulate: bool) {
        let (half, width) = (self.head_dim / 2, self.heads * self.head_dim);
        assert!(self.head_dim.is_multiple_of(2), "rotary encoding needs an even head dimension");
        assert!(x.len() == out.len() && x.len().is_multiple_of((width * self.cells).max(1)), "rope: buffer sizes");
        let table = self.sin_cos_table();
        for (r, (xr, yr)) in x.chunks(width).zip(out.chunks_mut(width)).enumerate() {
            let angles = &table[(r % self.cells) * half * 2..][..half * 2];
            for h in 0..self.heads {
                let (xh, yh) = (&xr[h * self.head_dim..][..self.head_dim], &mut yr[h * self.head_dim..][..self.head_dim]);
                for i in 0..half {
                    let (sin, cos) = (angles[2 * i], angles[2 * i + 1]);
                    let (sin, cos) = (T::f(if inverse { -sin } else { sin }), T::f(cos));
                    let (a, b) = (xh[i], xh[i + half]);
                    let (ya, yb) = (a * cos - b * sin, b * cos + a * sin);
                    if accumulate {
                        yh[i] = yh[i] + ya;
                        yh[i + half] = yh[i + half] + yb;
                    } else {
                        yh[i] = ya;
                        yh[i + half] = yb;
                    }
                }
            }
        }
    }
}

/// Rotary position encoding of `x` into `y` (overwrites).
pub fn rope_forward<T: Scalar>(rope: Rope, x: &[T], y: &mut [T]) {
    rope.apply(x, y, false, false);
}

/// Its backward: the inverse rotation of `dy`, added into `dx`.
pub fn rope_backward<T: Scalar>(rope: Rope, dy: &[T], dx: &mut [T]) {
    rope.apply(dy, dx, true, true);
}
