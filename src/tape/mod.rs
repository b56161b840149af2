//! A minimal reverse-mode autodiff tape over the kernel families: the CPU engine's (`crate::cpu`),
//! or, on a tape made by `Tape::on_gpu`, their CUDA twins (`crate::cuda`, products through cuBLAS).
//!
//! A model's forward pass records one `Node` per operation (its value, shape and what its backward
//! pass needs); `backward` walks the nodes in reverse, calling each family's backward kernel. Every
//! op has both paths side by side, with the same kernels in the same order, so a GPU tape computes
//! what a host tape does (the whole-step parity tests compare them).
//! Every tensor is a flat row-major buffer; operations that act "per row" use the last dimension as
//! the row length. See `params.rs` for the gradient-accumulation contract.

pub mod params;

use crate::cpu::{
    attention::{attention_backward, attention_forward, AttentionShape, Rope},
    elementwise::{self as ew, DropoutMask},
    energy::{energy_backward, energy_forward, EnergyShape},
    gemm::matmul_new,
    norm,
    selection::{
        gumbel_noise, gumbel_st_backward, gumbel_st_forward, triplet_assemble_backward, triplet_assemble_forward, triplet_stats_backward,
        triplet_stats_forward, TripletLayout,
    },
    tensor, zeros,
};
use crate::cuda::{self, Buffer, Gpu};
use crate::real::Real;
use crate::{Error, Result};
pub use params::{Param, ParamId, Params};
use std::cell::RefCell;
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
    /// inverted dropout with a mask recomputed from its key (never stored)
    Dropout {
        x: Var,
        mask: DropoutMask,
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
        rstd: Memory<T>,
    },
    LayerNorm {
        x: Var,
        w: Var,
        b: Var,
        mean: Memory<T>,
        rstd: Memory<T>,
    },
    Attention {
        q: Var,
        k: Var,
        v: Var,
        shape: AttentionShape,
        lse: Memory<T>,
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
        soft: Memory<T>,
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
        stats: Memory<T>,
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
            Op::Dropout { .. } => "dropout",
            Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::StdScale { .. } => "norm",
            Op::Attention { .. } => "attention",
            Op::Rope { .. } => "rope",
            Op::Gather { .. } | Op::Concat { .. } | Op::SliceCols { .. } | Op::Reshape { .. } => "gather/concat",
            Op::Energy { .. } => "energy",
            Op::GumbelSt { .. } => "gumbel-st",
        }
    }
}

/// Where a tensor lives: host memory (the CPU engine) or GPU memory (a tape made by `Tape::on_gpu`,
/// f32 only), behind shared pointers so that parameters and reshapes share storage; gradients are
/// updated in place through `Arc::make_mut` / `Arc::get_mut`. `Missing` stands for an output a
/// failed GPU op never made: the tape's fault says why, and no later op reads it.
#[derive(Clone)]
pub enum Memory<T> {
    Host(Arc<Vec<T>>),
    Gpu(Arc<Buffer<f32>>),
    Missing,
}

// A host op reading a GPU tensor (or the reverse) is a bug in the tape, not a user error.
const WRONG_SIDE: &str = "tape: a tensor read on the wrong side of the host/GPU seam";

impl<T: Real> Memory<T> {
    fn host(&self) -> &[T] {
        match self {
            Memory::Host(v) => v,
            _ => panic!("{WRONG_SIDE}"),
        }
    }
    fn dev(&self) -> &Buffer<f32> {
        match self {
            Memory::Gpu(b) => b,
            _ => panic!("{WRONG_SIDE}"),
        }
    }
    /// A copy on the host, downloaded from `gpu` when it lives there.
    fn to_host(&self, gpu: Option<&Gpu>) -> Result<Vec<T>> {
        match (self, gpu) {
            (Memory::Host(v), _) => Ok(v.to_vec()),
            (Memory::Gpu(b), Some(g)) => Ok(g.download(b)?.iter().map(|&x| T::f(x as f64)).collect()),
            _ => Err(Error::Device("a tensor of a failed GPU op".into())),
        }
    }
}

/// An operand of a product: a node's value, or (in the backward pass) the incoming gradient.
#[derive(Clone, Copy)]
enum Operand<'a, T> {
    Of(Var),
    Grad(&'a Memory<T>),
}

/// What a new GPU output holds before its kernels run (host outputs always start as zeros).
#[derive(Clone, Copy)]
enum Start {
    Unfilled,
    Zeros,
}

struct Node<T> {
    value: Memory<T>,
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
    /// Where the ops run: None for the CPU engine.
    gpu: Option<Arc<Gpu>>,
    /// Parameter values resident on `gpu`, by `ParamId` (empty: uploaded at each use).
    resident: Vec<Arc<Buffer<f32>>>,
    /// The first GPU failure (out of memory, a failed launch); GPU ops are skipped after it, and
    /// `fetch` and `check` return it.
    fault: RefCell<Option<Error>>,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}
fn cols_of(shape: &[usize]) -> usize {
    *shape.last().unwrap_or(&1)
}
fn f32_of<T: Real>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32().unwrap_or(f32::NAN)).collect()
}
fn index_i32(index: &[usize]) -> Vec<i32> {
    index.iter().map(|&i| i as i32).collect()
}

impl<T: Real> Default for Tape<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl Tape<f32> {
    /// A tape whose tensors live on `gpu` and whose ops run its kernels (cuBLAS for products).
    pub fn on_gpu(gpu: Arc<Gpu>) -> Self {
        Tape { gpu: Some(gpu), ..Tape::new() }
    }

    /// A GPU tape whose parameters are already on the GPU: `values[id]` is parameter `id`'s value,
    /// shared (not copied) with the tape's nodes until the tape is dropped.
    pub fn on_gpu_with_params(gpu: Arc<Gpu>, values: Vec<Arc<Buffer<f32>>>) -> Self {
        Tape { gpu: Some(gpu), resident: values, ..Tape::new() }
    }

    /// A GPU tape's value of `v`, shared: it stays valid after the tape is dropped, for reading (or
    /// passing to a kernel) once later work is queued.
    pub fn device_value(&self, v: Var) -> Result<Arc<Buffer<f32>>> {
        self.check()?;
        match &self.nodes[v.0].value {
            Memory::Gpu(b) => Ok(b.clone()),
            _ => Err(Error::Device("a device value of a host tape".into())),
        }
    }
}

