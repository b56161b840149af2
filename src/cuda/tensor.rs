//! Launchers for `kernels/tensor.cu`, the twin of `src/cpu/tensor.rs`: the tape's elementwise
//! arithmetic, broadcasts, reductions, gathers, column copies, group sums and std scaling.
//! Forward operations overwrite `out`; `accumulate`, `scatter_add_rows` and `*_backward` add into it.

use super::{check_int, check_len, check_rows, kernels, Args, Buffer, Gpu, Kernel, Launch};
use crate::{Error, Result};

/// Threads of the one-block reductions (`sum`, `std_scale`).
const REDUCE_THREADS: u32 = 1024;
/// Threads per block of the per-column and per-row reductions.
const ROW_THREADS: u32 = 256;

fn one_block() -> Result<Launch> {
    Launch::new([1, 1, 1], REDUCE_THREADS, REDUCE_THREADS as usize / 32)
}

fn binary(gpu: &Gpu, kernel: &'static Kernel, a: &Buffer<f32>, b: &Buffer<f32>, out: &mut Buffer<f32>) -> Result<()> {
    let n = a.len();
    check_len(kernel.symbol, "b", b, n)?;
    check_len(kernel.symbol, "out", out, n)?;
    gpu.launch(kernel, Launch::elementwise(n), Args::new().input(a).input(b).output(out).i64(n as i64))
}

pub fn add(gpu: &Gpu, a: &Buffer<f32>, b: &Buffer<f32>, out: &mut Buffer<f32>) -> Result<()> {
    binary(gpu, &kernels::ADD_F32, a, b, out)
}
pub fn mul(gpu: &Gpu, a: &Buffer<f32>, b: &Buffer<f32>, out: &mut Buffer<f32>) -> Result<()> {
    binary(gpu, &kernels::MUL_F32, a, b, out)
}
pub fn scale(gpu: &Gpu, x: &Buffer<f32>, factor: f32, out: &mut Buffer<f32>) -> Result<()> {
    let n = x.len();
    check_len("scale", "out", out, n)?;
    gpu.launch(&kernels::SCALE_F32, Launch::elementwise(n), Args::new().input(x).f32(factor).output(out).i64(n as i64))
}
pub fn accumulate(gpu: &Gpu, src: &Buffer<f32>, dst: &mut Buffer<f32>) -> Result<()> {
    let n = src.len();
    check_len("accumulate", "dst", dst, n)?;
    gpu.launch(&kernels::ACCUMULATE_F32, Launch::elementwise(n), Args::new().input(src).output(dst).i64(n as i64))
}

/// `out[r, c] = x[r, c] (+ or *) v[c or r]`: `cols` is the broadcast vector's length (per column)
/// or `x`'s length over it (per row).
fn broadcast(gpu: &Gpu, kernel: &'static Kernel, x: &Buffer<f32>, v: &Buffer<f32>, cols: usize, out: &mut Buffer<f32>) -> Result<()> {
    let n = x.len();
    check_rows(kernel.symbol, n, cols)?;
    check_len(kernel.symbol, "out", out, n)?;
    gpu.launch(kernel, Launch::elementwise(n), Args::new().input(x).input(v).int(cols).output(out).i64(n as i64))
}
pub fn add_bias(gpu: &Gpu, x: &Buffer<f32>, bias: &Buffer<f32>, out: &mut Buffer<f32>) -> Result<()> {
    broadcast(gpu, &kernels::ADD_BIAS_F32, x, bias, bias.len(), out)
}
pub fn scale_rows(gpu: &Gpu, x: &Buffer<f32>, w: &Buffer<f32>, out: &mut Buffer<f32>) -> Result<()> {
    let rows = w.len();
    if rows == 0 || !x.len().is_multiple_of(rows) {
        return Err(Error::Shape { op: "scale_rows", why: format!("{} values, {rows} rows", x.len()) });
    }
    broadcast(gpu, &kernels::SCALE_ROWS_F32, x, w, x.len() / rows, out)
}
pub fn scale_cols(gpu: &Gpu, x: &Buffer<f32>, v: &Buffer<f32>, out: &mut Buffer<f32>) -> Result<()> {
    broadcast(gpu, &kernels::SCALE_COLS_F32, x, v, v.len(), out)
}

