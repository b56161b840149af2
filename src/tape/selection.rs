//! PT-RAG's selection: Gumbel noise, the straight-through Gumbel-Softmax and the triplet ops.
//! The family's forward ops, what their backward passes keep (the op enum), and the backward passes.

use super::*;
use crate::cpu::selection::{
    gumbel_noise, gumbel_st_backward, gumbel_st_forward, triplet_assemble_backward, triplet_assemble_forward, triplet_stats_backward,
    triplet_stats_forward, TripletLayout,
};

pub(super) enum SelectionOp<T> {
    GumbelSt {
        logits: Var,
        soft: Memory<T>,
        tau: f64,
    },
    /// LayerNorm statistics of PT-RAG's triplets from per-part row sums and sums of squares
    TripletStats {
        sums: [Var; 3],
        squares: [Var; 3],
        layout: TripletLayout,
        width: usize,
    },
    /// a linear layer on the LayerNorm of every triplet, from the parts' projections
    TripletAssemble {
        parts: [Var; 3],
        stats: Var,
        v: Var,
        c: Var,
        layout: TripletLayout,
    },
}

impl<T> SelectionOp<T> {
    /// The family member, for timing breakdowns.
    pub(super) fn name(&self) -> &'static str {
        match self {
            SelectionOp::TripletStats { .. } | SelectionOp::TripletAssemble { .. } => "triplets",
            SelectionOp::GumbelSt { .. } => "gumbel-st",
        }
    }
}

impl<T> From<SelectionOp<T>> for Op<T> {
    fn from(op: SelectionOp<T>) -> Self {
        Op::Selection(op)
    }
}

impl<T: Scalar> Tape<T> {
    /// Standard Gumbel noise of `shape` drawn from the counter stream `key` where the tape runs
    /// (see `cpu::selection::gumbel_noise`): data, no gradient.
    pub fn gumbel_noise(&mut self, shape: &[usize], key: u64) -> Var {
        let out = self.compute_one(numel(shape), |o| gumbel_noise(key, o), |g, o| cuda::selection::gumbel_noise(g, key, o));
        self.push(out, shape.to_vec(), Op::Leaf, false)
    }

    /// Straight-through Gumbel-Softmax over the last dimension of `logits` with `noise` (same shape;
    /// no gradient flows to it).
    pub fn gumbel_st(&mut self, logits: Var, noise: Var, tau: f64) -> Var {
        let classes = cols_of(self.shape(logits));
        let n = self.numel(logits);
        assert_eq!(self.numel(noise), n, "gumbel_st: noise length");
        let [soft, hard] = self.compute(
            [n, n],
            |[s, h]| gumbel_st_forward(self.host_slice(logits), self.host_slice(noise), tau, classes, s, h),
            |g, [s, h]| cuda::selection::gumbel_st_forward(g, self.device_buffer(logits), self.device_buffer(noise), tau, classes, s, h),
        );
        let needs = self.needs(&[logits]);
        self.push(hard, self.shape(logits).to_vec(), SelectionOp::GumbelSt { logits, soft, tau }, needs)
    }

    /// `[triplets, 2]`: (mean, rstd) of every triplet's LayerNorm over `width` columns, from the
    /// parts' row sums and sums of squares (each `[part rows]` or `[part rows, 1]`); see
    /// `cpu::selection::triplet_stats_forward`.
    pub fn triplet_stats(&mut self, sums: [Var; 3], squares: [Var; 3], layout: TripletLayout, width: usize, eps: f64) -> Var {
        let out = self.compute_one(
            2 * layout.triplets(),
            |o| triplet_stats_forward(sums.map(|v| self.host_slice(v)), squares.map(|v| self.host_slice(v)), layout, width, eps, o),
            |g, o| {
                cuda::selection::triplet_stats_forward(
                    g,
                    sums.map(|v| self.device_buffer(v)),
                    squares.map(|v| self.device_buffer(v)),
                    layout,
                    width,
                    eps,
                    o,
                )
            },
        );
        let needs = self.needs(&sums) || self.needs(&squares);
        self.push(out, vec![layout.triplets(), 2], SelectionOp::TripletStats { sums, squares, layout, width }, needs)
    }

