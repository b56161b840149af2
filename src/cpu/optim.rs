//! Optimiser kernels: the Adam update and the squared gradient norm used for clipping.

/// PyTorch's `torch.optim.Adam` update for one tensor (`step` counts from 1). `weight_decay` is the
/// classic L2 term added to the gradient (Adam, not AdamW), as PyTorch does.
#[allow(clippy::too_many_arguments)]
pub fn adam_update(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: u64,
) {
    let (bias1, bias2_sqrt) = bias_corrections(beta1, beta2, step);
    let step_size = lr / bias1;
    for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = if weight_decay != 0.0 { g + weight_decay * *p } else { g };
        *m = beta1 * *m + (1.0 - beta1) * g;
        *v = beta2 * *v + (1.0 - beta2) * g * g;
        *p -= step_size * *m / (v.sqrt() / bias2_sqrt + eps);
    }
}

/// Adam's bias corrections at `step` (from 1): `1 - beta1^step` and `sqrt(1 - beta2^step)`; the CUDA
/// update takes them from here so that both compute them identically.
pub fn bias_corrections(beta1: f32, beta2: f32, step: u64) -> (f32, f32) {
    (1.0 - beta1.powi(step as i32), (1.0 - beta2.powi(step as i32)).sqrt())
}

/// Sum of squares, accumulated in f64 so the clipping norm does not depend on summation order much.
pub fn squared_norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum()
}