/// `out[c] = sum_r a[r, c] * b[r, c]`, or plain column sums without `b`.
pub fn column_dots(gpu: &Gpu, a: &Buffer<f32>, b: Option<&Buffer<f32>>, out: &mut Buffer<f32>) -> Result<()> {
    let cols = out.len();
    let rows = check_rows("column_dots", a.len(), cols)?;
    let launch = Launch::new([cols.div_ceil(ROW_THREADS as usize), 1, 1], ROW_THREADS, 0)?;
    let args = match b {
        Some(b) => {
            check_len("column_dots", "b", b, a.len())?;
            Args::new().input(a).input(b)
        }
        None => Args::new().input(a).null(),
    };
    gpu.launch(&kernels::COLUMN_DOTS_F32, launch, args.int(rows).int(cols).output(out))
}

/// `out[r] = sum_c a[r, c] * b[r, c]`
pub fn row_dots(gpu: &Gpu, a: &Buffer<f32>, b: &Buffer<f32>, out: &mut Buffer<f32>) -> Result<()> {
    let rows = out.len();
    if rows == 0 || !a.len().is_multiple_of(rows) {
        return Err(Error::Shape { op: "row_dots", why: format!("{} values, {rows} rows", a.len()) });
    }
    check_len("row_dots", "b", b, a.len())?;
    check_int("row_dots", &[a.len()])?;
    let warps = ROW_THREADS as usize / 32;
    let launch = Launch::new([rows.div_ceil(warps), 1, 1], ROW_THREADS, 0)?;
    gpu.launch(&kernels::ROW_DOTS_F32, launch, Args::new().input(a).input(b).int(rows).int(a.len() / rows).output(out))
}

/// `out[i, :] = table[index[i], :]` with rows of `cols`; the caller checks the indices.
pub fn gather_rows(gpu: &Gpu, table: &Buffer<f32>, cols: usize, index: &Buffer<i32>, out: &mut Buffer<f32>) -> Result<()> {
    check_rows("gather_rows", table.len(), cols)?;
    check_len("gather_rows", "out", out, index.len() * cols)?;
    let n = out.len();
    gpu.launch(&kernels::GATHER_ROWS_F32, Launch::elementwise(n), Args::new().input(table).input(index).int(cols).output(out).i64(n as i64))
}

/// `out[i, :] = table[index[i], :]` from f16 bit patterns, as `cpu::tensor::gather_rows_f16`.
pub fn gather_rows_f16(gpu: &Gpu, table: &Buffer<u16>, cols: usize, index: &Buffer<i32>, out: &mut Buffer<f32>) -> Result<()> {
    check_rows(kernels::GATHER_ROWS_F16.symbol, table.len(), cols)?;
    check_len(kernels::GATHER_ROWS_F16.symbol, "out", out, index.len() * cols)?;
    let n = out.len();
    gpu.launch(&kernels::GATHER_ROWS_F16, Launch::elementwise(n), Args::new().input(table).input(index).int(cols).output(out).i64(n as i64))
}

/// A row-major table kept on the GPU in its storage precision (the dataset's expression matrix,
/// uploaded once), whose rows `gather_table_rows` copies out as f32.
pub enum RowTable {
    /// IEEE half bit patterns.
    F16 {
        bits: Buffer<u16>,
        cols: usize,
    },
    F32 {
        values: Buffer<f32>,
        cols: usize,
    },
}

impl RowTable {
    pub fn cols(&self) -> usize {
        match self {
            RowTable::F16 { cols, .. } | RowTable::F32 { cols, .. } => *cols,
        }
    }
    pub fn rows(&self) -> usize {
        match self {
            RowTable::F16 { bits, cols } => bits.len() / cols,
            RowTable::F32 { values, cols } => values.len() / cols,
        }
    }
}

/// `out[i, :] = table[index[i], :]` as f32.
pub fn gather_table_rows(gpu: &Gpu, table: &RowTable, index: &Buffer<i32>, out: &mut Buffer<f32>) -> Result<()> {
    match table {
        RowTable::F16 { bits, cols } => gather_rows_f16(gpu, bits, *cols, index, out),
        RowTable::F32 { values, cols } => gather_rows(gpu, values, *cols, index, out),
    }
}

/// `dtable[index[i], :] += g[i, :]`
pub fn scatter_add_rows(gpu: &Gpu, g: &Buffer<f32>, cols: usize, index: &Buffer<i32>, dtable: &mut Buffer<f32>) -> Result<()> {
    check_rows("scatter_add_rows", dtable.len(), cols)?;
    check_len("scatter_add_rows", "g", g, index.len() * cols)?;
    let n = g.len();
    gpu.launch(
        &kernels::SCATTER_ADD_ROWS_F32,
        Launch::elementwise(n),
        Args::new().input(g).input(index).int(cols).output(dtable).i64(n as i64),
    )
}

