//! A minimal reverse-mode autodiff tape over the kernel families: the CPU engine's (`crate::cpu`),
//! or, on a tape made by `Tape::on_gpu`, their CUDA twins (`crate::cuda`, products through cuBLAS).
//!
//! A model's forward pass records one `Node` per operation (its value, shape and what its backward
//! pass needs); `backward` walks the nodes in reverse, calling each family's backward kernel. Every
//! op has both paths side by side, with the same kernels in the same order, so a GPU tape computes
//! what a host tape does (the whole-step parity tests compare them).
//! Every tensor is a flat row-major buffer; operations that act "per row" use the last dimension as
//! the row length. See `params.rs` for the gradient-accumulation contract.

mod activation;
mod arithmetic;
mod attention;
mod energy;
mod layout;
mod linear;
mod norm;
pub mod params;
mod selection;

use crate::cpu::{gemm::matmul_new, tensor, zeros};
/// A table (the dataset's expression, the GenePT vectors) resident on a GPU tape's device, whose
/// rows `Tape::table_rows` gathers there: the model layer names it through the tape, the seam to
/// the engines, not through `cuda`.
pub use crate::cuda::tensor::RowTable;
use crate::cuda::{self, Buffer, Gpu};
use crate::scalar::Scalar;
use crate::{Error, Result};
pub use params::{Param, ParamId, Params};
use std::cell::RefCell;
use std::sync::Arc;

/// A handle to a node of the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

/// What each node is and what its backward pass needs (inputs by handle, saved statistics inline).
enum Op<T> {
    /// Data, or an input whose gradient a test wants (`requires_grad`).
    Leaf,
    Param(ParamId),
    Linear(linear::LinearOp),
    Arithmetic(arithmetic::ArithmeticOp),
    Activation(activation::ActivationOp),
    Norm(norm::NormOp<T>),
    Attention(attention::AttentionOp<T>),
    Selection(selection::SelectionOp<T>),
    Energy(energy::EnergyOp),
    Layout(layout::LayoutOp),
}

impl<T> Op<T> {
    /// The op's family, for timing breakdowns.
    fn name(&self) -> &'static str {
        match self {
            Op::Leaf => "data",
            Op::Param(_) => "param",
            Op::Linear(op) => op.name(),
            Op::Arithmetic(op) => op.name(),
            Op::Activation(op) => op.name(),
            Op::Norm(op) => op.name(),
            Op::Attention(op) => op.name(),
            Op::Selection(op) => op.name(),
            Op::Energy(op) => op.name(),
            Op::Layout(op) => op.name(),
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

impl<T: Scalar> Memory<T> {
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
fn f32_of<T: Scalar>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32().unwrap_or(f32::NAN)).collect()
}
fn index_i32(index: &[usize]) -> Vec<i32> {
    index.iter().map(|&i| i as i32).collect()
}

impl<T: Scalar> Default for Tape<T> {
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

impl<T: Scalar> Tape<T> {
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
    /// `compute` of one tensor.
    fn compute_one(&self, n: usize, cpu: impl FnOnce(&mut [T]), gpu: impl FnOnce(&Gpu, &mut Buffer<f32>) -> Result<()>) -> Memory<T> {
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
    /// `accumulate` of one tensor.
    fn accumulate_one(&self, n: usize, cpu: impl FnOnce(&mut [T]), gpu: impl FnOnce(&Gpu, &mut Buffer<f32>) -> Result<()>) -> Memory<T> {
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

    fn push(&mut self, value: Memory<T>, shape: Vec<usize>, op: impl Into<Op<T>>, needs_grad: bool) -> Var {
        self.record(Node { value, shape, op: op.into(), needs_grad })
    }
    fn needs(&self, vars: &[Var]) -> bool {
        vars.iter().any(|v| self.nodes[v.0].needs_grad)
    }
    fn numel(&self, v: Var) -> usize {
        numel(&self.nodes[v.0].shape)
    }
    /// The value of `v` on a host tape.
    fn host_slice(&self, v: Var) -> &[T] {
        self.nodes[v.0].value.host()
    }
    /// The value of `v` on a GPU tape.
    fn device_buffer(&self, v: Var) -> &Buffer<f32> {
        self.nodes[v.0].value.dev()
    }

    /// A value on a host tape (GPU tapes: `fetch`).
    pub fn value(&self, v: Var) -> &[T] {
        self.host_slice(v)
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
        self.host_slice(v)[0]
    }

    /// Data that needs no gradient.
    pub fn constant(&mut self, shape: &[usize], value: Vec<T>) -> Var {
        assert_eq!(value.len(), numel(shape), "constant: {} values for shape {shape:?}", value.len());
        let value = self.place(value);
        self.push(value, shape.to_vec(), Op::Leaf, false)
    }
    /// Data gathered on the GPU: rows `rows` of a table resident there (the dataset's expression),
    /// `[rows.len(), cols]`. Only a GPU tape can read such a table.
    pub fn table_rows(&mut self, table: &RowTable, rows: &[u32]) -> Var {
        assert!(self.gpu.is_some(), "{WRONG_SIDE}");
        let n = rows.len() * table.cols();
        let out = self.compute_one(
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
            Operand::Of(v) => self.host_slice(v),
        }
    }
    fn dev_of<'a>(&'a self, o: Operand<'a, T>) -> &'a Buffer<f32> {
        match o {
            Operand::Grad(g) => g.dev(),
            Operand::Of(v) => self.device_buffer(v),
        }
    }
    /// `op(x)[m, k] op(y)[k, n]` on the tape's device (the CPU GEMM, or cuBLAS).
    fn product(&self, x: Operand<T>, y: Operand<T>, [m, k, n]: [usize; 3], trans_x: bool, trans_y: bool) -> Memory<T> {
        match &self.gpu {
            None => Memory::Host(Arc::new(matmul_new(self.host_of(x), self.host_of(y), m, k, n, trans_x, trans_y))),
            Some(_) => self.compute_one(
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
            Memory::Gpu(b) => self.accumulate_one(b.len(), |_| {}, |gpu, o| cuda::tensor::accumulate(gpu, b, o)),
            shared => shared.clone(),
        }
    }

    fn backward_node(&self, node: &Node<T>, grad: Memory<T>, grads: &mut [Option<Memory<T>>]) {
        match &node.op {
            Op::Leaf | Op::Param(_) => {}
            Op::Linear(op) => self.linear_backward(op, grad, grads),
            Op::Arithmetic(op) => self.arithmetic_backward(op, node, grad, grads),
            Op::Activation(op) => self.activation_backward(op, node, grad, grads),
            Op::Norm(op) => self.norm_backward(op, grad, grads),
            Op::Attention(op) => self.attention_backward(op, node, grad, grads),
            Op::Selection(op) => self.selection_backward(op, node, grad, grads),
            Op::Energy(op) => self.energy_backward(op, grad, grads),
            Op::Layout(op) => self.layout_backward(op, node, grad, grads),
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

impl<T: Scalar> Gradients<T> {
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
