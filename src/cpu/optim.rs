//! Optimiser kernels: the Adam update and the squared gradient norm used for clipping.

/// One Adam update's settings. `weight_decay` is the classic L2 term added to the gradient (Adam,
/// not AdamW), as PyTorch does; `grad_scale` multiplies the gradient first (the clipping coefficient,
/// 1 when not clipping), so that clipping needs no pass of its own.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Counts from 1.
    pub step: u64,
    pub grad_scale: f32,
}

impl AdamStep {
    /// Adam's bias corrections: `1 - beta1^step` and `sqrt(1 - beta2^step)`; the CUDA update takes
    /// them from here so that both compute them identically.
    pub fn bias_corrections(&self) -> (f32, f32) {
        let t = self.step as i32;
        (1.0 - self.beta1.powi(t), (1.0 - self.beta2.powi(t)).sqrt())
    }
}

/// PyTorch's `torch.optim.Adam` update of one tensor.
pub fn adam_update(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamStep) {
    let (bias1, bias2_sqrt) = s.bias_corrections();
    let step_size = s.lr / bias1;
    for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * s.grad_scale;
        let g = if s.weight_decay != 0.0 { g + s.weight_decay * *p } else { g };
        *m = s.beta1 * *m + (1.0 - s.beta1) * g;
        *v = s.beta2 * *v + (1.0 - s.beta2) * g * g;
        *p -= step_size * *m / (v.sqrt() / bias2_sqrt + s.eps);
    }
}

/// Sum of squares, accumulated in f64 so the clipping norm does not depend on summation order much.
pub fn squared_norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum()
}
