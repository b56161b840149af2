//! Activations, dropout and the softmax.
//! The family's forward ops, what their backward passes keep (the op enum), and the backward passes.

use super::*;
use crate::cpu::elementwise::{self as ew, DropoutMask};

#[derive(Clone, Copy, Debug)]
pub(super) enum Unary {
    Silu,
    Gelu,
    Relu,
}

pub(super) enum ActivationOp {
    Unary {
        x: Var,
        kind: Unary,
    },
    /// `silu(gate) * up`
    SwiGlu {
        gate: Var,
        up: Var,
    },
    /// inverted dropout with a mask recomputed from its key (never stored)
    Dropout {
        x: Var,
        mask: DropoutMask,
    },
    Softmax {
        x: Var,
    },
}

impl ActivationOp {
    /// The family member, for timing breakdowns.
    pub(super) fn name(&self) -> &'static str {
        match self {
            ActivationOp::Unary { .. } | ActivationOp::SwiGlu { .. } => "activation",
            ActivationOp::Softmax { .. } => "softmax",
            ActivationOp::Dropout { .. } => "dropout",
        }
    }
}

impl<T> From<ActivationOp> for Op<T> {
    fn from(op: ActivationOp) -> Self {
        Op::Activation(op)
    }
}

impl<T: Scalar> Tape<T> {
    fn unary(&mut self, x: Var, kind: Unary) -> Var {
        use cuda::elementwise as cw;
        let out = self.compute_one(
            self.numel(x),
            |o| match kind {
                Unary::Silu => ew::silu_forward(self.host_slice(x), o),
                Unary::Gelu => ew::gelu_forward(self.host_slice(x), o),
                Unary::Relu => ew::relu_forward(self.host_slice(x), o),
            },
            |g, o| match kind {
                Unary::Silu => cw::silu_forward(g, self.device_buffer(x), o),
                Unary::Gelu => cw::gelu_forward(g, self.device_buffer(x), o),
                Unary::Relu => cw::relu_forward(g, self.device_buffer(x), o),
            },
        );
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), ActivationOp::Unary { x, kind }, needs)
    }

    pub fn silu(&mut self, x: Var) -> Var {
        self.unary(x, Unary::Silu)
    }

    pub fn gelu(&mut self, x: Var) -> Var {
        self.unary(x, Unary::Gelu)
    }

    pub fn relu(&mut self, x: Var) -> Var {
        self.unary(x, Unary::Relu)
    }

    /// `silu(gate) * up` in one pass (the Llama MLP), without storing `silu(gate)`.
    pub fn swiglu(&mut self, gate: Var, up: Var) -> Var {
        assert_eq!(self.shape(gate), self.shape(up), "swiglu: gate and up shapes differ");
        let out = self.compute_one(
            self.numel(gate),
            |o| ew::swiglu_forward(self.host_slice(gate), self.host_slice(up), o),
            |g, o| cuda::elementwise::swiglu_forward(g, self.device_buffer(gate), self.device_buffer(up), o),
        );
        let needs = self.needs(&[gate, up]);
        self.push(out, self.shape(gate).to_vec(), ActivationOp::SwiGlu { gate, up }, needs)
    }

    /// Inverted dropout (`x * keep / (1 - p)`), the mask recomputed from `mask.key` in the backward
    /// pass and on either engine.
    pub fn dropout(&mut self, x: Var, mask: DropoutMask) -> Var {
        let out = self.compute_one(
            self.numel(x),
            |o| ew::dropout(self.host_slice(x), o, &mask),
            |g, o| cuda::elementwise::dropout(g, self.device_buffer(x), &mask, o),
        );
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), ActivationOp::Dropout { x, mask }, needs)
    }

    pub fn softmax(&mut self, x: Var) -> Var {
        let cols = cols_of(self.shape(x));
        let out = self.compute_one(
            self.numel(x),
            |o| ew::softmax_forward(self.host_slice(x), o, cols),
            |g, o| cuda::elementwise::softmax_forward(g, self.device_buffer(x), o, cols),
        );
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), ActivationOp::Softmax { x }, needs)
    }
}

impl<T: Scalar> Tape<T> {
    pub(super) fn activation_backward(&self, op: &ActivationOp, node: &Node<T>, grad: Memory<T>, grads: &mut [Option<Memory<T>>]) {
        let g = &grad;
        let n = |v: Var| self.numel(v);
        match *op {
            ActivationOp::Unary { x, kind } => {
                use cuda::elementwise as cw;
                let dx = self.accumulate_one(
                    n(x),
                    |o| match kind {
                        Unary::Silu => ew::silu_backward(self.host_slice(x), g.host(), o),
                        Unary::Gelu => ew::gelu_backward(self.host_slice(x), g.host(), o),
                        Unary::Relu => ew::relu_backward(self.host_slice(x), g.host(), o),
                    },
                    |gpu, o| match kind {
                        Unary::Silu => cw::silu_backward(gpu, self.device_buffer(x), g.dev(), o),
                        Unary::Gelu => cw::gelu_backward(gpu, self.device_buffer(x), g.dev(), o),
                        Unary::Relu => cw::relu_backward(gpu, self.device_buffer(x), g.dev(), o),
                    },
                );
                self.add_grad(grads, x, dx);
            }
            ActivationOp::SwiGlu { gate, up } => {
                let [dgate, dup] = self.accumulate(
                    [n(gate), n(up)],
                    |[dg, du]| ew::swiglu_backward(self.host_slice(gate), self.host_slice(up), g.host(), dg, du),
                    |gpu, [dg, du]| {
                        cuda::elementwise::swiglu_backward(gpu, self.device_buffer(gate), self.device_buffer(up), g.dev(), dg, du)
                    },
                );
                self.add_grad(grads, gate, dgate);
                self.add_grad(grads, up, dup);
            }
            ActivationOp::Dropout { x, mask } => {
                // linear and diagonal: the backward pass is the same masking of the gradient
                let dx = self.compute_one(
                    n(x),
                    |o| ew::dropout(g.host(), o, &mask),
                    |gpu, o| cuda::elementwise::dropout(gpu, g.dev(), &mask, o),
                );
                self.add_grad(grads, x, dx);
            }
            ActivationOp::Softmax { x } => {
                let cols = cols_of(&node.shape);
                let dx = self.accumulate_one(
                    n(x),
                    |o| ew::softmax_backward(node.value.host(), g.host(), o, cols),
                    |gpu, o| cuda::elementwise::softmax_backward(gpu, node.value.dev(), g.dev(), o, cols),
                );
                self.add_grad(grads, x, dx);
            }
        }
    }
}
