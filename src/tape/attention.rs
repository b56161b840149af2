//! Attention within each set and rotary positions.
//! The family's forward ops, what their backward passes keep (the op enum), and the backward passes.

use super::*;
use crate::cpu::attention::{attention_backward, attention_forward, rope_backward, rope_forward, AttentionShape, Rope};

pub(super) enum AttentionOp<T> {
    Attention { q: Var, k: Var, v: Var, shape: AttentionShape, lse: Memory<T> },
    Rope { x: Var, rope: Rope },
}

impl<T> AttentionOp<T> {
    /// The family member, for timing breakdowns.
    pub(super) fn name(&self) -> &'static str {
        match self {
            AttentionOp::Attention { .. } => "attention",
            AttentionOp::Rope { .. } => "rope",
        }
    }
}

impl<T> From<AttentionOp<T>> for Op<T> {
    fn from(op: AttentionOp<T>) -> Self {
        Op::Attention(op)
    }
}

impl<T: Scalar> Tape<T> {
    /// Attention within each set; `q, k, v: [sets * cells, heads * head_dim]`.
    pub fn attention(&mut self, q: Var, k: Var, v: Var, shape: AttentionShape) -> Var {
        let [out, lse] = self.compute(
            [self.numel(q), shape.sets * shape.heads * shape.cells],
            |[o, l]| attention_forward(self.host_slice(q), self.host_slice(k), self.host_slice(v), shape, o, l),
            |g, [o, l]| {
                cuda::attention::attention_forward(g, self.device_buffer(q), self.device_buffer(k), self.device_buffer(v), shape, o, l)
            },
        );
        let needs = self.needs(&[q, k, v]);
        self.push(out, self.shape(q).to_vec(), AttentionOp::Attention { q, k, v, shape, lse }, needs)
    }

    /// Rotary position encoding of `x: [sets * cells, heads * head_dim]` (see `cpu::attention::Rope`).
    pub fn rope(&mut self, x: Var, rope: Rope) -> Var {
        let out = self.compute_one(
            self.numel(x),
            |o| rope_forward(rope, self.host_slice(x), o),
            |g, o| cuda::attention::rope_forward(g, rope, self.device_buffer(x), o),
        );
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), AttentionOp::Rope { x, rope }, needs)
    }
}

impl<T: Scalar> Tape<T> {
    pub(super) fn attention_backward(&self, op: &AttentionOp<T>, node: &Node<T>, grad: Memory<T>, grads: &mut [Option<Memory<T>>]) {
        let g = &grad;
        let n = |v: Var| self.numel(v);
        match op {
            AttentionOp::Attention { q, k, v, shape, lse } => {
                let (q, k, v, shape) = (*q, *k, *v, *shape);
                let [dq, dk, dv] = self.accumulate(
                    [n(q), n(k), n(v)],
                    |[dq, dk, dv]| {
                        attention_backward(
                            self.host_slice(q),
                            self.host_slice(k),
                            self.host_slice(v),
                            node.value.host(),
                            lse.host(),
                            g.host(),
                            shape,
                            dq,
                            dk,
                            dv,
                        )
                    },
                    |gpu, [dq, dk, dv]| {
                        cuda::attention::attention_backward(
                            gpu,
                            self.device_buffer(q),
                            self.device_buffer(k),
                            self.device_buffer(v),
                            node.value.dev(),
                            lse.dev(),
                            g.dev(),
                            shape,
                            dq,
                            dk,
                            dv,
                        )
                    },
                );
                self.add_grad(grads, q, dq);
                self.add_grad(grads, k, dk);
                self.add_grad(grads, v, dv);
            }
            &AttentionOp::Rope { x, rope } => {
                let dx = self.accumulate_one(
                    n(x),
                    |o| rope_backward(rope, g.host(), o),
                    |gpu, o| cuda::attention::rope_backward(gpu, rope, g.dev(), o),
                );
                self.add_grad(grads, x, dx);
            }
        }
    }
}
