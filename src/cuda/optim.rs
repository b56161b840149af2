//! Launchers for `kernels/optim.cu`, the twin of `src/cpu/optim.rs`.

use super::params::AdamParams;
use super::{check_int, check_len, kernels, Args, Buffer, Gpu, Launch};
use crate::cpu::optim::AdamStep;
use crate::Result;

/// PyTorch's Adam update of one tensor in place, as `cpu::optim::adam_update` with the gradient
/// scale of `clip` (made by `clip`), and no change at all when `clip` says the step does not apply.
pub fn adam_update(
    gpu: &Gpu,
    param: &mut Buffer<f32>,
    grad: &Buffer<f32>,
    m: &mut Buffer<f32>,
    v: &mut Buffer<f32>,
    s: &AdamStep,
    clip: &Buffer<f64>,
) -> Result<()> {
    let n = param.len();
    for (name, b) in [("grad", grad), ("m", &*m), ("v", &*v)] {
        check_len("adam", name, b, n)?;
    }
    check_len("adam", "clip", clip, 3)?;
    let (bias1, bias2_sqrt) = s.bias_corrections();
    let step = AdamParams { lr: s.lr, beta1: s.beta1, beta2: s.beta2, eps: s.eps, weight_decay: s.weight_decay, bias1, bias2_sqrt };
    let args = Args::new().output(param).input(grad).output(m).output(v).i64(n as i64).input(clip).params(&step);
    gpu.launch(&kernels::ADAM_UPDATE_F32, Launch::elementwise(n), args)
}

/// The step's clipping on the GPU, from the gradients `xs` and the loss (a one-element tensor):
/// `{norm, scale, apply}` as `cpu::optim::Clip`, left on the GPU for `adam_update`
/// (`Clip::from_values` reads it on the host). The squares are summed per block in f64, and the
/// partials in order.
pub fn clip(gpu: &Gpu, xs: &[&Buffer<f32>], loss: &Buffer<f32>, clip_norm: f64) -> Result<Buffer<f64>> {
    let launch = |n: usize| Launch { shared_bytes: 8 * 256 / 32, ..Launch::elementwise(n.min(256 * 1024)) };
    let blocks: Vec<usize> = xs.iter().map(|x| launch(x.len()).grid[0] as usize).collect();
    let total: usize = blocks.iter().sum();
    check_int("clip", &[total])?;
    check_len("clip", "loss", loss, 1)?;
    let mut partial = gpu.zeros::<f64>(total)?;
    let mut first = 0;
    for (x, b) in xs.iter().zip(blocks) {
        gpu.launch(&kernels::CLIP_SQUARES_F32, launch(x.len()), Args::new().input(x).i64(x.len() as i64).output(&mut partial).int(first))?;
        first += b;
    }
    let mut clip = gpu.zeros::<f64>(3)?;
    let one_block = Launch { grid: [1, 1, 1], block: 32, shared_bytes: 0 };
    gpu.launch(&kernels::CLIP_NORM_F64, one_block, Args::new().input(&partial).int(total).input(loss).f64(clip_norm).output(&mut clip))?;
    Ok(clip)
}
