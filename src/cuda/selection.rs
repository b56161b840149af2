//! Launchers for `kernels/selection.cu`, the twin of `src/cpu/selection.rs` (straight-through
//! Gumbel-Softmax over `[rows, classes]`).

use super::{check_int, check_len, Args, Buffer, Gpu, Launch};
use crate::{Error, Result};

fn rows(op: &'static str, x: &Buffer<f32>, classes: usize) -> Result<(usize, Launch)> {
    if classes == 0 || !x.len().is_multiple_of(classes) {
        return Err(Error::Shape { op, why: format!("{} values in rows of {classes}", x.len()) });
    }
    check_int(op, &[x.len()])?;
    let rows = x.len() / classes;
    Ok((rows, Launch::new([rows.div_ceil(128).max(1), 1, 1], 128, 0)?))
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
    gpu.launch("gumbel_st_forward_f32", launch, args)
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
    gpu.launch("gumbel_st_backward_f32", launch, Args::new().input(soft).input(dy).f32(tau as f32).int(n).int(classes).output(dlogits))
}
