//! Row gathers, column slices and concatenation, reshapes.
//! The family's forward ops, what their backward passes keep (the op enum), and the backward passes.

use super::*;

pub(super) enum LayoutOp {
    /// `out[i] = table[index[i]]` (rows)
    Gather {
        table: Var,
        index: Vec<usize>,
    },
    /// along the last dimension
    Concat {
        parts: Vec<(Var, usize)>,
    },
    SliceCols {
        x: Var,
        start: usize,
        width: usize,
    },
    Reshape {
        x: Var,
    },
}

impl LayoutOp {
    /// The family member, for timing breakdowns.
    pub(super) fn name(&self) -> &'static str {
        match self {
            LayoutOp::Gather { .. } | LayoutOp::Concat { .. } | LayoutOp::SliceCols { .. } | LayoutOp::Reshape { .. } => "gather/concat",
        }
    }
}

impl<T> From<LayoutOp> for Op<T> {
    fn from(op: LayoutOp) -> Self {
        Op::Layout(op)
    }
}

impl<T: Scalar> Tape<T> {
    /// Rows of `table[rows, cols]` picked by `index` (embedding lookup; also broadcasts a per-set
    /// row to every cell of the set). Out-of-range indices are a caller bug and panic.
    pub fn gather(&mut self, table: Var, index: &[usize]) -> Var {
        let cols = cols_of(self.shape(table));
        let rows = self.numel(table) / cols;
        if let Some(i) = index.iter().find(|&&i| i >= rows) {
            panic!("gather: index {i} out of {rows} rows");
        }
        let out = self.compute_one(
            index.len() * cols,
            |o| tensor::gather_rows(self.host_slice(table), cols, index, o),
            |g, o| cuda::tensor::gather_rows(g, self.device_buffer(table), cols, &g.upload(&index_i32(index))?, o),
        );
        let needs = self.needs(&[table]);
        self.push(out, vec![index.len(), cols], LayoutOp::Gather { table, index: index.to_vec() }, needs)
    }

    /// Concatenate along the last dimension; all parts have the same number of rows.
    pub fn concat(&mut self, parts: &[Var]) -> Var {
        let rows = self.numel(parts[0]) / cols_of(self.shape(parts[0]));
        let widths: Vec<usize> = parts.iter().map(|&p| cols_of(self.shape(p))).collect();
        for (&p, &w) in parts.iter().zip(&widths) {
            assert_eq!(self.numel(p), rows * w, "concat: parts have different row counts");
        }
        let total: usize = widths.iter().sum();
        let starts: Vec<usize> = widths.iter().scan(0, |s, &w| Some(std::mem::replace(s, *s + w))).collect();
        let out = self.compute_one(
            rows * total,
            |o| {
                for ((&p, &w), &start) in parts.iter().zip(&widths).zip(&starts) {
                    tensor::copy_cols(self.host_slice(p), w, 0, o, total, start, w, false);
                }
            },
            |g, o| {
                for ((&p, &w), &start) in parts.iter().zip(&widths).zip(&starts) {
                    cuda::tensor::copy_cols(g, self.device_buffer(p), w, 0, o, total, start, w, false)?;
                }
                Ok(())
            },
        );
        let needs = self.needs(parts);
        let mut shape = self.shape(parts[0]).to_vec();
        *shape.last_mut().unwrap() = total;
        self.push(out, shape, LayoutOp::Concat { parts: parts.iter().copied().zip(widths).collect() }, needs)
    }

    /// Columns `start..start + width` of the last dimension (the inverse of `concat`).
    pub fn slice_cols(&mut self, x: Var, start: usize, width: usize) -> Var {
        let cols = cols_of(self.shape(x));
        assert!(start + width <= cols, "slice_cols: {start}+{width} > {cols}");
        let out = self.compute_one(
            self.numel(x) / cols * width,
            |o| tensor::copy_cols(self.host_slice(x), cols, start, o, width, 0, width, false),
            |g, o| cuda::tensor::copy_cols(g, self.device_buffer(x), cols, start, o, width, 0, width, false),
        );
        let needs = self.needs(&[x]);
        let mut shape = self.shape(x).to_vec();
        *shape.last_mut().unwrap() = width;
        self.push(out, shape, LayoutOp::SliceCols { x, start, width }, needs)
    }

    pub fn split(&mut self, x: Var, widths: &[usize]) -> Vec<Var> {
        let mut start = 0;
        widths
            .iter()
            .map(|&w| {
                let v = self.slice_cols(x, start, w);
                start += w;
                v
            })
            .collect()
    }

    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Var {
        assert_eq!(numel(shape), self.numel(x), "reshape {:?} -> {shape:?}", self.shape(x));
        let value = self.nodes[x.0].value.clone();
        let needs = self.needs(&[x]);
        self.record(Node { value, shape: shape.to_vec(), op: LayoutOp::Reshape { x }.into(), needs_grad: needs })
    }
}

impl<T: Scalar> Tape<T> {
    pub(super) fn layout_backward(&self, op: &LayoutOp, node: &Node<T>, grad: Memory<T>, grads: &mut [Option<Memory<T>>]) {
        let g = &grad;
        let n = |v: Var| self.numel(v);
        // Reshape, add, bias, scale, mul and row scaling hand the incoming buffer itself on (scaled
        // in place where needed, on the host): no tensor-sized allocation on the largest activations.
        match op {
            LayoutOp::Gather { table, index } => {
                let (table, cols) = (*table, cols_of(&node.shape));
                let dt = self.accumulate_one(
                    n(table),
                    |o| tensor::scatter_add_rows(g.host(), cols, index, o),
                    |gpu, o| cuda::tensor::scatter_add_rows(gpu, g.dev(), cols, &gpu.upload(&index_i32(index))?, o),
                );
                self.add_grad(grads, table, dt);
            }
            LayoutOp::Concat { parts } => {
                let total = cols_of(&node.shape);
                let mut start = 0;
                for &(p, w) in parts {
                    let dp = self.compute_one(
                        n(p),
                        |o| tensor::copy_cols(g.host(), total, start, o, w, 0, w, false),
                        |gpu, o| cuda::tensor::copy_cols(gpu, g.dev(), total, start, o, w, 0, w, false),
                    );
                    self.add_grad(grads, p, dp);
                    start += w;
                }
            }
            &LayoutOp::SliceCols { x, start, width } => {
                let cols = cols_of(self.shape(x));
                let dx = self.accumulate_one(
                    n(x),
                    |o| tensor::copy_cols(g.host(), width, 0, o, cols, start, width, false),
                    |gpu, o| cuda::tensor::copy_cols(gpu, g.dev(), width, 0, o, cols, start, width, false),
                );
                self.add_grad(grads, x, dx);
            }
            &LayoutOp::Reshape { x } => self.add_grad(grads, x, grad),
        }
    }
}
