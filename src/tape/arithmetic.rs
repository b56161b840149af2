//! Elementwise arithmetic, row and column scaling, and sums.
//! The family's forward ops, what their backward passes keep (the op enum), and the backward passes.

use super::*;

pub(super) enum ArithmeticOp {
    Add {
        a: Var,
        b: Var,
    },
    Mul {
        a: Var,
        b: Var,
    },
    Scale {
        x: Var,
        factor: f64,
    },
    Sum {
        x: Var,
    },
    /// `x[rows, cols] * w[rows]` (each row scaled by its weight)
    ScaleRows {
        x: Var,
        w: Var,
    },
    /// `x[rows, cols] * v[cols]` (each column scaled by its factor)
    ScaleCols {
        x: Var,
        v: Var,
    },
    /// sums of consecutive groups of `group` rows
    SumGroups {
        x: Var,
        group: usize,
    },
}

impl ArithmeticOp {
    /// The family member, for timing breakdowns.
    pub(super) fn name(&self) -> &'static str {
        match self {
            ArithmeticOp::Add { .. } => "add",
            ArithmeticOp::Mul { .. } => "multiply",
            ArithmeticOp::Scale { .. } | ArithmeticOp::ScaleRows { .. } | ArithmeticOp::ScaleCols { .. } => "scale",
            ArithmeticOp::Sum { .. } | ArithmeticOp::SumGroups { .. } => "sum",
        }
    }
}

impl<T> From<ArithmeticOp> for Op<T> {
    fn from(op: ArithmeticOp) -> Self {
        Op::Arithmetic(op)
    }
}

impl<T: Scalar> Tape<T> {
    pub fn add(&mut self, a: Var, b: Var) -> Var {
        assert_eq!(self.shape(a), self.shape(b), "add: shapes differ");
        let out = self.compute_one(
            self.numel(a),
            |o| tensor::add(self.host_slice(a), self.host_slice(b), o),
            |g, o| cuda::tensor::add(g, self.device_buffer(a), self.device_buffer(b), o),
        );
        let needs = self.needs(&[a, b]);
        self.push(out, self.shape(a).to_vec(), ArithmeticOp::Add { a, b }, needs)
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Var {
        assert_eq!(self.shape(a), self.shape(b), "mul: shapes differ");
        let out = self.compute_one(
            self.numel(a),
            |o| tensor::mul(self.host_slice(a), self.host_slice(b), o),
            |g, o| cuda::tensor::mul(g, self.device_buffer(a), self.device_buffer(b), o),
        );
        let needs = self.needs(&[a, b]);
        self.push(out, self.shape(a).to_vec(), ArithmeticOp::Mul { a, b }, needs)
    }

    pub fn scale(&mut self, x: Var, factor: f64) -> Var {
        let out = self.compute_one(
            self.numel(x),
            |o| tensor::scale(self.host_slice(x), T::f(factor), o),
            |g, o| cuda::tensor::scale(g, self.device_buffer(x), factor as f32, o),
        );
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), ArithmeticOp::Scale { x, factor }, needs)
    }

    pub fn sum(&mut self, x: Var) -> Var {
        let out = self.compute_one(1, |o| tensor::sum(self.host_slice(x), o), |g, o| cuda::tensor::sum(g, self.device_buffer(x), o));
        let needs = self.needs(&[x]);
        self.push(out, vec![1], ArithmeticOp::Sum { x }, needs)
    }

    pub fn mean(&mut self, x: Var) -> Var {
        let n = self.numel(x).max(1);
        let s = self.sum(x);
        self.scale(s, 1.0 / n as f64)
    }

    /// Every row of `x[rows, cols]` times its weight `w[rows]` (any shape with `rows` elements).
    pub fn scale_rows(&mut self, x: Var, w: Var) -> Var {
        let cols = cols_of(self.shape(x));
        assert_eq!(self.numel(x), self.numel(w) * cols, "scale_rows: one weight per row of {:?}", self.shape(x));
        let out = self.compute_one(
            self.numel(x),
            |o| tensor::scale_rows(self.host_slice(x), self.host_slice(w), o),
            |g, o| cuda::tensor::scale_rows(g, self.device_buffer(x), self.device_buffer(w), o),
        );
        let needs = self.needs(&[x, w]);
        self.push(out, self.shape(x).to_vec(), ArithmeticOp::ScaleRows { x, w }, needs)
    }

    /// Every column of `x[rows, cols]` times its factor `v[cols]`.
    pub fn scale_cols(&mut self, x: Var, v: Var) -> Var {
        assert_eq!(self.numel(v), cols_of(self.shape(x)), "scale_cols: one factor per column of {:?}", self.shape(x));
        let out = self.compute_one(
            self.numel(x),
            |o| tensor::scale_cols(self.host_slice(x), self.host_slice(v), o),
            |g, o| cuda::tensor::scale_cols(g, self.device_buffer(x), self.device_buffer(v), o),
        );
        let needs = self.needs(&[x, v]);
        self.push(out, self.shape(x).to_vec(), ArithmeticOp::ScaleCols { x, v }, needs)
    }

    /// `[rows, cols] -> [rows / group, cols]`: the sum of every `group` consecutive rows.
    pub fn sum_groups(&mut self, x: Var, group: usize) -> Var {
        let cols = cols_of(self.shape(x));
        let rows = self.numel(x) / cols;
        assert!(group > 0 && rows.is_multiple_of(group), "sum_groups: {rows} rows in groups of {group}");
        let out = self.compute_one(
            rows / group * cols,
            |o| tensor::sum_groups_forward(self.host_slice(x), cols, group, o),
            |g, o| cuda::tensor::sum_groups_forward(g, self.device_buffer(x), cols, group, o),
        );
        let needs = self.needs(&[x]);
        self.push(out, vec![rows / group, cols], ArithmeticOp::SumGroups { x, group }, needs)
    }
}

