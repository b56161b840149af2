//! Launchers for `kernels/optim.cu`, the twin of `src/cpu/optim.rs`.

use super::{check_int, check_len, Args, Buffer, Gpu, Launch};
use crate::cpu::optim::AdamStep;
use crate::Result;

/// PyTorch's Adam update of one tensor in place, as `cpu::optim::adam_update`.
pub fn adam_update(
    gpu: &Gpu,
    param: &mut Buffer<f32>,
    grad: &Buffer<f32>,
    m: &mut Buffer<f32>,
    v: &mut Buffer<f32>,
    s: &AdamStep,
) -> Result<()> {
    let n = param.len();
    for (name, b) in [("grad", grad), ("m", &*m), ("v", &*v)] {
        check_len("adam", name, b, n)?;
    }
    let (bias1, bias2_sqrt) = s.bias_corrections();
    let args = Args::new().output(param).input(grad).output(m).output(v).i64(n as i64).f32(s.grad_scale);
    let args = args.f32(s.lr).f32(s.beta1).f32(s.beta2).f32(s.eps).f32(s.weight_decay).f32(bias1).f32(bias2_sqrt);
    gpu.launch("adam_update_f32", Launch::elementwise(n), args)
}

/// The sum of squares of every tensor of `xs`, in f64: one partial per block on the device, all
/// tensors' partials in one buffer, downloaded once and summed here in order.
pub fn squared_norm(gpu: &Gpu, xs: &[&Buffer<f32>]) -> Result<f64> {
    let launch = |n: usize| Launch { shared_bytes: 8 * 256 / 32, ..Launch::elementwise(n.min(256 * 1024)) };
    let blocks: Vec<usize> = xs.iter().map(|x| launch(x.len()).grid[0] as usize).collect();
    let total: usize = blocks.iter().sum();
    check_int("squared_norm", &[total])?;
    let mut partial = gpu.zeros::<f64>(total)?;
    let mut first = 0;
    for (x, b) in xs.iter().zip(blocks) {
        gpu.launch("squared_norm_f32", launch(x.len()), Args::new().input(x).i64(x.len() as i64).output(&mut partial).int(first))?;
        first += b;
    }
    Ok(gpu.download(&partial)?.iter().sum())
}
