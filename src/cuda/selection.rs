//! Launchers for `kernels/selection.cu`, the twin of `src/cpu/selection.rs` (straight-through
//! Gumbel-Softmax over `[rows, classes]`).

use super::params::TripletLayoutParams;
use super::{check_int, check_len, kernels, Args, Buffer, Gpu, Launch};
use crate::cpu::selection::TripletLayout;
use crate::{Error, Result};

fn rows(op: &'static str, x: &Buffer<f32>, classes: usize) -> Result<(usize, Launch)> {
    if classes == 0 || !x.len().is_multiple_of(classes) {
        return Err(Error::Shape { op, why: format!("{} values in rows of {classes}", x.len()) });
    }
    check_int(op, &[x.len()])?;
    let rows = x.len() / classes;
    Ok((rows, Launch::new([rows.div_ceil(128).max(1), 1, 1], 128, 0)?))
}

/// Standard Gumbel noise drawn from the counter stream `key`, as `cpu::selection::gumbel_noise`.
pub fn gumbel_noise(gpu: &Gpu, key: u64, out: &mut Buffer<f32>) -> Result<()> {
    let n = out.len();
    gpu.launch(&kernels::GUMBEL_NOISE_F32, Launch::elementwise(n), Args::new().output(out).i64(n as i64).u64(key))
}

#[allow(clippy::too_many_arguments)]
pub fn gumbel_st_forward(
    gpu: &Gpu,
    logits: &Buffer<f32>,
    noise: &Buffer<f32>,
    tau: f64,
    classes: usize,
    soft: &mut Buffer<f32>,
    hard: &mut Buffer<f32>,
) -> Result<()> {
    let (n, launch) = rows("gumbel_st", logits, classes)?;
    for (name, b) in [("noise", noise), ("soft", &*soft), ("hard", &*hard)] {
        check_len("gumbel_st", name, b, logits.len())?;
    }
    let args = Args::new().input(logits).input(noise).f32(tau as f32).int(n).int(classes).output(soft).output(hard);
    gpu.launch(&kernels::GUMBEL_ST_FORWARD_F32, launch, args)
}

pub fn gumbel_st_backward(
    gpu: &Gpu,
    soft: &Buffer<f32>,
    dy: &Buffer<f32>,
    tau: f64,
    classes: usize,
    dlogits: &mut Buffer<f32>,
) -> Result<()> {
    let (n, launch) = rows("gumbel_st backward", soft, classes)?;
    for (name, b) in [("dy", dy), ("dlogits", &*dlogits)] {
        check_len("gumbel_st backward", name, b, soft.len())?;
    }
    gpu.launch(
        &kernels::GUMBEL_ST_BACKWARD_F32,
        launch,
        Args::new().input(soft).input(dy).f32(tau as f32).int(n).int(classes).output(dlogits),
    )
}

fn check_layout(op: &'static str, layout: TripletLayout, h: usize) -> Result<()> {
    if layout.rows == 0 || layout.k == 0 || !layout.cells.is_multiple_of(layout.rows) {
        return Err(Error::Shape { op, why: format!("{layout:?}") });
    }
    check_int(op, &[layout.triplets() * h.max(2), layout.rows * layout.k * h])
}

/// The kernels' layout parameter (the sizes fit an `int`: `check_layout` has tested them).
fn layout_params(layout: TripletLayout) -> TripletLayoutParams {
    TripletLayoutParams { cells: layout.cells as i32, rows: layout.rows as i32, k: layout.k as i32 }
}

/// `stats: [triplets, 2]` (mean, rstd) from the parts' row sums and sums of squares; see
/// `cpu::selection::triplet_stats_forward`.
pub fn triplet_stats_forward(
    gpu: &Gpu,
    sums: [&Buffer<f32>; 3],
    squares: [&Buffer<f32>; 3],
    layout: TripletLayout,
    width: usize,
    eps: f64,
    stats: &mut Buffer<f32>,
) -> Result<()> {
    check_layout("triplet_stats", layout, 1)?;
    for (p, rows) in layout.part_rows().into_iter().enumerate() {
        check_len("triplet_stats", "sums", sums[p], rows)?;
        check_len("triplet_stats", "squares", squares[p], rows)?;
    }
    check_len("triplet_stats", "stats", stats, 2 * layout.triplets())?;
    let args = Args::new().input(sums[0]).input(sums[1]).input(sums[2]).input(squares[0]).input(squares[1]).input(squares[2]);
    let args = args.params(&layout_params(layout)).int(width).f32(eps as f32).output(stats);
    gpu.launch(&kernels::TRIPLET_STATS_FORWARD_F32, Launch::elementwise(layout.triplets()), args)
}

