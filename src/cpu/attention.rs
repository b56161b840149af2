//! Multi-head attention within each set of cells (the set transformer's mixing step).
//!
//! Shapes: `q, k, v, out: [sets * cells, heads * head_dim]` (one row per cell, heads side by side in
//! the columns), `lse: [sets, heads, cells]` (log-sum-exp of each query row's scores, saved for the
//! backward pass, as a flash-attention kernel does). Scores are scaled by `1/sqrt(head_dim)`.
//! Bidirectional by default (a set has no order); `causal` masks keys after the query (the
//! reference-compatibility mode).
//! Backward recomputes the probabilities from `lse` and accumulates into `dq, dk, dv`.

use super::gemm::{matmul_strided, Strided};
use crate::real::Real;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub sets: usize,
    pub cells: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

impl AttentionShape {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn set_len(&self) -> usize {
        self.cells * self.width()
    }
    fn head_block(&self, h: usize) -> Strided {
        Strided::block(h * self.head_dim, self.cells, self.head_dim, self.width())
    }
    fn scale<T: Real>(&self) -> T {
        T::one() / T::f(self.head_dim as f64).sqrt()
    }
}

/// Softmax probabilities of one (set, head) from raw scores, in place; returns log-sum-exp per row.
fn probabilities<T: Real>(scores: &mut [T], cells: usize, scale: T, causal: bool, lse: &mut [T]) {
    for (i, row) in scores.chunks_mut(cells).enumerate() {
        let visible = if causal { i + 1 } else { cells };
        let mut max = T::neg_infinity();
        for s in row[..visible].iter_mut() {
            *s = *s * scale;
            max = max.max(*s);
        }
        let mut sum = T::zero();
        for s in row[..visible].iter_mut() {
            *s = (*s - max).exp();
            sum = sum + *s;
        }
        row[..visible].iter_mut().for_each(|s| *s = *s / sum);
        row[visible..].iter_mut().for_each(|s| *s = T::zero());
        lse[i] = max + sum.ln();
    }
}

pub fn attention_forward<T: Real>(q: &[T], k: &[T], v: &[T], shape: AttentionShape, out: &mut [T], lse: &mut [T]) {
    let (n, w) = (shape.sets * shape.cells, shape.width());
    assert!(q.len() == n * w && k.len() == n * w && v.len() == n * w && out.len() == n * w);
    assert_eq!(lse.len(), shape.sets * shape.heads * shape.cells);
    let (set_len, cells) = (shape.set_len(), shape.cells);
    out.par_chunks_mut(set_len.max(1)).zip(lse.par_chunks_mut((shape.heads * cells).max(1))).enumerate().for_each(|(b, (out, lse))| {
        let (q, k, v) = (&q[b * set_len..][..set_len], &k[b * set_len..][..set_len], &v[b * set_len..][..set_len]);
        let mut p = vec![T::zero(); cells * cells];
        for h in 0..shape.heads {
            let blk = shape.head_block(h);
            matmul_strided(q, blk, k, blk.t(), &mut p, Strided::block(0, cells, cells, cells), false);
            probabilities(&mut p, cells, shape.scale(), shape.causal, &mut lse[h * cells..][..cells]);
            matmul_strided(&p, Strided::block(0, cells, cells, cells), v, blk, out, blk, false);
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
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
    let (set_len, cells, scale) = (shape.set_len(), shape.cells, shape.scale::<T>());
    let sq = Strided::block(0, cells, cells, cells);
    dq.par_chunks_mut(set_len.max(1)).zip(dk.par_chunks_mut(set_len.max(1))).zip(dv.par_chunks_mut(set_len.max(1))).enumerate().for_each(
        |(b, ((dq, dk), dv))| {
            let r = b * set_len..(b + 1) * set_len;
            let (q, k, v, out, dout) = (&q[r.clone()], &k[r.clone()], &v[r.clone()], &out[r.clone()], &dout[r]);
            let mut p = vec![T::zero(); cells * cells];
            let mut dp = vec![T::zero(); cells * cells];
            for h in 0..shape.heads {
                let blk = shape.head_block(h);
                let lse = &lse[(b * shape.heads + h) * cells..][..cells];
                // Recompute P = exp(scale * q k^T - lse), masked.
                matmul_strided(q, blk, k, blk.t(), &mut p, sq, false);
                for (i, row) in p.chunks_mut(cells).enumerate() {
                    for (j, s) in row.iter_mut().enumerate() {
                        *s = if shape.causal && j > i { T::zero() } else { (*s * scale - lse[i]).exp() };
                    }
                }
                // dV += P^T dO ; dP = dO V^T
                matmul_strided(&p, sq.t(), dout, blk, dv, blk, true);
                matmul_strided(dout, blk, v, blk.t(), &mut dp, sq, false);
                // dS = P * (dP - rowsum(dO * O)), then scaled
                for i in 0..cells {
                    let base = i * shape.width() + h * shape.head_dim;
                    let delta: T = (0..shape.head_dim).map(|d| dout[base + d] * out[base + d]).sum();
                    for j in 0..cells {
                        let idx = i * cells + j;
                        dp[idx] = p[idx] * (dp[idx] - delta) * scale;
                    }
                }
                // dQ += dS K ; dK += dS^T Q
                matmul_strided(&dp, sq, k, blk, dq, blk, true);
                matmul_strided(&dp, sq.t(), q, blk, dk, blk, true);
            }
        },
    );
}