/// Columns `src_start..src_start + width` of `src[rows, src_cols]` into columns `dst_start..` of
/// `dst[rows, dst_cols]`, added when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub fn copy_cols(
    gpu: &Gpu,
    src: &Buffer<f32>,
    src_cols: usize,
    src_start: usize,
    dst: &mut Buffer<f32>,
    dst_cols: usize,
    dst_start: usize,
    width: usize,
    accumulate: bool,
) -> Result<()> {
    if src_start + width > src_cols || dst_start + width > dst_cols {
        return Err(Error::Shape {
            op: "copy_cols",
            why: format!("{width} columns from {src_start} of {src_cols} to {dst_start} of {dst_cols}"),
        });
    }
    let rows = check_rows("copy_cols", src.len(), src_cols)?;
    check_len("copy_cols", "dst", dst, rows * dst_cols)?;
    let n = rows * width;
    let args = Args::new().input(src).int(src_cols).int(src_start).output(dst).int(dst_cols).int(dst_start).int(width);
    gpu.launch(&kernels::COPY_COLS_F32, Launch::elementwise(n), args.i32(accumulate as i32).i64(n as i64))
}

/// `out[r, :] = sum_{j < group} x[r * group + j, :]` with rows of `cols`.
pub fn sum_groups_forward(gpu: &Gpu, x: &Buffer<f32>, cols: usize, group: usize, out: &mut Buffer<f32>) -> Result<()> {
    let rows = check_rows("sum_groups", x.len(), cols)?;
    if group == 0 || !rows.is_multiple_of(group) {
        return Err(Error::Shape { op: "sum_groups", why: format!("{rows} rows in groups of {group}") });
    }
    check_len("sum_groups", "out", out, rows / group * cols)?;
    let n = out.len();
    gpu.launch(
        &kernels::SUM_GROUPS_FORWARD_F32,
        Launch::elementwise(n),
        Args::new().input(x).int(cols).int(group).output(out).i64(n as i64),
    )
}

/// `dx[r * group + j, :] += dy[r, :]`
pub fn sum_groups_backward(gpu: &Gpu, dy: &Buffer<f32>, cols: usize, group: usize, dx: &mut Buffer<f32>) -> Result<()> {
    check_rows("sum_groups backward", dy.len(), cols)?;
    check_len("sum_groups backward", "dx", dx, dy.len() * group)?;
    let n = dx.len();
    gpu.launch(
        &kernels::SUM_GROUPS_BACKWARD_F32,
        Launch::elementwise(n),
        Args::new().input(dy).int(cols).int(group).output(dx).i64(n as i64),
    )
}

/// `out[0] = sum(x)`
pub fn sum(gpu: &Gpu, x: &Buffer<f32>, out: &mut Buffer<f32>) -> Result<()> {
    check_len("sum", "out", out, 1)?;
    gpu.launch(&kernels::SUM_F32, one_block()?, Args::new().input(x).i64(x.len() as i64).output(out))
}

/// `dx += dy[0]`
pub fn sum_backward(gpu: &Gpu, dy: &Buffer<f32>, dx: &mut Buffer<f32>) -> Result<()> {
    check_len("sum backward", "dy", dy, 1)?;
    let n = dx.len();
    gpu.launch(&kernels::SUM_BACKWARD_F32, Launch::elementwise(n), Args::new().input(dy).output(dx).i64(n as i64))
}

/// `out = x / max(std(x), floor)`; `stats = [mean, divisor, clamped]` for the backward.
pub fn std_scale_forward(gpu: &Gpu, x: &Buffer<f32>, floor: f64, out: &mut Buffer<f32>, stats: &mut Buffer<f32>) -> Result<()> {
    let n = x.len();
    if n < 2 {
        return Err(Error::Shape { op: "std_scale", why: format!("{n} values (needs at least two)") });
    }
    check_len("std_scale", "out", out, n)?;
    check_len("std_scale", "stats", stats, 3)?;
    gpu.launch(
        &kernels::STD_SCALE_FORWARD_F32,
        one_block()?,
        Args::new().input(x).i64(n as i64).f32(floor as f32).output(out).output(stats),
    )
}

/// `dx += d(x / s)/dx dy` (see the CPU twin)
pub fn std_scale_backward(gpu: &Gpu, x: &Buffer<f32>, stats: &Buffer<f32>, dy: &Buffer<f32>, dx: &mut Buffer<f32>) -> Result<()> {
    let n = x.len();
    check_len("std_scale backward", "stats", stats, 3)?;
    check_len("std_scale backward", "dy", dy, n)?;
    check_len("std_scale backward", "dx", dx, n)?;
    gpu.launch(&kernels::STD_SCALE_BACKWARD_F32, one_block()?, Args::new().input(x).input(stats).input(dy).i64(n as i64).output(dx))
}