impl<T: Scalar> Tape<T> {
    pub(super) fn arithmetic_backward(&self, op: &ArithmeticOp, node: &Node<T>, grad: Memory<T>, grads: &mut [Option<Memory<T>>]) {
        let g = &grad;
        let n = |v: Var| self.numel(v);
        let needs = |v: Var| self.nodes[v.0].needs_grad;
        // Reshape, add, bias, scale, mul and row scaling hand the incoming buffer itself on (scaled
        // in place where needed, on the host): no tensor-sized allocation on the largest activations.
        match *op {
            ArithmeticOp::Add { a, b } => {
                if needs(a) {
                    self.add_grad(grads, a, self.duplicate(g));
                }
                self.add_grad(grads, b, grad);
            }
            ArithmeticOp::Mul { a, b } => {
                if needs(a) {
                    let da = self.compute_one(
                        n(a),
                        |o| tensor::mul(g.host(), self.host_slice(b), o),
                        |gpu, o| cuda::tensor::mul(gpu, g.dev(), self.device_buffer(b), o),
                    );
                    self.add_grad(grads, a, da);
                }
                let db = self.scaled_in_place(
                    grad,
                    n(b),
                    |v| v.iter_mut().zip(self.host_slice(a)).for_each(|(g, &a)| *g = *g * a),
                    |gpu, g, o| cuda::tensor::mul(gpu, g, self.device_buffer(a), o),
                );
                self.add_grad(grads, b, db);
            }
            ArithmeticOp::Scale { x, factor } => {
                let f = T::f(factor);
                let dx = self.scaled_in_place(
                    grad,
                    n(x),
                    |v| v.iter_mut().for_each(|g| *g = *g * f),
                    |gpu, g, o| cuda::tensor::scale(gpu, g, factor as f32, o),
                );
                self.add_grad(grads, x, dx);
            }
            ArithmeticOp::Sum { x } => {
                let dx =
                    self.accumulate_one(n(x), |o| tensor::sum_backward(g.host(), o), |gpu, o| cuda::tensor::sum_backward(gpu, g.dev(), o));
                self.add_grad(grads, x, dx);
            }
            ArithmeticOp::ScaleRows { x, w } => {
                let dw = self.compute_one(
                    n(w),
                    |o| tensor::row_dots(g.host(), self.host_slice(x), o),
                    |gpu, o| cuda::tensor::row_dots(gpu, g.dev(), self.device_buffer(x), o),
                );
                self.add_grad(grads, w, dw);
                let cols = cols_of(&node.shape);
                let dx = self.scaled_in_place(
                    grad,
                    n(x),
                    |v| v.chunks_mut(cols).zip(self.host_slice(w)).for_each(|(r, &w)| r.iter_mut().for_each(|g| *g = *g * w)),
                    |gpu, g, o| cuda::tensor::scale_rows(gpu, g, self.device_buffer(w), o),
                );
                self.add_grad(grads, x, dx);
            }
            ArithmeticOp::ScaleCols { x, v } => self.scale_cols_backward(x, v, g, grads),
            ArithmeticOp::SumGroups { x, group } => {
                let cols = cols_of(&node.shape);
                let dx = self.accumulate_one(
                    n(x),
                    |o| tensor::sum_groups_backward(g.host(), cols, group, o),
                    |gpu, o| cuda::tensor::sum_groups_backward(gpu, g.dev(), cols, group, o),
                );
                self.add_grad(grads, x, dx);
            }
        }
    }

    /// The incoming gradient (`n` elements) scaled elementwise: in place on the host (`host` on its
    /// own buffer, copied first only when shared), into a new buffer by `gpu` on a GPU tape.
    fn scaled_in_place(
        &self,
        grad: Memory<T>,
        n: usize,
        host: impl FnOnce(&mut [T]),
        gpu: impl FnOnce(&Gpu, &Buffer<f32>, &mut Buffer<f32>) -> Result<()>,
    ) -> Memory<T> {
        match grad {
            Memory::Host(mut v) => {
                host(Arc::make_mut(&mut v).as_mut_slice());
                Memory::Host(v)
            }
            // (a failed GPU op's gradient is Missing: `compute_one` then skips the kernel)
            dev => self.compute_one(n, |_| {}, |g, o| gpu(g, dev.dev(), o)),
        }
    }

    /// `x * v` by columns: `dx = g * v` and `dv = column sums of g * x`.
    fn scale_cols_backward(&self, x: Var, v: Var, g: &Memory<T>, grads: &mut [Option<Memory<T>>]) {
        let n = |v: Var| self.numel(v);
        let [dx, dv] = self.compute(
            [n(x), n(v)],
            |[dx, dv]| {
                tensor::scale_cols(g.host(), self.host_slice(v), dx);
                tensor::column_dots(g.host(), Some(self.host_slice(x)), dv);
            },
            |gpu, [dx, dv]| {
                cuda::tensor::scale_cols(gpu, g.dev(), self.device_buffer(v), dx)?;
                cuda::tensor::column_dots(gpu, g.dev(), Some(self.device_buffer(x)), dv)
            },
        );
        self.add_grad(grads, x, dx);
        self.add_grad(grads, v, dv);
    }
}