pub fn triplet_stats_backward(
    gpu: &Gpu,
    stats: &Buffer<f32>,
    dstats: &Buffer<f32>,
    layout: TripletLayout,
    width: usize,
    dsums: [&mut Buffer<f32>; 3],
    dsquares: [&mut Buffer<f32>; 3],
) -> Result<()> {
    check_layout("triplet_stats backward", layout, 1)?;
    check_len("triplet_stats backward", "stats", stats, 2 * layout.triplets())?;
    check_len("triplet_stats backward", "dstats", dstats, 2 * layout.triplets())?;
    for (p, rows) in layout.part_rows().into_iter().enumerate() {
        check_len("triplet_stats backward", "dsums", dsums[p], rows)?;
        check_len("triplet_stats backward", "dsquares", dsquares[p], rows)?;
    }
    let [s0, s1, s2] = dsums;
    let [q0, q1, q2] = dsquares;
    let args = Args::new().input(stats).input(dstats).params(&layout_params(layout)).int(width);
    let args = args.output(s0).output(s1).output(s2).output(q0).output(q1).output(q2);
    gpu.launch(&kernels::TRIPLET_STATS_BACKWARD_F32, Launch::elementwise(layout.part_rows().iter().sum()), args)
}

fn check_parts(op: &'static str, parts: [&Buffer<f32>; 3], layout: TripletLayout, h: usize) -> Result<()> {
    check_layout(op, layout, h)?;
    for (p, rows) in layout.part_rows().into_iter().enumerate() {
        check_len(op, "part", parts[p], rows * h)?;
    }
    Ok(())
}

/// `out: [triplets, h]`, a linear layer on every triplet's LayerNorm from the parts' projections;
/// see `cpu::selection::triplet_assemble_forward`.
#[allow(clippy::too_many_arguments)]
pub fn triplet_assemble_forward(
    gpu: &Gpu,
    parts: [&Buffer<f32>; 3],
    stats: &Buffer<f32>,
    v: &Buffer<f32>,
    c: &Buffer<f32>,
    layout: TripletLayout,
    out: &mut Buffer<f32>,
) -> Result<()> {
    let h = v.len();
    check_parts("triplet_assemble", parts, layout, h)?;
    check_len("triplet_assemble", "stats", stats, 2 * layout.triplets())?;
    check_len("triplet_assemble", "c", c, h)?;
    check_len("triplet_assemble", "out", out, layout.triplets() * h)?;
    let args = Args::new().input(parts[0]).input(parts[1]).input(parts[2]).input(stats).input(v).input(c);
    let args = args.params(&layout_params(layout)).int(h).output(out);
    gpu.launch(&kernels::TRIPLET_ASSEMBLE_FORWARD_F32, Launch::elementwise(layout.triplets() * h), args)
}

/// Accumulates the gradients of the parts, the statistics, `v` and `c`.
#[allow(clippy::too_many_arguments)]
pub fn triplet_assemble_backward(
    gpu: &Gpu,
    parts: [&Buffer<f32>; 3],
    stats: &Buffer<f32>,
    v: &Buffer<f32>,
    dout: &Buffer<f32>,
    layout: TripletLayout,
    dparts: [&mut Buffer<f32>; 3],
    dstats: &mut Buffer<f32>,
    dv: &mut Buffer<f32>,
    dc: &mut Buffer<f32>,
) -> Result<()> {
    let h = v.len();
    let op = "triplet_assemble backward";
    check_parts(op, parts, layout, h)?;
    check_parts(op, [&*dparts[0], &*dparts[1], &*dparts[2]], layout, h)?;
    check_len(op, "stats", stats, 2 * layout.triplets())?;
    check_len(op, "dstats", dstats, 2 * layout.triplets())?;
    check_len(op, "dout", dout, layout.triplets() * h)?;
    check_len(op, "dv", dv, h)?;
    check_len(op, "dc", dc, h)?;
    let (cells, rows, k) = (layout.cells, layout.rows, layout.k);
    let args = Args::new().input(parts[0]).input(parts[1]).input(parts[2]).input(stats).input(v).input(dout);
    let warps = Launch::elementwise(32 * layout.triplets());
    gpu.launch(&kernels::TRIPLET_ASSEMBLE_BACKWARD_STATS_F32, warps, args.params(&layout_params(layout)).int(h).output(dstats))?;
    let (mut partial_v, mut partial_c) = (gpu.zeros::<f32>(rows * h)?, gpu.zeros::<f32>(rows * h)?);
    let [d0, d1, d2] = dparts;
    let elements = (cells + rows + rows * k) * h;
    let args = Args::new().input(stats).input(dout).params(&layout_params(layout)).int(h).output(d0).output(d1).output(d2);
    gpu.launch(
        &kernels::TRIPLET_ASSEMBLE_BACKWARD_PARTS_F32,
        Launch::elementwise(elements),
        args.output(&mut partial_v).output(&mut partial_c),
    )?;
    let args = Args::new().input(&partial_v).input(&partial_c).int(rows).int(h).output(dv).output(dc);
    gpu.launch(&kernels::TRIPLET_ASSEMBLE_BACKWARD_VECTORS_F32, Launch::new([h.div_ceil(128), 1, 1], 128, 0)?, args)
}
