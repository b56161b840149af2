//! Launchers for `kernels/norm.cu`, the twin of `src/cpu/norm.rs`. `x, y, dy, dx: [rows, cols]`,
//! `w, b, dw, db: [cols]`, `mean, rstd: [rows]`; backward accumulates into `dx, dw, db`.

use super::{check_len, check_rows, kernels, Args, Buffer, Gpu, Launch};
use crate::Result;

/// Threads per row in the row kernels, and per block in the column (weight-gradient) kernels.
const ROW_THREADS: u32 = 128;

fn shape(op: &'static str, x: &Buffer<f32>, w: &Buffer<f32>) -> Result<(usize, usize)> {
    Ok((check_rows(op, x.len(), w.len())?, w.len()))
}

fn per_row(rows: usize) -> Result<Launch> {
    Launch::new([rows, 1, 1], ROW_THREADS, ROW_THREADS as usize / 32)
}

fn per_column(cols: usize) -> Result<Launch> {
    Launch::new([cols.div_ceil(ROW_THREADS as usize), 1, 1], ROW_THREADS, 0)
}

pub fn rmsnorm_forward(gpu: &Gpu, x: &Buffer<f32>, w: &Buffer<f32>, eps: f64, y: &mut Buffer<f32>, rstd: &mut Buffer<f32>) -> Result<()> {
    let (rows, cols) = shape("rmsnorm", x, w)?;
    check_len("rmsnorm", "y", y, rows * cols)?;
    check_len("rmsnorm", "rstd", rstd, rows)?;
    gpu.launch(
        &kernels::RMSNORM_FORWARD_F32,
        per_row(rows)?,
        Args::new().input(x).input(w).f32(eps as f32).int(cols).output(y).output(rstd),
    )
}

pub fn rmsnorm_backward(
    gpu: &Gpu,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    rstd: &Buffer<f32>,
    dy: &Buffer<f32>,
    dx: &mut Buffer<f32>,
    dw: &mut Buffer<f32>,
) -> Result<()> {
    let (rows, cols) = shape("rmsnorm backward", x, w)?;
    for (name, b) in [("dy", dy), ("dx", &*dx)] {
        check_len("rmsnorm backward", name, b, rows * cols)?;
    }
    check_len("rmsnorm backward", "rstd", rstd, rows)?;
    check_len("rmsnorm backward", "dw", dw, cols)?;
    gpu.launch(&kernels::RMSNORM_BACKWARD_F32, per_row(rows)?, Args::new().input(x).input(w).input(rstd).input(dy).int(cols).output(dx))?;
    gpu.launch(
        &kernels::RMSNORM_BACKWARD_WEIGHT_F32,
        per_column(cols)?,
        Args::new().input(x).input(rstd).input(dy).int(rows).int(cols).output(dw),
    )
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    gpu: &Gpu,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    b: &Buffer<f32>,
    eps: f64,
    y: &mut Buffer<f32>,
    mean: &mut Buffer<f32>,
    rstd: &mut Buffer<f32>,
) -> Result<()> {
    let (rows, cols) = shape("layernorm", x, w)?;
    check_len("layernorm", "b", b, cols)?;
    check_len("layernorm", "y", y, rows * cols)?;
    check_len("layernorm", "mean", mean, rows)?;
    check_len("layernorm", "rstd", rstd, rows)?;
    let args = Args::new().input(x).input(w).input(b).f32(eps as f32).int(cols).output(y).output(mean).output(rstd);
    gpu.launch(&kernels::LAYERNORM_FORWARD_F32, per_row(rows)?, args)
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    gpu: &Gpu,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    mean: &Buffer<f32>,
    rstd: &Buffer<f32>,
    dy: &Buffer<f32>,
    dx: &mut Buffer<f32>,
    dw: &mut Buffer<f32>,
    db: &mut Buffer<f32>,
) -> Result<()> {
    let (rows, cols) = shape("layernorm backward", x, w)?;
    for (name, b) in [("dy", dy), ("dx", &*dx)] {
        check_len("layernorm backward", name, b, rows * cols)?;
    }
    for (name, b) in [("mean", mean), ("rstd", rstd)] {
        check_len("layernorm backward", name, b, rows)?;
    }
    for (name, b) in [("dw", &*dw), ("db", &*db)] {
        check_len("layernorm backward", name, b, cols)?;
    }
    let args = Args::new().input(x).input(w).input(mean).input(rstd).input(dy).int(cols).output(dx);
    gpu.launch(&kernels::LAYERNORM_BACKWARD_F32, per_row(rows)?, args)?;
    let args = Args::new().input(x).input(mean).input(rstd).input(dy).int(rows).int(cols).output(dw).output(db);
    gpu.launch(&kernels::LAYERNORM_BACKWARD_WEIGHT_F32, per_column(cols)?, args)
}