impl<T: Real> Tape<T> {
    pub fn new() -> Self {
        Tape { nodes: Vec::new(), timing: None, gpu: None, resident: Vec::new(), fault: RefCell::new(None) }
    }

    /// A tape that times its forward ops (see `forward_timings`) and can time `backward_timed`.
    pub fn timed() -> Self {
        Tape::new().timed_if(true)
    }

    /// With `timed`: a tape that times its ops, waiting for the GPU after each so that every op's
    /// kernels count towards it.
    pub fn timed_if(self, timed: bool) -> Self {
        Tape { timing: timed.then(|| (std::time::Instant::now(), Vec::new())), ..self }
    }

    pub fn forward_timings(&self) -> Timings {
        self.timing.as_ref().map(|t| t.1.clone()).unwrap_or_default()
    }

    /// The first GPU failure of this tape, if any (host tapes never fail). The fault stays, so the
    /// tape keeps skipping GPU work.
    pub fn check(&self) -> Result<()> {
        match &*self.fault.borrow() {
            Some(e) => Err(Error::Device(format!("an op on the GPU failed: {e}"))),
            None => Ok(()),
        }
    }

    fn fail(&self, e: Error) {
        self.fault.borrow_mut().get_or_insert(e);
    }

    /// New tensors of `sizes` elements on the tape's device, written by `cpu` on a host tape or by
    /// `gpu` on a GPU tape, whose kernels overwrite every element: the forward kernels, products and
    /// copies. On a GPU they start unfilled (NaN under the emulator), with no zero-filling pass.
    fn compute<const K: usize>(
        &self,
        sizes: [usize; K],
        cpu: impl FnOnce([&mut [T]; K]),
        gpu: impl FnOnce(&Gpu, [&mut Buffer<f32>; K]) -> Result<()>,
    ) -> [Memory<T>; K] {
        self.outputs(sizes, Start::Unfilled, cpu, gpu)
    }
    fn compute1(&self, n: usize, cpu: impl FnOnce(&mut [T]), gpu: impl FnOnce(&Gpu, &mut Buffer<f32>) -> Result<()>) -> Memory<T> {
        let [out] = self.compute([n], |[o]| cpu(o), |g, [o]| gpu(g, o));
        out
    }
    /// `compute` for kernels that add (`+=`) into their outputs, which start as zeros: the backward
    /// kernels, and copies into part of the output.
    fn accumulate<const K: usize>(
        &self,
        sizes: [usize; K],
        cpu: impl FnOnce([&mut [T]; K]),
        gpu: impl FnOnce(&Gpu, [&mut Buffer<f32>; K]) -> Result<()>,
    ) -> [Memory<T>; K] {
        self.outputs(sizes, Start::Zeros, cpu, gpu)
    }
    fn accumulate1(&self, n: usize, cpu: impl FnOnce(&mut [T]), gpu: impl FnOnce(&Gpu, &mut Buffer<f32>) -> Result<()>) -> Memory<T> {
        let [out] = self.accumulate([n], |[o]| cpu(o), |g, [o]| gpu(g, o));
        out
    }
    fn outputs<const K: usize>(
        &self,
        sizes: [usize; K],
        start: Start,
        cpu: impl FnOnce([&mut [T]; K]),
        gpu: impl FnOnce(&Gpu, [&mut Buffer<f32>; K]) -> Result<()>,
    ) -> [Memory<T>; K] {
        let Some(device) = &self.gpu else {
            let mut outs = sizes.map(zeros);
            cpu(outs.each_mut().map(|v| v.as_mut_slice()));
            return outs.map(|v| Memory::Host(Arc::new(v)));
        };
        if self.fault.borrow().is_some() {
            return sizes.map(|_| Memory::Missing);
        }
        let run = || -> Result<[Buffer<f32>; K]> {
            let new = |n| match start {
                Start::Unfilled => device.unfilled(n),
                Start::Zeros => device.zeros(n),
            };
            let outs: Vec<Buffer<f32>> = sizes.iter().map(|&n| new(n)).collect::<Result<_>>()?;
            let mut outs: [Buffer<f32>; K] = outs.try_into().unwrap_or_else(|_| unreachable!("one buffer per size"));
            gpu(device, outs.each_mut())?;
            Ok(outs)
        };
        match run() {
            Ok(outs) => outs.map(|b| Memory::Gpu(Arc::new(b))),
            Err(e) => {
                self.fail(e);
                sizes.map(|_| Memory::Missing)
            }
        }
    }

    /// Data from the host onto the tape's device.
    fn place(&self, data: Vec<T>) -> Memory<T> {
        match &self.gpu {
            None => Memory::Host(Arc::new(data)),
            Some(g) => match g.upload(&f32_of(&data)) {
                Ok(b) => Memory::Gpu(Arc::new(b)),
                Err(e) => {
                    self.fail(e);
                    Memory::Missing
                }
            },
        }
    }

    fn record(&mut self, node: Node<T>) -> Var {
        if let Some((last, times)) = &mut self.timing {
            if let Some(g) = &self.gpu {
                let _ = g.synchronize();
            }
            let now = std::time::Instant::now();
            times.push((node.op.name(), (now - *last).as_secs_f64()));
            *last = now;
        }
        self.nodes.push(node);
        Var(self.nodes.len() - 1)
    }

    fn push(&mut self, value: Memory<T>, shape: Vec<usize>, op: Op<T>, needs_grad: bool) -> Var {
        self.record(Node { value, shape, op, needs_grad })
    }
    fn needs(&self, vars: &[Var]) -> bool {
        vars.iter().any(|v| self.nodes[v.0].needs_grad)
    }
    fn numel(&self, v: Var) -> usize {
        numel(&self.nodes[v.0].shape)
    }
    fn h(&self, v: Var) -> &[T] {
        self.nodes[v.0].value.host()
    }
    fn d(&self, v: Var) -> &Buffer<f32> {
        self.nodes[v.0].value.dev()
    }

