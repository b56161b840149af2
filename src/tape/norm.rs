//! RMSNorm, LayerNorm and the global-std scaling of logits.
//! The family's forward ops, what their backward passes keep (the op enum), and the backward passes.

use super::*;
use crate::cpu::norm as kernels;

pub(super) enum NormOp<T> {
    RmsNorm {
        x: Var,
        w: Var,
        rstd: Memory<T>,
    },
    LayerNorm {
        x: Var,
        w: Var,
        b: Var,
        mean: Memory<T>,
        rstd: Memory<T>,
    },
    /// `x / std(x)` with one global (unbiased) standard deviation; `stats` as `tensor::std_scale_forward` wrote them
    StdScale {
        x: Var,
        stats: Memory<T>,
    },
}

impl<T> NormOp<T> {
    /// The family member, for timing breakdowns.
    pub(super) fn name(&self) -> &'static str {
        match self {
            NormOp::RmsNorm { .. } | NormOp::LayerNorm { .. } | NormOp::StdScale { .. } => "norm",
        }
    }
}

impl<T> From<NormOp<T>> for Op<T> {
    fn from(op: NormOp<T>) -> Self {
        Op::Norm(op)
    }
}

impl<T: Scalar> Tape<T> {
    pub fn rmsnorm(&mut self, x: Var, w: Var, eps: f64) -> Var {
        let cols = cols_of(self.shape(x));
        assert_eq!(self.numel(w), cols, "rmsnorm: weight length vs last dim");
        let rows = self.numel(x) / cols;
        let [out, rstd] = self.compute(
            [rows * cols, rows],
            |[o, r]| kernels::rmsnorm_forward(self.host_slice(x), self.host_slice(w), eps, o, r),
            |g, [o, r]| cuda::norm::rmsnorm_forward(g, self.device_buffer(x), self.device_buffer(w), eps, o, r),
        );
        let needs = self.needs(&[x, w]);
        self.push(out, self.shape(x).to_vec(), NormOp::RmsNorm { x, w, rstd }, needs)
    }

    pub fn layernorm(&mut self, x: Var, w: Var, b: Var, eps: f64) -> Var {
        let cols = cols_of(self.shape(x));
        assert!(self.numel(w) == cols && self.numel(b) == cols, "layernorm: weight/bias length vs last dim");
        let rows = self.numel(x) / cols;
        let [out, mean, rstd] = self.compute(
            [rows * cols, rows, rows],
            |[o, m, r]| kernels::layernorm_forward(self.host_slice(x), self.host_slice(w), self.host_slice(b), eps, o, m, r),
            |g, [o, m, r]| {
                cuda::norm::layernorm_forward(g, self.device_buffer(x), self.device_buffer(w), self.device_buffer(b), eps, o, m, r)
            },
        );
        let needs = self.needs(&[x, w, b]);
        self.push(out, self.shape(x).to_vec(), NormOp::LayerNorm { x, w, b, mean, rstd }, needs)
    }

    /// `x / max(std(x), floor)` with the unbiased standard deviation over all elements (PyTorch's
    /// `x / x.std().clamp(min=floor)`, differentiated through the std as PyTorch does).
    pub fn scale_by_std(&mut self, x: Var, floor: f64) -> Var {
        let n = self.numel(x);
        assert!(n > 1, "scale_by_std: needs at least two elements");
        let [out, stats] = self.compute(
            [n, 3],
            |[o, s]| tensor::std_scale_forward(self.host_slice(x), floor, o, s),
            |g, [o, s]| cuda::tensor::std_scale_forward(g, self.device_buffer(x), floor, o, s),
        );
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), NormOp::StdScale { x, stats }, needs)
    }
}

impl<T: Scalar> Tape<T> {
    pub(super) fn norm_backward(&self, op: &NormOp<T>, grad: Memory<T>, grads: &mut [Option<Memory<T>>]) {
        let g = &grad;
        let n = |v: Var| self.numel(v);
        match op {
            NormOp::RmsNorm { x, w, rstd } => {
                let (x, w) = (*x, *w);
                let [dx, dw] = self.accumulate(
                    [n(x), n(w)],
                    |[dx, dw]| kernels::rmsnorm_backward(self.host_slice(x), self.host_slice(w), rstd.host(), g.host(), dx, dw),
                    |gpu, [dx, dw]| {
                        cuda::norm::rmsnorm_backward(gpu, self.device_buffer(x), self.device_buffer(w), rstd.dev(), g.dev(), dx, dw)
                    },
                );
                self.add_grad(grads, x, dx);
                self.add_grad(grads, w, dw);
            }
            NormOp::LayerNorm { x, w, b, mean, rstd } => {
                let (x, w, b) = (*x, *w, *b);
                let [dx, dw, db] = self.accumulate(
                    [n(x), n(w), n(b)],
                    |[dx, dw, db]| {
                        kernels::layernorm_backward(self.host_slice(x), self.host_slice(w), mean.host(), rstd.host(), g.host(), dx, dw, db)
                    },
                    |gpu, [dx, dw, db]| {
                        cuda::norm::layernorm_backward(
                            gpu,
                            self.device_buffer(x),
                            self.device_buffer(w),
                            mean.dev(),
                            rstd.dev(),
                            g.dev(),
                            dx,
                            dw,
                            db,
                        )
                    },
                );
                self.add_grad(grads, x, dx);
                self.add_grad(grads, w, dw);
                self.add_grad(grads, b, db);
            }
            NormOp::StdScale { x, stats } => {
                let x = *x;
                let dx = self.accumulate_one(
                    n(x),
                    |o| tensor::std_scale_backward(self.host_slice(x), stats.host(), g.host(), o),
                    |gpu, o| cuda::tensor::std_scale_backward(gpu, self.device_buffer(x), stats.dev(), g.dev(), o),
                );
                self.add_grad(grads, x, dx);
            }
        }
    }
}
