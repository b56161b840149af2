//! Launchers for `kernels/optim.cu`, the twin of `src/cpu/optim.rs`.

use super::{check_len, Args, Buffer, Gpu, Launch};
use crate::Result;

/// PyTorch's Adam update of one tensor in place (`step` counts from 1), as `cpu::optim::adam_update`.
#[allow(clippy::too_many_arguments)]
pub fn adam_update(
    gpu: &Gpu,
    param: &mut Buffer<f32>,
    grad: &Buffer<f32>,
    m: &mut Buffer<f32>,
    v: &mut Buffer<f32>,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: u64,
) -> Result<()> {
    let n = param.len();
    for (name, b) in [("grad", grad), ("m", &*m), ("v", &*v)] {
        check_len("adam", name, b, n)?;
    }
    let (bias1, bias2_sqrt) = crate::cpu::optim::bias_corrections(beta1, beta2, step);
    let args = Args::new().output(param).input(grad).output(m).output(v).i64(n as i64);
    let args = args.f32(lr).f32(beta1).f32(beta2).f32(eps).f32(weight_decay).f32(bias1).f32(bias2_sqrt);
    gpu.launch("adam_update_f32", Launch::elementwise(n), args)
}

/// Sum of squares in f64: one partial per block on the device, summed here in block order.
pub fn squared_norm(gpu: &Gpu, x: &Buffer<f32>) -> Result<f64> {
    let n = x.len();
    let launch = Launch { shared_bytes: 8 * 256 / 32, ..Launch::elementwise(n.min(256 * 1024)) };
    let mut partial = gpu.zeros::<f64>(launch.grid[0] as usize)?;
    gpu.launch("squared_norm_f32", launch, Args::new().input(x).i64(n as i64).output(&mut partial))?;
    Ok(gpu.download(&partial)?.iter().sum())
}