    /// A value on a host tape (GPU tapes: `fetch`).
    pub fn value(&self, v: Var) -> &[T] {
        self.h(v)
    }
    /// A value copied to the host, on either kind of tape; the tape's GPU fault, if it has one.
    pub fn fetch(&self, v: Var) -> Result<Vec<T>> {
        self.check()?;
        self.nodes[v.0].value.to_host(self.gpu.as_deref())
    }
    pub fn shape(&self, v: Var) -> &[usize] {
        &self.nodes[v.0].shape
    }
    pub fn scalar(&self, v: Var) -> T {
        self.h(v)[0]
    }

    /// Data that needs no gradient.
    pub fn constant(&mut self, shape: &[usize], value: Vec<T>) -> Var {
        assert_eq!(value.len(), numel(shape), "constant: {} values for shape {shape:?}", value.len());
        let value = self.place(value);
        self.push(value, shape.to_vec(), Op::Leaf, false)
    }
    /// Data gathered on the GPU: rows `rows` of a table resident there (the dataset's expression),
    /// `[rows.len(), cols]`. Only a GPU tape can read such a table.
    pub fn table_rows(&mut self, table: &cuda::tensor::RowTable, rows: &[u32]) -> Var {
        assert!(self.gpu.is_some(), "{WRONG_SIDE}");
        let n = rows.len() * table.cols();
        let out = self.compute1(
            n,
            |_| unreachable!("a GPU tape"),
            |g, o| {
                if let Some(&r) = rows.iter().find(|&&r| r as usize >= table.rows()) {
                    return Err(Error::Shape { op: "table_rows", why: format!("row {r} of a table of {} rows", table.rows()) });
                }
                let index: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
                cuda::tensor::gather_table_rows(g, table, &g.upload(&index)?, o)
            },
        );
        self.push(out, vec![rows.len(), table.cols()], Op::Leaf, false)
    }
    /// An input whose gradient is kept (used by the gradient tests).
    pub fn input(&mut self, shape: &[usize], value: Vec<T>) -> Var {
        assert_eq!(value.len(), numel(shape), "input: {} values for shape {shape:?}", value.len());
        let value = self.place(value);
        self.push(value, shape.to_vec(), Op::Leaf, true)
    }
    /// A parameter: shared, not copied, on a host tape and with resident values on a GPU tape
    /// (`on_gpu_with_params`); uploaded at each use on a GPU tape without them.
    pub fn param(&mut self, params: &Params<T>, id: ParamId) -> Var {
        let p = params.get(id);
        let value = match (&self.gpu, self.resident.get(id.0)) {
            (None, _) => Memory::Host(p.value.clone()),
            (Some(_), Some(resident)) => {
                assert_eq!(resident.len(), p.value.len(), "tape: resident value of parameter {} has the wrong length", p.name);
                Memory::Gpu(resident.clone())
            }
            (Some(_), None) => self.place(p.value.to_vec()),
        };
        self.record(Node { value, shape: p.shape.clone(), op: Op::Param(id), needs_grad: p.trainable })
    }

