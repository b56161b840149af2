//! Products and the bias of a linear layer.
//! The family's forward ops, what their backward passes keep (the op enum), and the backward passes.

use super::*;

pub(super) enum LinearOp {
    /// `op(a)[m, k] @ op(b)[k, n]`
    MatMul { a: Var, b: Var, trans_a: bool, trans_b: bool, m: usize, k: usize, n: usize },
    /// `x[rows, cols] + bias[cols]`
    AddBias { x: Var, bias: Var },
}

impl LinearOp {
    /// The family member, for timing breakdowns.
    pub(super) fn name(&self) -> &'static str {
        match self {
            LinearOp::MatMul { .. } => "matmul",
            LinearOp::AddBias { .. } => "add bias",
        }
    }
}

impl<T> From<LinearOp> for Op<T> {
    fn from(op: LinearOp) -> Self {
        Op::Linear(op)
    }
}

impl<T: Scalar> Tape<T> {
    /// 2-D matrix product; with `trans_*` the operand is stored transposed.
    pub fn matmul(&mut self, a: Var, b: Var, trans_a: bool, trans_b: bool) -> Var {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        assert!(sa.len() == 2 && sb.len() == 2, "matmul needs 2-D operands, got {sa:?} and {sb:?}");
        let (m, k) = if trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
        let (k2, n) = if trans_b { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
        assert_eq!(k, k2, "matmul: inner dimensions {sa:?} x {sb:?} (trans {trans_a}, {trans_b})");
        let out = self.product(Operand::Of(a), Operand::Of(b), [m, k, n], trans_a, trans_b);
        let needs = self.needs(&[a, b]);
        self.push(out, vec![m, n], LinearOp::MatMul { a, b, trans_a, trans_b, m, k, n }, needs)
    }

    /// `x[..., in] @ w[out, in]^T (+ bias[out])`: PyTorch's `nn.Linear` weight layout.
    pub fn linear(&mut self, x: Var, w: Var, bias: Option<Var>) -> Var {
        let shape = self.shape(x).to_vec();
        let rows = numel(&shape) / cols_of(&shape);
        let x2 = self.reshape(x, &[rows, cols_of(&shape)]);
        let y = self.matmul(x2, w, false, true);
        let y = match bias {
            Some(b) => self.add_bias(y, b),
            None => y,
        };
        let mut out_shape = shape;
        *out_shape.last_mut().unwrap() = self.shape(w)[0];
        self.reshape(y, &out_shape)
    }

    pub fn add_bias(&mut self, x: Var, bias: Var) -> Var {
        assert_eq!(self.numel(bias), cols_of(self.shape(x)), "add_bias: bias length vs last dim of {:?}", self.shape(x));
        let out = self.compute_one(
            self.numel(x),
            |o| tensor::add_bias(self.host_slice(x), self.host_slice(bias), o),
            |g, o| cuda::tensor::add_bias(g, self.device_buffer(x), self.device_buffer(bias), o),
        );
        let needs = self.needs(&[x, bias]);
        self.push(out, self.shape(x).to_vec(), LinearOp::AddBias { x, bias }, needs)
    }
}

impl<T: Scalar> Tape<T> {
    pub(super) fn linear_backward(&self, op: &LinearOp, grad: Memory<T>, grads: &mut [Option<Memory<T>>]) {
        let g = &grad;
        let n = |v: Var| self.numel(v);
        let needs = |v: Var| self.nodes[v.0].needs_grad;
        // Reshape, add, bias, scale, mul and row scaling hand the incoming buffer itself on (scaled
        // in place where needed, on the host): no tensor-sized allocation on the largest activations.
        match *op {
            LinearOp::MatMul { a, b, trans_a, trans_b, m, k, n: cols } => {
                use Operand::{Grad, Of};
                if needs(a) {
                    // C = A B: dA = dC B^T (stored as A^T when trans_a: dA^T = B dC^T)
                    let da = if trans_a {
                        self.product(Of(b), Grad(g), [k, cols, m], trans_b, true)
                    } else {
                        self.product(Grad(g), Of(b), [m, cols, k], false, !trans_b)
                    };
                    self.add_grad(grads, a, da);
                }
                if needs(b) {
                    // dB = A^T dC (stored as B^T when trans_b: dB^T = dC^T A)
                    let db = if trans_b {
                        self.product(Grad(g), Of(a), [cols, m, k], true, trans_a)
                    } else {
                        self.product(Of(a), Grad(g), [k, m, cols], !trans_a, false)
                    };
                    self.add_grad(grads, b, db);
                }
            }
            LinearOp::AddBias { x, bias } => {
                let db = self.compute_one(
                    n(bias),
                    |o| tensor::column_dots(g.host(), None, o),
                    |gpu, o| cuda::tensor::column_dots(gpu, g.dev(), None, o),
                );
                self.add_grad(grads, bias, db);
                self.add_grad(grads, x, grad);
            }
        }
    }
}
