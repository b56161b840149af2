//! A minimal reverse-mode autodiff tape over the CPU kernels in `crate::cpu`.
//!
//! A model's forward pass records one `Node` per operation (its value, shape and what its backward
//! pass needs); `backward` walks the nodes in reverse, calling each family's backward kernel.
//! Every tensor is a flat row-major buffer; operations that act "per row" use the last dimension as
//! the row length. See `params.rs` for the gradient-accumulation contract.

pub mod params;

use crate::cpu::{
    attention::{attention_backward, attention_forward, AttentionShape, Rope},
    elementwise as ew,
    energy::{energy_backward, energy_forward, EnergyShape},
    gemm::matmul_new,
    norm,
    selection::{
        gumbel_st_backward, gumbel_st_forward, triplet_assemble_backward, triplet_assemble_forward, triplet_stats_backward,
        triplet_stats_forward, TripletLayout,
    },
    tensor, zeros,
};
use crate::real::Real;
pub use params::{Param, ParamId, Params};
use std::borrow::Cow;
use std::sync::Arc;

/// A handle to a node of the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

#[derive(Clone, Copy, Debug)]
enum Unary {
    Silu,
    Gelu,
    Relu,
}

/// What each node is and what its backward pass needs (inputs by handle, saved statistics inline).
enum Op<T> {
    /// Data, or an input whose gradient a test wants (`requires_grad`).
    Leaf,
    Param(ParamId),
    /// `op(a)[m, k] @ op(b)[k, n]`
    MatMul {
        a: Var,
        b: Var,
        trans_a: bool,
        trans_b: bool,
        m: usize,
        k: usize,
        n: usize,
    },
    Add {
        a: Var,
        b: Var,
    },
    /// `x[rows, cols] + bias[cols]`
    AddBias {
        x: Var,
        bias: Var,
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
    Unary {
        x: Var,
        kind: Unary,
    },
    /// `silu(gate) * up`
    SwiGlu {
        gate: Var,
        up: Var,
    },
    Softmax {
        x: Var,
    },
    RmsNorm {
        x: Var,
        w: Var,
        rstd: Vec<T>,
    },
    LayerNorm {
        x: Var,
        w: Var,
        b: Var,
        mean: Vec<T>,
        rstd: Vec<T>,
    },
    Attention {
        q: Var,
        k: Var,
        v: Var,
        shape: AttentionShape,
        lse: Vec<T>,
    },
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
    Energy {
        pred: Var,
        obs: Var,
        shape: EnergyShape,
    },
    GumbelSt {
        logits: Var,
        soft: Vec<T>,
        tau: f64,
    },
    Rope {
        x: Var,
        rope: Rope,
    },
    /// `x[rows, cols] * w[rows]` (each row scaled by its weight)
    ScaleRows {
        x: Var,
        w: Var,
    },
    /// sums of consecutive groups of `group` rows
    SumGroups {
        x: Var,
        group: usize,
    },
    /// `x[rows, cols] * v[cols]` (each column scaled by its factor)
    ScaleCols {
        x: Var,
        v: Var,
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
    /// `x / std(x)` with one global (unbiased) standard deviation; `stats` as `tensor::std_scale_forward` wrote them
    StdScale {
        x: Var,
        stats: Vec<T>,
    },
}

impl<T> Op<T> {
    /// The op's family, for timing breakdowns.
    fn name(&self) -> &'static str {
        match self {
            Op::Leaf => "data",
            Op::Param(_) => "param",
            Op::MatMul { .. } => "matmul",
            Op::Add { .. } => "add",
            Op::AddBias { .. } => "add bias",
            Op::Mul { .. } => "multiply",
            Op::Scale { .. } | Op::ScaleRows { .. } | Op::ScaleCols { .. } => "scale",
            Op::TripletStats { .. } | Op::TripletAssemble { .. } => "triplets",
            Op::Sum { .. } | Op::SumGroups { .. } => "sum",
            Op::Unary { .. } | Op::SwiGlu { .. } => "activation",
            Op::Softmax { .. } => "softmax",
            Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::StdScale { .. } => "norm",
            Op::Attention { .. } => "attention",
            Op::Rope { .. } => "rope",
            Op::Gather { .. } | Op::Concat { .. } | Op::SliceCols { .. } | Op::Reshape { .. } => "gather/concat",
            Op::Energy { .. } => "energy",
            Op::GumbelSt { .. } => "gumbel-st",
        }
    }
}

struct Node<T> {
    value: Arc<Vec<T>>,
    shape: Vec<usize>,
    op: Op<T>,
    needs_grad: bool,
}

/// Seconds per op family (forward: from the previous node to this one, so glue code between ops
/// counts towards the op that follows it).
pub type Timings = Vec<(&'static str, f64)>;

pub struct Tape<T> {
    nodes: Vec<Node<T>>,
    /// With `Tape::timed`: when the last node was recorded, and the forward timings.
    timing: Option<(std::time::Instant, Timings)>,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}
fn cols_of(shape: &[usize]) -> usize {
    *shape.last().unwrap_or(&1)
}

impl<T: Real> Default for Tape<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> Tape<T> {
    pub fn new() -> Self {
        Tape { nodes: Vec::new(), timing: None }
    }

    /// A tape that times its forward ops (see `forward_timings`) and can time `backward_timed`.
    pub fn timed() -> Self {
        Tape { nodes: Vec::new(), timing: Some((std::time::Instant::now(), Vec::new())) }
    }

    pub fn forward_timings(&self) -> Timings {
        self.timing.as_ref().map(|t| t.1.clone()).unwrap_or_default()
    }

    fn record(&mut self, node: Node<T>) -> Var {
        if let Some((last, times)) = &mut self.timing {
            let now = std::time::Instant::now();
            times.push((node.op.name(), (now - *last).as_secs_f64()));
            *last = now;
        }
        self.nodes.push(node);
        Var(self.nodes.len() - 1)
    }

    fn push(&mut self, value: Vec<T>, shape: Vec<usize>, op: Op<T>, needs_grad: bool) -> Var {
        debug_assert_eq!(value.len(), numel(&shape));
        self.record(Node { value: Arc::new(value), shape, op, needs_grad })
    }
    fn needs(&self, vars: &[Var]) -> bool {
        vars.iter().any(|v| self.nodes[v.0].needs_grad)
    }

    pub fn value(&self, v: Var) -> &[T] {
        &self.nodes[v.0].value
    }
    pub fn shape(&self, v: Var) -> &[usize] {
        &self.nodes[v.0].shape
    }
    pub fn scalar(&self, v: Var) -> T {
        self.nodes[v.0].value[0]
    }

    /// Data that needs no gradient.
    pub fn constant(&mut self, shape: &[usize], value: Vec<T>) -> Var {
        assert_eq!(value.len(), numel(shape), "constant: {} values for shape {shape:?}", value.len());
        self.push(value, shape.to_vec(), Op::Leaf, false)
    }
    /// An input whose gradient is kept (used by the gradient tests).
    pub fn input(&mut self, shape: &[usize], value: Vec<T>) -> Var {
        assert_eq!(value.len(), numel(shape), "input: {} values for shape {shape:?}", value.len());
        self.push(value, shape.to_vec(), Op::Leaf, true)
    }
    pub fn param(&mut self, params: &Params<T>, id: ParamId) -> Var {
        let p = params.get(id);
        self.record(Node { value: p.value.clone(), shape: p.shape.clone(), op: Op::Param(id), needs_grad: p.trainable })
    }

    /// 2-D matrix product; with `trans_*` the operand is stored transposed.
    pub fn matmul(&mut self, a: Var, b: Var, trans_a: bool, trans_b: bool) -> Var {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        assert!(sa.len() == 2 && sb.len() == 2, "matmul needs 2-D operands, got {sa:?} and {sb:?}");
        let (m, k) = if trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
        let (k2, n) = if trans_b { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
        assert_eq!(k, k2, "matmul: inner dimensions {sa:?} x {sb:?} (trans {trans_a}, {trans_b})");
        let out = matmul_new(self.value(a), self.value(b), m, k, n, trans_a, trans_b);
        let needs = self.needs(&[a, b]);
        self.push(out, vec![m, n], Op::MatMul { a, b, trans_a, trans_b, m, k, n }, needs)
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

    pub fn add(&mut self, a: Var, b: Var) -> Var {
        assert_eq!(self.shape(a), self.shape(b), "add: shapes differ");
        let mut out = zeros(self.value(a).len());
        tensor::add(self.value(a), self.value(b), &mut out);
        let needs = self.needs(&[a, b]);
        self.push(out, self.shape(a).to_vec(), Op::Add { a, b }, needs)
    }
    pub fn add_bias(&mut self, x: Var, bias: Var) -> Var {
        let cols = cols_of(self.shape(x));
        assert_eq!(self.value(bias).len(), cols, "add_bias: bias length vs last dim of {:?}", self.shape(x));
        let mut out = zeros(self.value(x).len());
        tensor::add_bias(self.value(x), self.value(bias), &mut out);
        let needs = self.needs(&[x, bias]);
        self.push(out, self.shape(x).to_vec(), Op::AddBias { x, bias }, needs)
    }
    pub fn mul(&mut self, a: Var, b: Var) -> Var {
        assert_eq!(self.shape(a), self.shape(b), "mul: shapes differ");
        let mut out = zeros(self.value(a).len());
        tensor::mul(self.value(a), self.value(b), &mut out);
        let needs = self.needs(&[a, b]);
        self.push(out, self.shape(a).to_vec(), Op::Mul { a, b }, needs)
    }
    pub fn scale(&mut self, x: Var, factor: f64) -> Var {
        let mut out = zeros(self.value(x).len());
        tensor::scale(self.value(x), T::f(factor), &mut out);
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), Op::Scale { x, factor }, needs)
    }
    pub fn sum(&mut self, x: Var) -> Var {
        let mut out = vec![T::zero()];
        tensor::sum(self.value(x), &mut out);
        let needs = self.needs(&[x]);
        self.push(out, vec![1], Op::Sum { x }, needs)
    }
    pub fn mean(&mut self, x: Var) -> Var {
        let n = self.value(x).len().max(1);
        let s = self.sum(x);
        self.scale(s, 1.0 / n as f64)
    }

    fn unary(&mut self, x: Var, kind: Unary) -> Var {
        let mut out = zeros(self.value(x).len());
        match kind {
            Unary::Silu => ew::silu_forward(self.value(x), &mut out),
            Unary::Gelu => ew::gelu_forward(self.value(x), &mut out),
            Unary::Relu => ew::relu_forward(self.value(x), &mut out),
        }
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), Op::Unary { x, kind }, needs)
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
        let mut out = zeros(self.value(gate).len());
        ew::swiglu_forward(self.value(gate), self.value(up), &mut out);
        let needs = self.needs(&[gate, up]);
        self.push(out, self.shape(gate).to_vec(), Op::SwiGlu { gate, up }, needs)
    }
    pub fn softmax(&mut self, x: Var) -> Var {
        let mut out = zeros(self.value(x).len());
        ew::softmax_forward(self.value(x), &mut out, cols_of(self.shape(x)));
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), Op::Softmax { x }, needs)
    }

    pub fn rmsnorm(&mut self, x: Var, w: Var, eps: f64) -> Var {
        let cols = cols_of(self.shape(x));
        assert_eq!(self.value(w).len(), cols, "rmsnorm: weight length vs last dim");
        let rows = self.value(x).len() / cols;
        let (mut out, mut rstd) = (zeros(rows * cols), zeros(rows));
        norm::rmsnorm_forward(self.value(x), self.value(w), eps, &mut out, &mut rstd);
        let needs = self.needs(&[x, w]);
        self.push(out, self.shape(x).to_vec(), Op::RmsNorm { x, w, rstd }, needs)
    }
    pub fn layernorm(&mut self, x: Var, w: Var, b: Var, eps: f64) -> Var {
        let cols = cols_of(self.shape(x));
        assert!(self.value(w).len() == cols && self.value(b).len() == cols, "layernorm: weight/bias length vs last dim");
        let rows = self.value(x).len() / cols;
        let (mut out, mut mean, mut rstd) = (zeros(rows * cols), zeros(rows), zeros(rows));
        norm::layernorm_forward(self.value(x), self.value(w), self.value(b), eps, &mut out, &mut mean, &mut rstd);
        let needs = self.needs(&[x, w, b]);
        self.push(out, self.shape(x).to_vec(), Op::LayerNorm { x, w, b, mean, rstd }, needs)
    }

    /// Attention within each set; `q, k, v: [sets * cells, heads * head_dim]`.
    pub fn attention(&mut self, q: Var, k: Var, v: Var, shape: AttentionShape) -> Var {
        let mut out = zeros(self.value(q).len());
        let mut lse = zeros(shape.sets * shape.heads * shape.cells);
        attention_forward(self.value(q), self.value(k), self.value(v), shape, &mut out, &mut lse);
        let needs = self.needs(&[q, k, v]);
        self.push(out, self.shape(q).to_vec(), Op::Attention { q, k, v, shape, lse }, needs)
    }

    /// Rows of `table[rows, cols]` picked by `index` (embedding lookup; also broadcasts a per-set
    /// row to every cell of the set). Out-of-range indices are a caller bug and panic.
    pub fn gather(&mut self, table: Var, index: &[usize]) -> Var {
        let cols = cols_of(self.shape(table));
        let rows = self.value(table).len() / cols;
        if let Some(i) = index.iter().find(|&&i| i >= rows) {
            panic!("gather: index {i} out of {rows} rows");
        }
        let mut out = zeros(index.len() * cols);
        tensor::gather_rows(self.value(table), cols, index, &mut out);
        let needs = self.needs(&[table]);
        self.push(out, vec![index.len(), cols], Op::Gather { table, index: index.to_vec() }, needs)
    }

    /// Concatenate along the last dimension; all parts have the same number of rows.
    pub fn concat(&mut self, parts: &[Var]) -> Var {
        let rows = self.value(parts[0]).len() / cols_of(self.shape(parts[0]));
        let widths: Vec<usize> = parts.iter().map(|&p| cols_of(self.shape(p))).collect();
        for (&p, &w) in parts.iter().zip(&widths) {
            assert_eq!(self.value(p).len(), rows * w, "concat: parts have different row counts");
        }
        let total: usize = widths.iter().sum();
        let mut out = zeros(rows * total);
        let mut start = 0;
        for (&p, &w) in parts.iter().zip(&widths) {
            tensor::copy_cols(self.value(p), w, 0, &mut out, total, start, w, false);
            start += w;
        }
        let needs = self.needs(parts);
        let mut shape = self.shape(parts[0]).to_vec();
        *shape.last_mut().unwrap() = total;
        self.push(out, shape, Op::Concat { parts: parts.iter().copied().zip(widths).collect() }, needs)
    }
    /// Columns `start..start + width` of the last dimension (the inverse of `concat`).
    pub fn slice_cols(&mut self, x: Var, start: usize, width: usize) -> Var {
        let cols = cols_of(self.shape(x));
        assert!(start + width <= cols, "slice_cols: {start}+{width} > {cols}");
        let mut out = zeros(self.value(x).len() / cols * width);
        tensor::copy_cols(self.value(x), cols, start, &mut out, width, 0, width, false);
        let needs = self.needs(&[x]);
        let mut shape = self.shape(x).to_vec();
        *shape.last_mut().unwrap() = width;
        self.push(out, shape, Op::SliceCols { x, start, width }, needs)
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
        assert_eq!(numel(shape), self.value(x).len(), "reshape {:?} -> {shape:?}", self.shape(x));
        let value = self.nodes[x.0].value.clone();
        let needs = self.needs(&[x]);
        self.record(Node { value, shape: shape.to_vec(), op: Op::Reshape { x }, needs_grad: needs })
    }

    /// Per-set (half) energy distance, `[sets]`; see `cpu::energy`.
    pub fn energy(&mut self, pred: Var, obs: Var, shape: EnergyShape) -> Var {
        let mut out = zeros(shape.sets);
        energy_forward(self.value(pred), self.value(obs), shape, &mut out);
        let needs = self.needs(&[pred]);
        self.push(out, vec![shape.sets], Op::Energy { pred, obs, shape }, needs)
    }

    /// Straight-through Gumbel-Softmax over the last dimension with supplied Gumbel noise.
    pub fn gumbel_st(&mut self, logits: Var, noise: &[T], tau: f64) -> Var {
        let classes = cols_of(self.shape(logits));
        let n = self.value(logits).len();
        assert_eq!(noise.len(), n, "gumbel_st: noise length");
        let (mut soft, mut hard) = (zeros(n), zeros(n));
        gumbel_st_forward(self.value(logits), noise, tau, classes, &mut soft, &mut hard);
        let needs = self.needs(&[logits]);
        self.push(hard, self.shape(logits).to_vec(), Op::GumbelSt { logits, soft, tau }, needs)
    }

    /// Rotary position encoding of `x: [sets * cells, heads * head_dim]` (see `cpu::attention::Rope`).
    pub fn rope(&mut self, x: Var, rope: Rope) -> Var {
        let mut out = zeros(self.value(x).len());
        rope.forward(self.value(x), &mut out);
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), Op::Rope { x, rope }, needs)
    }

    /// Every row of `x[rows, cols]` times its weight `w[rows]` (any shape with `rows` elements).
    pub fn scale_rows(&mut self, x: Var, w: Var) -> Var {
        let cols = cols_of(self.shape(x));
        assert_eq!(self.value(x).len(), self.value(w).len() * cols, "scale_rows: one weight per row of {:?}", self.shape(x));
        let mut out = zeros(self.value(x).len());
        tensor::scale_rows(self.value(x), self.value(w), &mut out);
        let needs = self.needs(&[x, w]);
        self.push(out, self.shape(x).to_vec(), Op::ScaleRows { x, w }, needs)
    }

    /// Every column of `x[rows, cols]` times its factor `v[cols]`.
    pub fn scale_cols(&mut self, x: Var, v: Var) -> Var {
        let cols = cols_of(self.shape(x));
        assert_eq!(self.value(v).len(), cols, "scale_cols: one factor per column of {:?}", self.shape(x));
        let mut out = zeros(self.value(x).len());
        tensor::scale_cols(self.value(x), self.value(v), &mut out);
        let needs = self.needs(&[x, v]);
        self.push(out, self.shape(x).to_vec(), Op::ScaleCols { x, v }, needs)
    }

    /// `[triplets, 2]`: (mean, rstd) of every triplet's LayerNorm over `width` columns, from the
    /// parts' row sums and sums of squares (each `[part rows]` or `[part rows, 1]`); see
    /// `cpu::selection::triplet_stats_forward`.
    pub fn triplet_stats(&mut self, sums: [Var; 3], squares: [Var; 3], layout: TripletLayout, width: usize, eps: f64) -> Var {
        let mut out = zeros(2 * layout.triplets());
        triplet_stats_forward(sums.map(|v| self.value(v)), squares.map(|v| self.value(v)), layout, width, eps, &mut out);
        let needs = self.needs(&sums) || self.needs(&squares);
        self.push(out, vec![layout.triplets(), 2], Op::TripletStats { sums, squares, layout, width }, needs)
    }

    /// `[triplets, h]`: `LayerNorm(triplet) W^T + b` from the parts' projections `[part rows, h]`,
    /// the triplet statistics, `v = W gamma` and `c = W beta + b` (`[h]` each); see
    /// `cpu::selection::triplet_assemble_forward`.
    pub fn triplet_assemble(&mut self, parts: [Var; 3], stats: Var, v: Var, c: Var, layout: TripletLayout) -> Var {
        let h = self.value(v).len();
        let mut out = zeros(layout.triplets() * h);
        triplet_assemble_forward(parts.map(|p| self.value(p)), self.value(stats), self.value(v), self.value(c), layout, &mut out);
        let needs = self.needs(&parts) || self.needs(&[stats, v, c]);
        self.push(out, vec![layout.triplets(), h], Op::TripletAssemble { parts, stats, v, c, layout }, needs)
    }

    /// `[rows, cols] -> [rows / group, cols]`: the sum of every `group` consecutive rows.
    pub fn sum_groups(&mut self, x: Var, group: usize) -> Var {
        let cols = cols_of(self.shape(x));
        let rows = self.value(x).len() / cols;
        assert!(group > 0 && rows.is_multiple_of(group), "sum_groups: {rows} rows in groups of {group}");
        let mut out = zeros(rows / group * cols);
        tensor::sum_groups_forward(self.value(x), cols, group, &mut out);
        let needs = self.needs(&[x]);
        self.push(out, vec![rows / group, cols], Op::SumGroups { x, group }, needs)
    }

    /// `x / max(std(x), floor)` with the unbiased standard deviation over all elements (PyTorch's
    /// `x / x.std().clamp(min=floor)`, differentiated through the std as PyTorch does).
    pub fn scale_by_std(&mut self, x: Var, floor: f64) -> Var {
        let n = self.value(x).len();
        assert!(n > 1, "scale_by_std: needs at least two elements");
        let (mut out, mut stats) = (zeros(n), zeros(3));
        tensor::std_scale_forward(self.value(x), floor, &mut out, &mut stats);
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), Op::StdScale { x, stats }, needs)
    }

    /// Reverse pass from a scalar (or a tensor, seeded with ones). Returns the gradients of leaves
    /// marked `input` and of parameters; intermediate gradients are freed as soon as they are used.
    pub fn backward(&self, root: Var) -> Gradients<T> {
        self.backward_impl(root, None)
    }

    /// `backward`, with the seconds each op family's backward kernels took.
    pub fn backward_timed(&self, root: Var) -> (Gradients<T>, Timings) {
        let mut times = Vec::new();
        let grads = self.backward_impl(root, Some(&mut times));
        (grads, times)
    }

    fn backward_impl(&self, root: Var, mut times: Option<&mut Timings>) -> Gradients<T> {
        let mut grads: Vec<Option<Vec<T>>> = (0..self.nodes.len()).map(|_| None).collect();
        grads[root.0] = Some(vec![T::one(); self.value(root).len()]);
        for i in (0..=root.0).rev() {
            let node = &self.nodes[i];
            if !node.needs_grad || matches!(node.op, Op::Leaf | Op::Param(_)) {
                continue;
            }
            let Some(g) = grads[i].take() else { continue };
            // the clock is read only when timing (this loop runs for every node of every step)
            let start = times.is_some().then(std::time::Instant::now);
            self.backward_node(node, g, &mut grads);
            if let (Some(t), Some(start)) = (times.as_deref_mut(), start) {
                t.push((node.op.name(), start.elapsed().as_secs_f64()));
            }
        }
        Gradients { grads }
    }

    /// Accumulates a contribution into `v`'s gradient. The first one becomes the gradient: an owned
    /// buffer is moved into place (no zero-fill, no copy), a borrowed one copied; later ones are added.
    fn add_grad<'c>(&self, grads: &mut [Option<Vec<T>>], v: Var, contrib: impl Into<Cow<'c, [T]>>) {
        if !self.nodes[v.0].needs_grad {
            return;
        }
        let contrib = contrib.into();
        match &mut grads[v.0] {
            Some(slot) => tensor::accumulate(&contrib, slot),
            empty => *empty = Some(contrib.into_owned()),
        }
    }

    fn backward_node(&self, node: &Node<T>, mut grad: Vec<T>, grads: &mut [Option<Vec<T>>]) {
        let g = &grad[..];
        let val = |v: Var| -> &[T] { &self.nodes[v.0].value };
        let zeros_like = |v: Var| zeros(self.nodes[v.0].value.len());
        // Reshape, add, bias, scale, mul and row scaling hand the incoming buffer itself on (scaled
        // in place where needed): no tensor-sized allocation on the largest activations.
        match &node.op {
            Op::Leaf | Op::Param(_) => {}
            &Op::Reshape { x } => self.add_grad(grads, x, grad),
            &Op::Add { a, b } => {
                self.add_grad(grads, a, &grad[..]);
                self.add_grad(grads, b, grad);
            }
            &Op::AddBias { x, bias } => {
                let mut db = zeros_like(bias);
                tensor::column_dots(&grad, None, &mut db);
                self.add_grad(grads, bias, db);
                self.add_grad(grads, x, grad);
            }
            &Op::Scale { x, factor } => {
                let f = T::f(factor);
                grad.iter_mut().for_each(|g| *g = *g * f);
                self.add_grad(grads, x, grad);
            }
            &Op::Mul { a, b } => {
                if self.nodes[a.0].needs_grad {
                    let mut da = zeros(grad.len());
                    tensor::mul(&grad, val(b), &mut da);
                    self.add_grad(grads, a, da);
                }
                grad.iter_mut().zip(val(a)).for_each(|(g, &a)| *g = *g * a);
                self.add_grad(grads, b, grad);
            }
            &Op::ScaleRows { x, w } => {
                let cols = cols_of(&node.shape);
                let mut dw = zeros_like(w);
                tensor::row_dots(&grad, val(x), &mut dw);
                self.add_grad(grads, w, dw);
                grad.chunks_mut(cols).zip(val(w)).for_each(|(r, &w)| r.iter_mut().for_each(|g| *g = *g * w));
                self.add_grad(grads, x, grad);
            }
            &Op::MatMul { a, b, trans_a, trans_b, m, k, n } => {
                if self.nodes[a.0].needs_grad {
                    // C = A B: dA = dC B^T (stored as A^T when trans_a: dA^T = B dC^T)
                    let da = if trans_a {
                        matmul_new(val(b), g, k, n, m, trans_b, true)
                    } else {
                        matmul_new(g, val(b), m, n, k, false, !trans_b)
                    };
                    self.add_grad(grads, a, da);
                }
                if self.nodes[b.0].needs_grad {
                    // dB = A^T dC (stored as B^T when trans_b: dB^T = dC^T A)
                    let db = if trans_b {
                        matmul_new(g, val(a), n, m, k, true, trans_a)
                    } else {
                        matmul_new(val(a), g, k, m, n, !trans_a, false)
                    };
                    self.add_grad(grads, b, db);
                }
            }
            &Op::Sum { x } => {
                let mut dx = zeros_like(x);
                tensor::sum_backward(g, &mut dx);
                self.add_grad(grads, x, dx);
            }
            &Op::Unary { x, kind } => {
                let mut dx = zeros_like(x);
                match kind {
                    Unary::Silu => ew::silu_backward(val(x), g, &mut dx),
                    Unary::Gelu => ew::gelu_backward(val(x), g, &mut dx),
                    Unary::Relu => ew::relu_backward(val(x), g, &mut dx),
                }
                self.add_grad(grads, x, dx);
            }
            &Op::SwiGlu { gate, up } => {
                let (mut dgate, mut dup) = (zeros_like(gate), zeros_like(up));
                ew::swiglu_backward(val(gate), val(up), g, &mut dgate, &mut dup);
                self.add_grad(grads, gate, dgate);
                self.add_grad(grads, up, dup);
            }
            &Op::Softmax { x } => {
                let mut dx = zeros_like(x);
                ew::softmax_backward(&node.value, g, &mut dx, cols_of(&node.shape));
                self.add_grad(grads, x, dx);
            }
            Op::RmsNorm { x, w, rstd } => {
                let (mut dx, mut dw) = (zeros_like(*x), zeros_like(*w));
                norm::rmsnorm_backward(val(*x), val(*w), rstd, g, &mut dx, &mut dw);
                self.add_grad(grads, *x, dx);
                self.add_grad(grads, *w, dw);
            }
            Op::LayerNorm { x, w, b, mean, rstd } => {
                let (mut dx, mut dw, mut db) = (zeros_like(*x), zeros_like(*w), zeros_like(*b));
                norm::layernorm_backward(val(*x), val(*w), mean, rstd, g, &mut dx, &mut dw, &mut db);
                self.add_grad(grads, *x, dx);
                self.add_grad(grads, *w, dw);
                self.add_grad(grads, *b, db);
            }
            Op::Attention { q, k, v, shape, lse } => {
                let (mut dq, mut dk, mut dv) = (zeros_like(*q), zeros_like(*k), zeros_like(*v));
                attention_backward(val(*q), val(*k), val(*v), &node.value, lse, g, *shape, &mut dq, &mut dk, &mut dv);
                self.add_grad(grads, *q, dq);
                self.add_grad(grads, *k, dk);
                self.add_grad(grads, *v, dv);
            }
            Op::Gather { table, index } => {
                let mut dt = zeros_like(*table);
                tensor::scatter_add_rows(g, cols_of(&node.shape), index, &mut dt);
                self.add_grad(grads, *table, dt);
            }
            Op::Concat { parts } => {
                let total = cols_of(&node.shape);
                let mut start = 0;
                for &(p, w) in parts {
                    let mut dp = zeros_like(p);
                    tensor::copy_cols(g, total, start, &mut dp, w, 0, w, false);
                    self.add_grad(grads, p, dp);
                    start += w;
                }
            }
            &Op::SliceCols { x, start, width } => {
                let cols = cols_of(self.shape(x));
                let mut dx = zeros_like(x);
                tensor::copy_cols(g, width, 0, &mut dx, cols, start, width, false);
                self.add_grad(grads, x, dx);
            }
            &Op::Energy { pred, obs, shape } => {
                let mut dp = zeros_like(pred);
                energy_backward(val(pred), val(obs), shape, g, &mut dp);
                self.add_grad(grads, pred, dp);
            }
            Op::GumbelSt { logits, soft, tau } => {
                let mut dl = zeros_like(*logits);
                gumbel_st_backward(soft, g, *tau, cols_of(&node.shape), &mut dl);
                self.add_grad(grads, *logits, dl);
            }
            Op::Rope { x, rope } => {
                let mut dx = zeros_like(*x);
                rope.backward(g, &mut dx);
                self.add_grad(grads, *x, dx);
            }
            &Op::ScaleCols { x, v } => {
                let (mut dx, mut dv) = (zeros_like(x), zeros_like(v));
                tensor::scale_cols(g, val(v), &mut dx);
                tensor::column_dots(g, Some(val(x)), &mut dv);
                self.add_grad(grads, x, dx);
                self.add_grad(grads, v, dv);
            }
            &Op::TripletStats { sums, squares, layout, width } => {
                let (mut ds, mut dq) = (sums.map(zeros_like), squares.map(zeros_like));
                let [s0, s1, s2] = &mut ds;
                let [q0, q1, q2] = &mut dq;
                triplet_stats_backward(&node.value, g, layout, width, [s0, s1, s2], [q0, q1, q2]);
                for (v, d) in sums.into_iter().zip(ds).chain(squares.into_iter().zip(dq)) {
                    self.add_grad(grads, v, d);
                }
            }
            &Op::TripletAssemble { parts, stats, v, c, layout } => {
                let mut dp = parts.map(zeros_like);
                let (mut dstats, mut dv, mut dc) = (zeros_like(stats), zeros_like(v), zeros_like(c));
                let [p0, p1, p2] = &mut dp;
                triplet_assemble_backward(parts.map(val), val(stats), val(v), g, layout, [p0, p1, p2], &mut dstats, &mut dv, &mut dc);
                for (p, d) in parts.into_iter().zip(dp) {
                    self.add_grad(grads, p, d);
                }
                self.add_grad(grads, stats, dstats);
                self.add_grad(grads, v, dv);
                self.add_grad(grads, c, dc);
            }
            &Op::SumGroups { x, group } => {
                let mut dx = zeros_like(x);
                tensor::sum_groups_backward(g, cols_of(&node.shape), group, &mut dx);
                self.add_grad(grads, x, dx);
            }
            Op::StdScale { x, stats } => {
                let mut dx = zeros_like(*x);
                tensor::std_scale_backward(val(*x), stats, g, &mut dx);
                self.add_grad(grads, *x, dx);
            }
        }
    }
}

/// The gradients one `backward` produced, for inputs and parameters.
pub struct Gradients<T> {
    grads: Vec<Option<Vec<T>>>,
}

impl<T: Real> Gradients<T> {
    pub fn get(&self, v: Var) -> Option<&[T]> {
        self.grads[v.0].as_deref()
    }
    /// Adds (`+=`) every parameter node's gradient into `params` (a parameter used by several nodes
    /// receives all contributions).
    pub fn accumulate_into(&self, tape: &Tape<T>, params: &mut Params<T>) {
        for (node, g) in tape.nodes.iter().zip(&self.grads) {
            if let (Op::Param(id), Some(g)) = (&node.op, g) {
                let p = &mut params.entries[id.0];
                p.grad.iter_mut().zip(g).for_each(|(p, &g)| *p = *p + g);
            }
        }
    }
}