    /// `[triplets, h]`: `LayerNorm(triplet) W^T + b` from the parts' projections `[part rows, h]`,
    /// the triplet statistics, `v = W gamma` and `c = W beta + b` (`[h]` each); see
    /// `cpu::selection::triplet_assemble_forward`.
    pub fn triplet_assemble(&mut self, parts: [Var; 3], stats: Var, v: Var, c: Var, layout: TripletLayout) -> Var {
        let h = self.numel(v);
        let out = self.compute_one(
            layout.triplets() * h,
            |o| {
                triplet_assemble_forward(
                    parts.map(|p| self.host_slice(p)),
                    self.host_slice(stats),
                    self.host_slice(v),
                    self.host_slice(c),
                    layout,
                    o,
                )
            },
            |g, o| {
                cuda::selection::triplet_assemble_forward(
                    g,
                    parts.map(|p| self.device_buffer(p)),
                    self.device_buffer(stats),
                    self.device_buffer(v),
                    self.device_buffer(c),
                    layout,
                    o,
                )
            },
        );
        let needs = self.needs(&parts) || self.needs(&[stats, v, c]);
        self.push(out, vec![layout.triplets(), h], SelectionOp::TripletAssemble { parts, stats, v, c, layout }, needs)
    }
}

impl<T: Scalar> Tape<T> {
    pub(super) fn selection_backward(&self, op: &SelectionOp<T>, node: &Node<T>, grad: Memory<T>, grads: &mut [Option<Memory<T>>]) {
        let g = &grad;
        let n = |v: Var| self.numel(v);
        match op {
            SelectionOp::GumbelSt { logits, soft, tau } => {
                let (logits, tau, classes) = (*logits, *tau, cols_of(&node.shape));
                let dl = self.accumulate_one(
                    n(logits),
                    |o| gumbel_st_backward(soft.host(), g.host(), tau, classes, o),
                    |gpu, o| cuda::selection::gumbel_st_backward(gpu, soft.dev(), g.dev(), tau, classes, o),
                );
                self.add_grad(grads, logits, dl);
            }
            &SelectionOp::TripletStats { sums, squares, layout, width } => {
                let [s0, s1, s2, q0, q1, q2] = self.accumulate(
                    [sums, squares].concat().iter().map(|&v| n(v)).collect::<Vec<_>>().try_into().expect("six parts"),
                    |[s0, s1, s2, q0, q1, q2]| {
                        triplet_stats_backward(node.value.host(), g.host(), layout, width, [s0, s1, s2], [q0, q1, q2])
                    },
                    |gpu, [s0, s1, s2, q0, q1, q2]| {
                        cuda::selection::triplet_stats_backward(gpu, node.value.dev(), g.dev(), layout, width, [s0, s1, s2], [q0, q1, q2])
                    },
                );
                for (v, d) in sums.into_iter().zip([s0, s1, s2]).chain(squares.into_iter().zip([q0, q1, q2])) {
                    self.add_grad(grads, v, d);
                }
            }
            &SelectionOp::TripletAssemble { parts, stats, v, c, layout } => {
                let [p0, p1, p2, dstats, dv, dc] = self.accumulate(
                    [n(parts[0]), n(parts[1]), n(parts[2]), n(stats), n(v), n(c)],
                    |[p0, p1, p2, ds, dv, dc]| {
                        triplet_assemble_backward(
                            parts.map(|p| self.host_slice(p)),
                            self.host_slice(stats),
                            self.host_slice(v),
                            g.host(),
                            layout,
                            [p0, p1, p2],
                            ds,
                            dv,
                            dc,
                        )
                    },
                    |gpu, [p0, p1, p2, ds, dv, dc]| {
                        let parts = parts.map(|p| self.device_buffer(p));
                        cuda::selection::triplet_assemble_backward(
                            gpu,
                            parts,
                            self.device_buffer(stats),
                            self.device_buffer(v),
                            g.dev(),
                            layout,
                            [p0, p1, p2],
                            ds,
                            dv,
                            dc,
                        )
                    },
                );
                for (p, d) in parts.into_iter().zip([p0, p1, p2]) {
                    self.add_grad(grads, p, d);
                }
                self.add_grad(grads, stats, dstats);
                self.add_grad(grads, v, dv);
                self.add_grad(grads, c, dc);
            }
        }
    }
}
