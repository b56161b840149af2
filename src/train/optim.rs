//! Adam with global gradient-norm clipping, over the trainable parameters of a `Params<f32>`.

use crate::cpu::optim::{adam_update, clip, AdamStep, Clip};
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

    /// Advances the step count and returns the update's settings for it.
    pub fn next_step(&mut self) -> AdamStep {
        let c = &self.cfg;
        self.step += 1;
        AdamStep {
            lr: c.lr as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            weight_decay: c.weight_decay as f32,
            step: self.step,
        }
    }

    /// Clips (PyTorch's `clip_grad_norm_` coefficient scales the gradients when their global norm is
    /// above the limit), then updates every trainable parameter; nothing changes when the norm or
    /// `loss` is not finite. Returns the clipping, with the pre-clipping norm.
    pub fn step(&mut self, params: &mut Params<f32>, loss: f32) -> Clip {
        let grads: Vec<&[f32]> = params.entries.iter().filter(|p| p.trainable).map(|p| &p.grad[..]).collect();
        let clip = clip(&grads, loss, self.cfg.clip_norm);
        if !clip.apply {
            return clip;
        }
        let update = self.next_step();
        for ((p, m), v) in params.entries.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            if p.trainable {
                adam_update(Arc::make_mut(&mut p.value).as_mut_slice(), &p.grad, m, v, &update, clip.scale);
            }
        }
        clip
    }
}