    /// 2-D matrix product; with `trans_*` the operand is stored transposed.
    pub fn matmul(&mut self, a: Var, b: Var, trans_a: bool, trans_b: bool) -> Var {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        assert!(sa.len() == 2 && sb.len() == 2, "matmul needs 2-D operands, got {sa:?} and {sb:?}");
        let (m, k) = if trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
        let (k2, n) = if trans_b { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
        assert_eq!(k, k2, "matmul: inner dimensions {sa:?} x {sb:?} (trans {trans_a}, {trans_b})");
        let out = self.product(Operand::Of(a), Operand::Of(b), [m, k, n], trans_a, trans_b);
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
        let out =
            self.compute1(self.numel(a), |o| tensor::add(self.h(a), self.h(b), o), |g, o| cuda::tensor::add(g, self.d(a), self.d(b), o));
        let needs = self.needs(&[a, b]);
        self.push(out, self.shape(a).to_vec(), Op::Add { a, b }, needs)
    }
    pub fn add_bias(&mut self, x: Var, bias: Var) -> Var {
        assert_eq!(self.numel(bias), cols_of(self.shape(x)), "add_bias: bias length vs last dim of {:?}", self.shape(x));
        let out = self.compute1(
            self.numel(x),
            |o| tensor::add_bias(self.h(x), self.h(bias), o),
            |g, o| cuda::tensor::add_bias(g, self.d(x), self.d(bias), o),
        );
        let needs = self.needs(&[x, bias]);
        self.push(out, self.shape(x).to_vec(), Op::AddBias { x, bias }, needs)
    }
    pub fn mul(&mut self, a: Var, b: Var) -> Var {
        assert_eq!(self.shape(a), self.shape(b), "mul: shapes differ");
        let out =
            self.compute1(self.numel(a), |o| tensor::mul(self.h(a), self.h(b), o), |g, o| cuda::tensor::mul(g, self.d(a), self.d(b), o));
        let needs = self.needs(&[a, b]);
        self.push(out, self.shape(a).to_vec(), Op::Mul { a, b }, needs)
    }
    pub fn scale(&mut self, x: Var, factor: f64) -> Var {
        let out = self.compute1(
            self.numel(x),
            |o| tensor::scale(self.h(x), T::f(factor), o),
            |g, o| cuda::tensor::scale(g, self.d(x), factor as f32, o),
        );
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), Op::Scale { x, factor }, needs)
    }
    pub fn sum(&mut self, x: Var) -> Var {
        let out = self.compute1(1, |o| tensor::sum(self.h(x), o), |g, o| cuda::tensor::sum(g, self.d(x), o));
        let needs = self.needs(&[x]);
        self.push(out, vec![1], Op::Sum { x }, needs)
    }
    pub fn mean(&mut self, x: Var) -> Var {
        let n = self.numel(x).max(1);
        let s = self.sum(x);
        self.scale(s, 1.0 / n as f64)
    }

    fn unary(&mut self, x: Var, kind: Unary) -> Var {
        use cuda::elementwise as cw;
        let out = self.compute1(
            self.numel(x),
            |o| match kind {
                Unary::Silu => ew::silu_forward(self.h(x), o),
                Unary::Gelu => ew::gelu_forward(self.h(x), o),
                Unary::Relu => ew::relu_forward(self.h(x), o),
            },
            |g, o| match kind {
                Unary::Silu => cw::silu_forward(g, self.d(x), o),
                Unary::Gelu => cw::gelu_forward(g, self.d(x), o),
                Unary::Relu => cw::relu_forward(g, self.d(x), o),
            },
        );
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
        let out = self.compute1(
            self.numel(gate),
            |o| ew::swiglu_forward(self.h(gate), self.h(up), o),
            |g, o| cuda::elementwise::swiglu_forward(g, self.d(gate), self.d(up), o),
        );
        let needs = self.needs(&[gate, up]);
        self.push(out, self.shape(gate).to_vec(), Op::SwiGlu { gate, up }, needs)
    }
    /// Inverted dropout (`x * keep / (1 - p)`), the mask recomputed from `mask.key` in the backward
    /// pass and on either engine.
    pub fn dropout(&mut self, x: Var, mask: DropoutMask) -> Var {
        let out =
            self.compute1(self.numel(x), |o| ew::dropout(self.h(x), o, &mask), |g, o| cuda::elementwise::dropout(g, self.d(x), &mask, o));
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), Op::Dropout { x, mask }, needs)
    }
    pub fn softmax(&mut self, x: Var) -> Var {
        let cols = cols_of(self.shape(x));
        let out = self.compute1(
            self.numel(x),
            |o| ew::softmax_forward(self.h(x), o, cols),
            |g, o| cuda::elementwise::softmax_forward(g, self.d(x), o, cols),
        );
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), Op::Softmax { x }, needs)
    }

    pub fn rmsnorm(&mut self, x: Var, w: Var, eps: f64) -> Var {
        let cols = cols_of(self.shape(x));
        assert_eq!(self.numel(w), cols, "rmsnorm: weight length vs last dim");
        let rows = self.numel(x) / cols;
        let [out, rstd] = self.compute(
            [rows * cols, rows],
            |[o, r]| norm::rmsnorm_forward(self.h(x), self.h(w), eps, o, r),
            |g, [o, r]| cuda::norm::rmsnorm_forward(g, self.d(x), self.d(w), eps, o, r),
        );
        let needs = self.needs(&[x, w]);
        self.push(out, self.shape(x).to_vec(), Op::RmsNorm { x, w, rstd }, needs)
    }
    pub fn layernorm(&mut self, x: Var, w: Var, b: Var, eps: f64) -> Var {
        let cols = cols_of(self.shape(x));
        assert!(self.numel(w) == cols && self.numel(b) == cols, "layernorm: weight/bias length vs last dim");
        let rows = self.numel(x) / cols;
        let [out, mean, rstd] = self.compute(
            [rows * cols, rows, rows],
            |[o, m, r]| norm::layernorm_forward(self.h(x), self.h(w), self.h(b), eps, o, m, r),
            |g, [o, m, r]| cuda::norm::layernorm_forward(g, self.d(x), self.d(w), self.d(b), eps, o, m, r),
        );
        let needs = self.needs(&[x, w, b]);
        self.push(out, self.shape(x).to_vec(), Op::LayerNorm { x, w, b, mean, rstd }, needs)
    }

    /// Attention within each set; `q, k, v: [sets * cells, heads * head_dim]`.
    pub fn attention(&mut self, q: Var, k: Var, v: Var, shape: AttentionShape) -> Var {
        let [out, lse] = self.compute(
            [self.numel(q), shape.sets * shape.heads * shape.cells],
            |[o, l]| attention_forward(self.h(q), self.h(k), self.h(v), shape, o, l),
            |g, [o, l]| cuda::attention::attention_forward(g, self.d(q), self.d(k), self.d(v), shape, o, l),
        );
        let needs = self.needs(&[q, k, v]);
        self.push(out, self.shape(q).to_vec(), Op::Attention { q, k, v, shape, lse }, needs)
    }

    /// Rows of `table[rows, cols]` picked by `index` (embedding lookup; also broadcasts a per-set
    /// row to every cell of the set). Out-of-range indices are a caller bug and panic.
    pub fn gather(&mut self, table: Var, index: &[usize]) -> Var {
        let cols = cols_of(self.shape(table));
        let rows = self.numel(table) / cols;
        if let Some(i) = index.iter().find(|&&i| i >= rows) {
            panic!("gather: index {i} out of {rows} rows");
        }
        let out = self.compute1(
            index.len() * cols,
            |o| tensor::gather_rows(self.h(table), cols, index, o),
            |g, o| cuda::tensor::gather_rows(g, self.d(table), cols, &g.upload(&index_i32(index))?, o),
        );
        let needs = self.needs(&[table]);
        self.push(out, vec![index.len(), cols], Op::Gather { table, index: index.to_vec() }, needs)
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
        let out = self.compute1(
            rows * total,
            |o| {
                for ((&p, &w), &start) in parts.iter().zip(&widths).zip(&starts) {
                    tensor::copy_cols(self.h(p), w, 0, o, total, start, w, false);
                }
            },
            |g, o| {
                for ((&p, &w), &start) in parts.iter().zip(&widths).zip(&starts) {
                    cuda::tensor::copy_cols(g, self.d(p), w, 0, o, total, start, w, false)?;
                }
                Ok(())
            },
        );
        let needs = self.needs(parts);
        let mut shape = self.shape(parts[0]).to_vec();
        *shape.last_mut().unwrap() = total;
        self.push(out, shape, Op::Concat { parts: parts.iter().copied().zip(widths).collect() }, needs)
    }
    /// Columns `start..start + width` of the last dimension (the inverse of `concat`).
    pub fn slice_cols(&mut self, x: Var, start: usize, width: usize) -> Var {
        let cols = cols_of(self.shape(x));
        assert!(start + width <= cols, "slice_cols: {start}+{width} > {cols}");
        let out = self.compute1(
            self.numel(x) / cols * width,
            |o| tensor::copy_cols(self.h(x), cols, start, o, width, 0, width, false),
            |g, o| cuda::tensor::copy_cols(g, self.d(x), cols, start, o, width, 0, width, false),
        );
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
        assert_eq!(numel(shape), self.numel(x), "reshape {:?} -> {shape:?}", self.shape(x));
        let value = self.nodes[x.0].value.clone();
        let needs = self.needs(&[x]);
        self.record(Node { value, shape: shape.to_vec(), op: Op::Reshape { x }, needs_grad: needs })
    }

    /// Per-set (half) energy distance, `[sets]`; see `cpu::energy`.
    pub fn energy(&mut self, pred: Var, obs: Var, shape: EnergyShape) -> Var {
        let out = self.compute1(
            shape.sets,
            |o| energy_forward(self.h(pred), self.h(obs), shape, o),
            |g, o| cuda::energy::energy_forward(g, self.d(pred), self.d(obs), shape, o),
        );
        let needs = self.needs(&[pred]);
        self.push(out, vec![shape.sets], Op::Energy { pred, obs, shape }, needs)
    }

    /// Standard Gumbel noise of `shape` drawn from the counter stream `key` where the tape runs
    /// (see `cpu::selection::gumbel_noise`): data, no gradient.
    pub fn gumbel_noise(&mut self, shape: &[usize], key: u64) -> Var {
        let out = self.compute1(numel(shape), |o| gumbel_noise(key, o), |g, o| cuda::selection::gumbel_noise(g, key, o));
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
            |[s, h]| gumbel_st_forward(self.h(logits), self.h(noise), tau, classes, s, h),
            |g, [s, h]| cuda::selection::gumbel_st_forward(g, self.d(logits), self.d(noise), tau, classes, s, h),
        );
        let needs = self.needs(&[logits]);
        self.push(hard, self.shape(logits).to_vec(), Op::GumbelSt { logits, soft, tau }, needs)
    }

    /// Rotary position encoding of `x: [sets * cells, heads * head_dim]` (see `cpu::attention::Rope`).
    pub fn rope(&mut self, x: Var, rope: Rope) -> Var {
        let out = self.compute1(self.numel(x), |o| rope.forward(self.h(x), o), |g, o| cuda::attention::rope_forward(g, rope, self.d(x), o));
        let needs = self.needs(&[x]);
        self.push(out, self.shape(x).to_vec(), Op::Rope { x, rope }, needs)
    }

    /// Every row of `x[rows, cols]` times its weight `w[rows]` (any shape with `rows` elements).
    pub fn scale_rows(&mut self, x: Var, w: Var) -> Var {
        let cols = cols_of(self.shape(x));
        assert_eq!(self.numel(x), self.numel(w) * cols, "scale_rows: one weight per row of {:?}", self.shape(x));
        let out = self.compute1(
            self.numel(x),
            |o| tensor::scale_rows(self.h(x), self.h(w), o),
            |g, o| cuda::tensor::scale_rows(g, self.d(x), self.d(w), o),
        );
        let needs = self.needs(&[x, w]);
        self.push(out, self.shape(x).to_vec(), Op::ScaleRows { x, w }, needs)
    }

    /// Every column of `x[rows, cols]` times its factor `v[cols]`.
    pub fn scale_cols(&mut self, x: Var, v: Var) -> Var {
        assert_eq!(self.numel(v), cols_of(self.shape(x)), "scale_cols: one factor per column of {:?}", self.shape(x));
        let out = self.compute1(
            self.numel(x),
            |o| tensor::scale_cols(self.h(x), self.h(v), o),
            |g, o| cuda::tensor::scale_cols(g, self.d(x), self.d(v), o),
        );
        let needs = self.needs(&[x, v]);
        self.push(out, self.shape(x).to_vec(), Op::ScaleCols { x, v }, needs)
    }

    /// `[triplets, 2]`: (mean, rstd) of every triplet's LayerNorm over `width` columns, from the
    /// parts' row sums and sums of squares (each `[part rows]` or `[part rows, 1]`); see
    /// `cpu::selection::triplet_stats_forward`.
    pub fn triplet_stats(&mut self, sums: [Var; 3], squares: [Var; 3], layout: TripletLayout, width: usize, eps: f64) -> Var {
        let out = self.compute1(
            2 * layout.triplets(),
            |o| triplet_stats_forward(sums.map(|v| self.h(v)), squares.map(|v| self.h(v)), layout, width, eps, o),
            |g, o| cuda::selection::triplet_stats_forward(g, sums.map(|v| self.d(v)), squares.map(|v| self.d(v)), layout, width, eps, o),
        );
        let needs = self.needs(&sums) || self.needs(&squares);
        self.push(out, vec![layout.triplets(), 2], Op::TripletStats { sums, squares, layout, width }, needs)
    }

    /// `[triplets, h]`: `LayerNorm(triplet) W^T + b` from the parts' projections `[part rows, h]`,
    /// the triplet statistics, `v = W gamma` and `c = W beta + b` (`[h]` each); see
    /// `cpu::selection::triplet_assemble_forward`.
    pub fn triplet_assemble(&mut self, parts: [Var; 3], stats: Var, v: Var, c: Var, layout: TripletLayout) -> Var {
        let h = self.numel(v);
        let out = self.compute1(
            layout.triplets() * h,
            |o| triplet_assemble_forward(parts.map(|p| self.h(p)), self.h(stats), self.h(v), self.h(c), layout, o),
            |g, o| cuda::selection::triplet_assemble_forward(g, parts.map(|p| self.d(p)), self.d(stats), self.d(v), self.d(c), layout, o),
        );
        let needs = self.needs(&parts) || self.needs(&[stats, v, c]);
        self.push(out, vec![layout.triplets(), h], Op::TripletAssemble { parts, stats, v, c, layout }, needs)
    }

    /// `[rows, cols] -> [rows / group, cols]`: the sum of every `group` consecutive rows.
    pub fn sum_groups(&mut self, x: Var, group: usize) -> Var {
        let cols = cols_of(self.shape(x));
        let rows = self.numel(x) / cols;
        assert!(group > 0 && rows.is_multiple_of(group), "sum_groups: {rows} rows in groups of {group}");
        let out = self.compute1(
            rows / group * cols,
            |o| tensor::sum_groups_forward(self.h(x), cols, group, o),
            |g, o| cuda::tensor::sum_groups_forward(g, self.d(x), cols, group, o),
        );
        let needs = self.needs(&[x]);
        self.push(out, vec![rows / group, cols], Op::SumGroups { x, group }, needs)
    }

    /// `x / max(std(x), floor)` with the unbiased standard deviation over all elements (PyTorch's
    /// `x / x.std().clamp(min=floor)`, differentiated through the std as PyTorch does).
    pub fn scale_by_std(&mut self, x: Var, floor: f64) -> Var {
        let n = self.numel(x);
        assert!(n > 1, "scale_by_std: needs at least two elements");
        let [out, stats] = self.compute(
            [n, 3],
            |[o, s]| tensor::std_scale_forward(self.h(x), floor, o, s),
            |g, [o, s]| cuda::tensor::std_scale_forward(g, self.d(x), floor, o, s),
        );
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
        let mut grads: Vec<Option<Memory<T>>> = (0..self.nodes.len()).map(|_| None).collect();
        grads[root.0] = Some(self.place(vec![T::one(); self.numel(root)]));
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
                if let Some(g) = &self.gpu {
                    let _ = g.synchronize();
                }
                t.push((node.op.name(), start.elapsed().as_secs_f64()));
            }
        }
        Gradients { grads }
    }

    /// Accumulates a contribution into `v`'s gradient: the first one becomes the gradient (moved
    /// into place, no copy), later ones are added.
    fn add_grad(&self, grads: &mut [Option<Memory<T>>], v: Var, contrib: Memory<T>) {
        if !self.nodes[v.0].needs_grad {
            return;
        }
        match (&mut grads[v.0], contrib) {
            (Some(Memory::Host(slot)), Memory::Host(c)) => tensor::accumulate(&c, Arc::make_mut(slot).as_mut_slice()),
            (Some(Memory::Gpu(slot)), Memory::Gpu(c)) => {
                if let Some(g) = self.gpu.as_deref().filter(|_| self.fault.borrow().is_none()) {
                    let slot = Arc::get_mut(slot).expect("a GPU gradient belongs to one node");
                    if let Err(e) = cuda::tensor::accumulate(g, &c, slot) {
                        self.fail(e);
                    }
                }
            }
            (Some(_), _) => {} // a failed GPU op's Missing: the fault is recorded
            (empty, c) => *empty = Some(c),
        }
    }

    fn host_of<'a>(&'a self, o: Operand<'a, T>) -> &'a [T] {
        match o {
            Operand::Grad(g) => g.host(),
            Operand::Of(v) => self.h(v),
        }
    }
    fn dev_of<'a>(&'a self, o: Operand<'a, T>) -> &'a Buffer<f32> {
        match o {
            Operand::Grad(g) => g.dev(),
            Operand::Of(v) => self.d(v),
        }
    }
    /// `op(x)[m, k] op(y)[k, n]` on the tape's device (the CPU GEMM, or cuBLAS).
    fn product(&self, x: Operand<T>, y: Operand<T>, [m, k, n]: [usize; 3], trans_x: bool, trans_y: bool) -> Memory<T> {
        match &self.gpu {
            None => Memory::Host(Arc::new(matmul_new(self.host_of(x), self.host_of(y), m, k, n, trans_x, trans_y))),
            Some(_) => self.compute1(
                m * n,
                |_| {},
                |g, o| cuda::gemm::matmul(g, self.dev_of(x), self.dev_of(y), o, m, k, n, trans_x, trans_y, false),
            ),
        }
    }

    /// The same gradient for a second input: shared on the host (copied when first written to), a
    /// copy on the GPU (whose gradients are updated in place through `Arc::get_mut`).
    fn duplicate(&self, g: &Memory<T>) -> Memory<T> {
        match g {
            Memory::Gpu(b) => self.accumulate1(b.len(), |_| {}, |gpu, o| cuda::tensor::accumulate(gpu, b, o)),
            shared => shared.clone(),
        }
    }

    fn backward_node(&self, node: &Node<T>, grad: Memory<T>, grads: &mut [Option<Memory<T>>]) {
        let g = &grad;
        let n = |v: Var| self.numel(v);
        let needs = |v: Var| self.nodes[v.0].needs_grad;
        // Reshape, add, bias, scale, mul and row scaling hand the incoming buffer itself on (scaled
        // in place where needed, on the host): no tensor-sized allocation on the largest activations.
        match &node.op {
            Op::Leaf | Op::Param(_) => {}
            &Op::Reshape { x } => self.add_grad(grads, x, grad),
            &Op::Add { a, b } => {
                if needs(a) {
                    self.add_grad(grads, a, self.duplicate(g));
                }
                self.add_grad(grads, b, grad);
            }
            &Op::AddBias { x, bias } => {
                let db = self.compute1(
                    n(bias),
                    |o| tensor::column_dots(g.host(), None, o),
                    |gpu, o| cuda::tensor::column_dots(gpu, g.dev(), None, o),
                );
                self.add_grad(grads, bias, db);
                self.add_grad(grads, x, grad);
            }
            &Op::Scale { x, factor } => {
                let dx = match grad {
                    Memory::Host(mut v) => {
                        let f = T::f(factor);
                        Arc::make_mut(&mut v).iter_mut().for_each(|g| *g = *g * f);
                        Memory::Host(v)
                    }
                    dev => self.compute1(n(x), |_| {}, |gpu, o| cuda::tensor::scale(gpu, dev.dev(), factor as f32, o)),
                };
                self.add_grad(grads, x, dx);
            }
            &Op::Mul { a, b } => {
                if needs(a) {
                    let da = self.compute1(
                        n(a),
                        |o| tensor::mul(g.host(), self.h(b), o),
                        |gpu, o| cuda::tensor::mul(gpu, g.dev(), self.d(b), o),
                    );
                    self.add_grad(grads, a, da);
                }
                let db = match grad {
                    Memory::Host(mut v) => {
                        Arc::make_mut(&mut v).iter_mut().zip(self.h(a)).for_each(|(g, &a)| *g = *g * a);
                        Memory::Host(v)
                    }
                    dev => self.compute1(n(b), |_| {}, |gpu, o| cuda::tensor::mul(gpu, dev.dev(), self.d(a), o)),
                };
                self.add_grad(grads, b, db);
            }
            &Op::ScaleRows { x, w } => {
                let dw = self.compute1(
                    n(w),
                    |o| tensor::row_dots(g.host(), self.h(x), o),
                    |gpu, o| cuda::tensor::row_dots(gpu, g.dev(), self.d(x), o),
                );
                self.add_grad(grads, w, dw);
                let dx = match grad {
                    Memory::Host(mut v) => {
                        let cols = cols_of(&node.shape);
                        Arc::make_mut(&mut v).chunks_mut(cols).zip(self.h(w)).for_each(|(r, &w)| r.iter_mut().for_each(|g| *g = *g * w));
                        Memory::Host(v)
                    }
                    dev => self.compute1(n(x), |_| {}, |gpu, o| cuda::tensor::scale_rows(gpu, dev.dev(), self.d(w), o)),
                };
                self.add_grad(grads, x, dx);
            }
            &Op::MatMul { a, b, trans_a, trans_b, m, k, n: cols } => {
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
            &Op::Sum { x } => {
                let dx =
                    self.accumulate1(n(x), |o| tensor::sum_backward(g.host(), o), |gpu, o| cuda::tensor::sum_backward(gpu, g.dev(), o));
                self.add_grad(grads, x, dx);
            }
            &Op::Unary { x, kind } => {
                use cuda::elementwise as cw;
                let dx = self.accumulate1(
                    n(x),
                    |o| match kind {
                        Unary::Silu => ew::silu_backward(self.h(x), g.host(), o),
                        Unary::Gelu => ew::gelu_backward(self.h(x), g.host(), o),
                        Unary::Relu => ew::relu_backward(self.h(x), g.host(), o),
                    },
                    |gpu, o| match kind {
                        Unary::Silu => cw::silu_backward(gpu, self.d(x), g.dev(), o),
                        Unary::Gelu => cw::gelu_backward(gpu, self.d(x), g.dev(), o),
                        Unary::Relu => cw::relu_backward(gpu, self.d(x), g.dev(), o),
                    },
                );
                self.add_grad(grads, x, dx);
            }
            &Op::SwiGlu { gate, up } => {
                let [dgate, dup] = self.accumulate(
                    [n(gate), n(up)],
                    |[dg, du]| ew::swiglu_backward(self.h(gate), self.h(up), g.host(), dg, du),
                    |gpu, [dg, du]| cuda::elementwise::swiglu_backward(gpu, self.d(gate), self.d(up), g.dev(), dg, du),
                );
                self.add_grad(grads, gate, dgate);
                self.add_grad(grads, up, dup);
            }
            &Op::Dropout { x, mask } => {
                // linear and diagonal: the backward pass is the same masking of the gradient
                let dx =
                    self.compute1(n(x), |o| ew::dropout(g.host(), o, &mask), |gpu, o| cuda::elementwise::dropout(gpu, g.dev(), &mask, o));
                self.add_grad(grads, x, dx);
            }
            &Op::Softmax { x } => {
                let cols = cols_of(&node.shape);
                let dx = self.accumulate1(
                    n(x),
                    |o| ew::softmax_backward(node.value.host(), g.host(), o, cols),
                    |gpu, o| cuda::elementwise::softmax_backward(gpu, node.value.dev(), g.dev(), o, cols),
                );
                self.add_grad(grads, x, dx);
            }
            Op::RmsNorm { x, w, rstd } => {
                let (x, w) = (*x, *w);
                let [dx, dw] = self.accumulate(
                    [n(x), n(w)],
                    |[dx, dw]| norm::rmsnorm_backward(self.h(x), self.h(w), rstd.host(), g.host(), dx, dw),
                    |gpu, [dx, dw]| cuda::norm::rmsnorm_backward(gpu, self.d(x), self.d(w), rstd.dev(), g.dev(), dx, dw),
                );
                self.add_grad(grads, x, dx);
                self.add_grad(grads, w, dw);
            }
            Op::LayerNorm { x, w, b, mean, rstd } => {
                let (x, w, b) = (*x, *w, *b);
                let [dx, dw, db] = self.accumulate(
                    [n(x), n(w), n(b)],
                    |[dx, dw, db]| norm::layernorm_backward(self.h(x), self.h(w), mean.host(), rstd.host(), g.host(), dx, dw, db),
                    |gpu, [dx, dw, db]| {
                        cuda::norm::layernorm_backward(gpu, self.d(x), self.d(w), mean.dev(), rstd.dev(), g.dev(), dx, dw, db)
                    },
                );
                self.add_grad(grads, x, dx);
                self.add_grad(grads, w, dw);
                self.add_grad(grads, b, db);
            }
            Op::Attention { q, k, v, shape, lse } => {
                let (q, k, v, shape) = (*q, *k, *v, *shape);
                let [dq, dk, dv] = self.accumulate(
                    [n(q), n(k), n(v)],
                    |[dq, dk, dv]| {
                        attention_backward(self.h(q), self.h(k), self.h(v), node.value.host(), lse.host(), g.host(), shape, dq, dk, dv)
                    },
                    |gpu, [dq, dk, dv]| {
                        cuda::attention::attention_backward(
                            gpu,
                            self.d(q),
                            self.d(k),
                            self.d(v),
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
            Op::Gather { table, index } => {
                let (table, cols) = (*table, cols_of(&node.shape));
                let dt = self.accumulate1(
                    n(table),
                    |o| tensor::scatter_add_rows(g.host(), cols, index, o),
                    |gpu, o| cuda::tensor::scatter_add_rows(gpu, g.dev(), cols, &gpu.upload(&index_i32(index))?, o),
                );
                self.add_grad(grads, table, dt);
            }
            Op::Concat { parts } => {
                let total = cols_of(&node.shape);
                let mut start = 0;
                for &(p, w) in parts {
                    let dp = self.compute1(
                        n(p),
                        |o| tensor::copy_cols(g.host(), total, start, o, w, 0, w, false),
                        |gpu, o| cuda::tensor::copy_cols(gpu, g.dev(), total, start, o, w, 0, w, false),
                    );
                    self.add_grad(grads, p, dp);
                    start += w;
                }
            }
            &Op::SliceCols { x, start, width } => {
                let cols = cols_of(self.shape(x));
                let dx = self.accumulate1(
                    n(x),
                    |o| tensor::copy_cols(g.host(), width, 0, o, cols, start, width, false),
                    |gpu, o| cuda::tensor::copy_cols(gpu, g.dev(), width, 0, o, cols, start, width, false),
                );
                self.add_grad(grads, x, dx);
            }
            &Op::Energy { pred, obs, shape } => {
                let dp = self.accumulate1(
                    n(pred),
                    |o| energy_backward(self.h(pred), self.h(obs), shape, g.host(), o),
                    |gpu, o| cuda::energy::energy_backward(gpu, self.d(pred), self.d(obs), shape, g.dev(), o),
                );
                self.add_grad(grads, pred, dp);
            }
            Op::GumbelSt { logits, soft, tau } => {
                let (logits, tau, classes) = (*logits, *tau, cols_of(&node.shape));
                let dl = self.accumulate1(
                    n(logits),
                    |o| gumbel_st_backward(soft.host(), g.host(), tau, classes, o),
                    |gpu, o| cuda::selection::gumbel_st_backward(gpu, soft.dev(), g.dev(), tau, classes, o),
                );
                self.add_grad(grads, logits, dl);
            }
            &Op::Rope { x, rope } => {
                let dx =
                    self.accumulate1(n(x), |o| rope.backward(g.host(), o), |gpu, o| cuda::attention::rope_backward(gpu, rope, g.dev(), o));
                self.add_grad(grads, x, dx);
            }
            &Op::ScaleCols { x, v } => {
                let [dx, dv] = self.compute(
                    [n(x), n(v)],
                    |[dx, dv]| {
                        tensor::scale_cols(g.host(), self.h(v), dx);
                        tensor::column_dots(g.host(), Some(self.h(x)), dv);
                    },
                    |gpu, [dx, dv]| {
                        cuda::tensor::scale_cols(gpu, g.dev(), self.d(v), dx)?;
                        cuda::tensor::column_dots(gpu, g.dev(), Some(self.d(x)), dv)
                    },
                );
                self.add_grad(grads, x, dx);
                self.add_grad(grads, v, dv);
            }
            &Op::TripletStats { sums, squares, layout, width } => {
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
            &Op::TripletAssemble { parts, stats, v, c, layout } => {
                let [p0, p1, p2, dstats, dv, dc] = self.accumulate(
                    [n(parts[0]), n(parts[1]), n(parts[2]), n(stats), n(v), n(c)],
                    |[p0, p1, p2, ds, dv, dc]| {
                        triplet_assemble_backward(
                            parts.map(|p| self.h(p)),
                            self.h(stats),
                            self.h(v),
                            g.host(),
                            layout,
                            [p0, p1, p2],
                            ds,
                            dv,
                            dc,
                        )
                    },
                    |gpu, [p0, p1, p2, ds, dv, dc]| {
                        let parts = parts.map(|p| self.d(p));
                        cuda::selection::triplet_assemble_backward(
                            gpu,
                            parts,
                            self.d(stats),
                            self.d(v),
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
            &Op::SumGroups { x, group } => {
                let cols = cols_of(&node.shape);
                let dx = self.accumulate1(
                    n(x),
                    |o| tensor::sum_groups_backward(g.host(), cols, group, o),
                    |gpu, o| cuda::tensor::sum_groups_backward(gpu, g.dev(), cols, group, o),
                );
                self.add_grad(grads, x, dx);
            }
            Op::StdScale { x, stats } => {
                let x = *x;
                let dx = self.accumulate1(
                    n(x),
                    |o| tensor::std_scale_backward(self.h(x), stats.host(), g.host(), o),
                    |gpu, o| cuda::tensor::std_scale_backward(gpu, self.d(x), stats.dev(), g.dev(), o),
                );
                self.add_grad(grads, x, dx);
            }
        }
    }
}

/// Each parameter's gradient on a GPU tape, by `ParamId`: the sum over the nodes that use it (None
/// for parameters that got none).
pub type DeviceGradients = Vec<Option<Arc<Buffer<f32>>>>;

/// The gradients one `backward` produced, for inputs and parameters.
pub struct Gradients<T> {
    grads: Vec<Option<Memory<T>>>,
}

impl<T: Real> Gradients<T> {
    /// A gradient of a host tape (GPU tapes: `fetch`).
    pub fn get(&self, v: Var) -> Option<&[T]> {
        self.grads[v.0].as_ref().map(|g| g.host())
    }
    /// A gradient copied to the host, on either kind of tape.
    pub fn fetch(&self, tape: &Tape<T>, v: Var) -> Result<Option<Vec<T>>> {
        tape.check()?;
        self.grads[v.0].as_ref().map(|g| g.to_host(tape.gpu.as_deref())).transpose()
    }
    /// Adds (`+=`) every parameter node's gradient into `params` (a parameter used by several nodes
    /// receives all contributions). A GPU tape's gradients are copied to the host first; training
    /// on the GPU keeps them there instead (`Gradients::on_gpu`).
    pub fn accumulate_into(&self, tape: &Tape<T>, params: &mut Params<T>) -> Result<()> {
        for (i, (node, g)) in tape.nodes.iter().zip(&self.grads).enumerate() {
            let (Op::Param(id), Some(g)) = (&node.op, g) else { continue };
            let fetched;
            let g: &[T] = match g {
                Memory::Host(g) => g,
                _ => {
                    fetched = self.fetch(tape, Var(i))?.unwrap_or_default();
                    &fetched
                }
            };
            let p = &mut params.entries[id.0];
            p.grad.iter_mut().zip(g).for_each(|(p, &g)| *p = *p + g);
        }
        Ok(())
    }
}

impl Gradients<f32> {
    /// Every parameter's gradient, left on the GPU (`params` parameters in all); the tape's fault,
    /// if it has one. A parameter used once keeps its node's gradient buffer; one used more often
    /// gets the sum in a new one.
    pub fn on_gpu(self, tape: &Tape<f32>, params: usize) -> Result<DeviceGradients> {
        tape.check()?;
        let gpu = tape.gpu.as_deref().ok_or_else(|| Error::Device("parameter gradients on the GPU of a host tape".into()))?;
        let mut out: DeviceGradients = vec![None; params];
        for (node, g) in tape.nodes.iter().zip(self.grads) {
            let (Op::Param(id), Some(g)) = (&node.op, g) else { continue };
            let Memory::Gpu(g) = g else { return Err(Error::Device("a GPU tape's gradient is not on the GPU".into())) };
            out[id.0] = Some(match out[id.0].take() {
                None => g,
                Some(sum) => {
                    let mut total = gpu.zeros(g.len())?;
                    cuda::tensor::add(gpu, &sum, &g, &mut total)?;
                    Arc::new(total)
                }
            });
        }
        Ok(out)
    }
}
