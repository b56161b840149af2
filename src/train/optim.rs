//! Adam with global gradient-norm clipping, over the trainable parameters of a `Params<f32>`.

use crate::cpu::optim::{adam_update, squared_norm};
use crate::tape::Params;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global L2 norm above which gradients are scaled down (PyTorch `clip_grad_norm_`); 0 = off.
    pub clip_norm: f64,
}

impl Default for AdamConfig {
    /// The paper's run: lr 1e-3, no weight decay actually applied, clipping at 10.
    fn default() -> Self {
        AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, clip_norm: 10.0 }
    }
}

/// First and second moments per parameter (same order as `Params::entries`), and the step count.
#[derive(Clone, Debug)]
pub struct Adam {
    pub cfg: AdamConfig,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub step: u64,
}

impl Adam {
    pub fn new(cfg: AdamConfig, params: &Params<f32>) -> Self {
        let zeros = || params.entries.iter().map(|p| vec![0.0; p.value.len()]).collect();
        Adam { cfg, m: zeros(), v: zeros(), step: 0 }
    }

    /// Global norm of the trainable gradients (before clipping).
    pub fn grad_norm(params: &Params<f32>) -> f64 {
        params.entries.iter().filter(|p| p.trainable).map(|p| squared_norm(&p.grad)).sum::<f64>().sqrt()
    }

    /// Clips, then updates every trainable parameter. Returns the pre-clipping gradient norm.
    pub fn step(&mut self, params: &mut Params<f32>) -> f64 {
        let norm = Self::grad_norm(params);
        let c = &self.cfg;
        if c.clip_norm > 0.0 {
            let coef = c.clip_norm / (norm + 1e-6);
            if coef < 1.0 {
                for p in params.entries.iter_mut().filter(|p| p.trainable) {
                    p.grad.iter_mut().for_each(|g| *g *= coef as f32);
                }
            }
        }
        self.step += 1;
        for ((p, m), v) in params.entries.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            if p.trainable {
                let value = Arc::make_mut(&mut p.value);
                adam_update(
                    value,
                    &p.grad,
                    m,
                    v,
                    c.lr as f32,
                    c.beta1 as f32,
                    c.beta2 as f32,
                    c.eps as f32,
                    c.weight_decay as f32,
                    self.step,
                );
            }
        }
        norm
    }
}
