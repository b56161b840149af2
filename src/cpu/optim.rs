//! Optimiser kernels: the Adam update, the squared gradient norm and the clipping decision.

/// One Adam update's settings. `weight_decay` is the classic L2 term added to the gradient (Adam,
/// not AdamW), as PyTorch does.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Counts from 1.
    pub step: u64,
}

impl AdamStep {
    /// Adam's bias corrections: `1 - beta1^step` and `sqrt(1 - beta2^step)`; the CUDA update takes
    /// them from here so that both compute them identically.
    pub fn bias_corrections(&self) -> (f32, f32) {
        let t = self.step as i32;
        (1.0 - self.beta1.powi(t), (1.0 - self.beta2.powi(t)).sqrt())
    }
}

/// PyTorch's `torch.optim.Adam` update of one tensor, reading the gradient times `grad_scale` (the
/// clipping coefficient, 1 when not clipping), so that clipping needs no pass of its own.
pub fn adam_update(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamStep, grad_scale: f32) {
    let (bias1, bias2_sqrt) = s.bias_corrections();
    let step_size = s.lr / bias1;
    for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * grad_scale;
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

/// The step's clipping from the gradients `xs` and the loss: the twin of `cuda::optim::clip`.
pub fn clip(xs: &[&[f32]], loss: f32, clip_norm: f64) -> Clip {
    Clip::new(xs.iter().map(|x| squared_norm(x)).sum(), loss, clip_norm)
}

/// A step's clipping: the gradients' global norm, PyTorch's `clip_grad_norm_` coefficient, and
/// whether the update applies at all (the norm and the loss finite), as the GPU's `clip_norm_f64` decides
/// it without the host looking.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clip {
    pub norm: f64,
    pub scale: f32,
    pub apply: bool,
}

impl Clip {
    /// From the sum of the gradients' squares, the step's loss and the clipping limit (0 = off).
    pub fn new(squared_sum: f64, loss: f32, clip_norm: f64) -> Self {
        let norm = squared_sum.sqrt();
        let coef = clip_norm / (norm + 1e-6);
        Clip { norm, scale: if clip_norm > 0.0 && coef < 1.0 { coef as f32 } else { 1.0 }, apply: norm.is_finite() && loss.is_finite() }
    }

    /// From the three values `{norm, scale, apply}` that the GPU's `clip_norm_f64` writes.
    pub fn from_values(c: &[f64]) -> Clip {
        Clip { norm: c[0], scale: c[1] as f32, apply: c[2] != 0.0 }
    }
}
