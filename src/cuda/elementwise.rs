//! Launchers for `kernels/elementwise.cu`, the twin of `src/cpu/elementwise.rs`: forward overwrites
//! `y`, backward accumulates `dx += dy * f'(x)` (SwiGLU: into both `dgate` and `dup`).

use super::{check_len, check_rows, kernels, Args, Buffer, Gpu, Kernel, Launch};
use crate::cpu::elementwise::DropoutMask;
use crate::Result;

fn forward(gpu: &Gpu, kernel: &'static Kernel, x: &Buffer<f32>, y: &mut Buffer<f32>) -> Result<()> {
    let n = x.len();
    check_len(kernel.symbol, "y", y, n)?;
    gpu.launch(kernel, Launch::elementwise(n), Args::new().input(x).output(y).i64(n as i64))
}

fn backward(gpu: &Gpu, kernel: &'static Kernel, x: &Buffer<f32>, dy: &Buffer<f32>, dx: &mut Buffer<f32>) -> Result<()> {
    let n = x.len();
    check_len(kernel.symbol, "dy", dy, n)?;
    check_len(kernel.symbol, "dx", dx, n)?;
    gpu.launch(kernel, Launch::elementwise(n), Args::new().input(x).input(dy).output(dx).i64(n as i64))
}

pub fn silu_forward(gpu: &Gpu, x: &Buffer<f32>, y: &mut Buffer<f32>) -> Result<()> {
    forward(gpu, &kernels::SILU_FORWARD_F32, x, y)
}
pub fn silu_backward(gpu: &Gpu, x: &Buffer<f32>, dy: &Buffer<f32>, dx: &mut Buffer<f32>) -> Result<()> {
    backward(gpu, &kernels::SILU_BACKWARD_F32, x, dy, dx)
}
pub fn gelu_forward(gpu: &Gpu, x: &Buffer<f32>, y: &mut Buffer<f32>) -> Result<()> {
    forward(gpu, &kernels::GELU_FORWARD_F32, x, y)
}
pub fn gelu_backward(gpu: &Gpu, x: &Buffer<f32>, dy: &Buffer<f32>, dx: &mut Buffer<f32>) -> Result<()> {
    backward(gpu, &kernels::GELU_BACKWARD_F32, x, dy, dx)
}
pub fn relu_forward(gpu: &Gpu, x: &Buffer<f32>, y: &mut Buffer<f32>) -> Result<()> {
    forward(gpu, &kernels::RELU_FORWARD_F32, x, y)
}
pub fn relu_backward(gpu: &Gpu, x: &Buffer<f32>, dy: &Buffer<f32>, dx: &mut Buffer<f32>) -> Result<()> {
    backward(gpu, &kernels::RELU_BACKWARD_F32, x, dy, dx)
}
pub fn swiglu_forward(gpu: &Gpu, gate: &Buffer<f32>, up: &Buffer<f32>, y: &mut Buffer<f32>) -> Result<()> {
    let (kernel, n) = (&kernels::SWIGLU_FORWARD_F32, gate.len());
    check_len(kernel.symbol, "up", up, n)?;
    check_len(kernel.symbol, "y", y, n)?;
    gpu.launch(kernel, Launch::elementwise(n), Args::new().input(gate).input(up).output(y).i64(n as i64))
}
pub fn swiglu_backward(
    gpu: &Gpu,
    gate: &Buffer<f32>,
    up: &Buffer<f32>,
    dy: &Buffer<f32>,
    dgate: &mut Buffer<f32>,
    dup: &mut Buffer<f32>,
) -> Result<()> {
    let (kernel, n) = (&kernels::SWIGLU_BACKWARD_F32, gate.len());
    for (name, b) in [("up", up), ("dy", dy), ("dgate", &*dgate), ("dup", &*dup)] {
        check_len(kernel.symbol, name, b, n)?;
    }
    let args = Args::new().input(gate).input(up).input(dy).output(dgate).output(dup).i64(n as i64);
    gpu.launch(kernel, Launch::elementwise(n), args)
}

/// `y = x * mask * scale` with the mask recomputed from `mask.key` (see `cpu::elementwise::DropoutMask`);
/// also the backward pass, applied to the incoming gradient.
pub fn dropout(gpu: &Gpu, x: &Buffer<f32>, mask: &DropoutMask, y: &mut Buffer<f32>) -> Result<()> {
    let (kernel, n) = (&kernels::DROPOUT_F32, x.len());
    check_len(kernel.symbol, "y", y, n)?;
    let args = Args::new().input(x).output(y).i64(n as i64).u64(mask.key).u32(mask.threshold).f32(mask.scale as f32);
    gpu.launch(kernel, Launch::elementwise(n), args)
}

/// `y[r, :] = softmax(x[r, :])` over rows of `cols`.
pub fn softmax_forward(gpu: &Gpu, x: &Buffer<f32>, y: &mut Buffer<f32>, cols: usize) -> Result<()> {
    let rows = check_rows("softmax", x.len(), cols)?;
    check_len("softmax", "y", y, x.len())?;
    gpu.launch(&kernels::SOFTMAX_FORWARD_F32, Launch::elementwise(rows), Args::new().input(x).int(cols).output(y).i64(rows as i64))
}
/// `dx += y * (dy - sum(dy * y))` per row.
pub fn softmax_backward(gpu: &Gpu, y: &Buffer<f32>, dy: &Buffer<f32>, dx: &mut Buffer<f32>, cols: usize) -> Result<()> {
    let rows = check_rows("softmax backward", y.len(), cols)?;
    check_len("softmax backward", "dy", dy, y.len())?;
    check_len("softmax backward", "dx", dx, y.len())?;
    gpu.launch(
        &kernels::SOFTMAX_BACKWARD_F32,
        Launch::elementwise(rows),
        Args::new().input(y).input(dy).int(cols).output(dx).i64(rows as i64),
    )
}
