//! Launchers for `kernels/attention.cu`, the twin of `src/cpu/attention.rs`: flash-style attention
//! within each set, forward (saving the log-sum-exp) and backward (accumulating into dq, dk, dv).

use super::params::{AttentionParams, ATTENTION_ROWS_PER_BLOCK, ATTENTION_SLOTS, ATTENTION_TILE};
use super::{check_int, check_len, kernels, Args, Buffer, Gpu, Launch};
use crate::cpu::attention::{AttentionShape, Rope};
use crate::{Error, Result};

/// Rows (warps) per block, and the tile of the other side streamed through shared memory
/// (`kernels/params.h`).
const ROWS_PER_BLOCK: usize = ATTENTION_ROWS_PER_BLOCK as usize;
const TILE: usize = ATTENTION_TILE as usize;
/// Each lane of a row's warp holds at most `ATTENTION_SLOTS` slices of the row.
pub const MAX_HEAD_DIM: usize = 32 * ATTENTION_SLOTS as usize;

/// The kernels' shape parameter (the sizes fit an `int`: `check` has tested them).
fn params(shape: AttentionShape) -> AttentionParams {
    let AttentionShape { cells, keys, heads, head_dim, causal, .. } = shape;
    AttentionParams { cells: cells as i32, keys: keys as i32, heads: heads as i32, head_dim: head_dim as i32, causal: causal as i32 }
}

fn check(shape: AttentionShape, q: &Buffer<f32>, k: &Buffer<f32>, v: &Buffer<f32>) -> Result<()> {
    let AttentionShape { sets, cells, keys, heads, head_dim, causal } = shape;
    if head_dim == 0 || head_dim > MAX_HEAD_DIM {
        return Err(Error::Shape { op: "attention", why: format!("head_dim {head_dim}; the kernel takes 1 to {MAX_HEAD_DIM}") });
    }
    if causal && keys != cells {
        return Err(Error::Shape { op: "attention", why: "causal attention needs as many keys as queries".into() });
    }
    let width = heads * head_dim;
    check_int("attention", &[sets * cells.max(keys) * width])?;
    check_len("attention", "q", q, sets * cells * width)?;
    check_len("attention", "k", k, sets * keys * width)?;
    check_len("attention", "v", v, sets * keys * width)
}

fn grid(rows: usize, shape: AttentionShape, shared_floats: usize) -> Result<Launch> {
    Launch::new([rows.div_ceil(ROWS_PER_BLOCK), shape.heads, shape.sets], 32 * ROWS_PER_BLOCK as u32, shared_floats)
}

pub fn attention_forward(
    gpu: &Gpu,
    q: &Buffer<f32>,
    k: &Buffer<f32>,
    v: &Buffer<f32>,
    shape: AttentionShape,
    out: &mut Buffer<f32>,
    lse: &mut Buffer<f32>,
) -> Result<()> {
    check(shape, q, k, v)?;
    check_len("attention", "out", out, q.len())?;
    check_len("attention", "lse", lse, shape.sets * shape.heads * shape.cells)?;
    let launch = grid(shape.cells, shape, 2 * TILE * shape.head_dim)?;
    let args = Args::new().input(q).input(k).input(v).params(&params(shape)).output(out).output(lse);
    gpu.launch(&kernels::ATTENTION_FORWARD_F32, launch, args)
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    gpu: &Gpu,
    q: &Buffer<f32>,
    k: &Buffer<f32>,
    v: &Buffer<f32>,
    out: &Buffer<f32>,
    lse: &Buffer<f32>,
    dout: &Buffer<f32>,
    shape: AttentionShape,
    dq: &mut Buffer<f32>,
    dk: &mut Buffer<f32>,
    dv: &mut Buffer<f32>,
) -> Result<()> {
    check(shape, q, k, v)?;
    let stats = shape.sets * shape.heads * shape.cells;
    for (name, b) in [("out", out), ("dout", dout), ("dq", &*dq)] {
        check_len("attention backward", name, b, q.len())?;
    }
    for (name, b) in [("dk", &*dk), ("dv", &*dv)] {
        check_len("attention backward", name, b, k.len())?;
    }
    check_len("attention backward", "lse", lse, stats)?;
    let AttentionShape { cells, keys, head_dim, .. } = shape;
    let mut delta = gpu.zeros::<f32>(stats)?;
    let args = Args::new().input(q).input(k).input(v).input(out).input(lse).input(dout);
    let args = args.params(&params(shape)).output(dq).output(&mut delta);
    gpu.launch(&kernels::ATTENTION_BACKWARD_DQ_F32, grid(cells, shape, 2 * TILE * head_dim)?, args)?;
    let args = Args::new().input(q).input(k).input(v).input(lse).input(&delta).input(dout);
    let args = args.params(&params(shape)).output(dk).output(dv);
    gpu.launch(&kernels::ATTENTION_BACKWARD_DKDV_F32, grid(keys, shape, (2 * head_dim + 2) * TILE)?, args)
}

/// Checks a rope launch's buffers and uploads the sine/cosine table.
fn rope_table(gpu: &Gpu, rope: Rope, x: &Buffer<f32>, out: &Buffer<f32>) -> Result<Buffer<f32>> {
    let Rope { cells, heads, head_dim, .. } = rope;
    let row = heads * head_dim * cells;
    if head_dim % 2 != 0 || row == 0 || !x.len().is_multiple_of(row) {
        return Err(Error::Shape {
            op: "rope",
            why: format!("{} values in sets of {cells} rows of {heads} heads of {head_dim} (even)", x.len()),
        });
    }
    check_int("rope", &[x.len()])?;
    check_len("rope", "out", out, x.len())?;
    let sin_cos: Vec<f32> = rope.sin_cos_table().iter().map(|&v| v as f32).collect();
    gpu.upload(&sin_cos)
}

/// Rotary position encoding (`cpu::attention::rope_forward`): overwrites `y`.
pub fn rope_forward(gpu: &Gpu, rope: Rope, x: &Buffer<f32>, y: &mut Buffer<f32>) -> Result<()> {
    let sin_cos = rope_table(gpu, rope, x, y)?;
    let pairs = x.len() / 2;
    let args = Args::new().input(x).input(&sin_cos).int(rope.cells).int(rope.heads).int(rope.head_dim);
    gpu.launch(&kernels::ROPE_FORWARD_F32, Launch::elementwise(pairs), args.output(y).i64(pairs as i64))
}

/// Its backward, the inverse rotation: accumulates into `dx`.
pub fn rope_backward(gpu: &Gpu, rope: Rope, dy: &Buffer<f32>, dx: &mut Buffer<f32>) -> Result<()> {
    let sin_cos = rope_table(gpu, rope, dy, dx)?;
    let pairs = dy.len() / 2;
    let args = Args::new().input(dy).input(&sin_cos).int(rope.cells).int(rope.heads).int(rope.head_dim);
    gpu.launch(&kernels::ROPE_BACKWARD_F32, Launch::elementwise(pairs), args.output(dx).i64(pairs as i64))
}
