//! The per-set energy distance.
//! The family's forward ops, what their backward passes keep (the op enum), and the backward passes.

use super::*;
use crate::cpu::energy::{energy_backward, energy_forward, EnergyShape};

pub(super) enum EnergyOp {
    Energy { pred: Var, obs: Var, shape: EnergyShape },
}

impl EnergyOp {
    /// The family member, for timing breakdowns.
    pub(super) fn name(&self) -> &'static str {
        match self {
            EnergyOp::Energy { .. } => "energy",
        }
    }
}

impl<T> From<EnergyOp> for Op<T> {
    fn from(op: EnergyOp) -> Self {
        Op::Energy(op)
    }
}

impl<T: Scalar> Tape<T> {
    /// Per-set (half) energy distance, `[sets]`; see `cpu::energy`.
    pub fn energy(&mut self, pred: Var, obs: Var, shape: EnergyShape) -> Var {
        let out = self.compute_one(
            shape.sets,
            |o| energy_forward(self.host_slice(pred), self.host_slice(obs), shape, o),
            |g, o| cuda::energy::energy_forward(g, self.device_buffer(pred), self.device_buffer(obs), shape, o),
        );
        let needs = self.needs(&[pred]);
        self.push(out, vec![shape.sets], EnergyOp::Energy { pred, obs, shape }, needs)
    }
}

impl<T: Scalar> Tape<T> {
    pub(super) fn energy_backward(&self, op: &EnergyOp, grad: Memory<T>, grads: &mut [Option<Memory<T>>]) {
        let g = &grad;
        let n = |v: Var| self.numel(v);
        match op {
            &EnergyOp::Energy { pred, obs, shape } => {
                let dp = self.accumulate_one(
                    n(pred),
                    |o| energy_backward(self.host_slice(pred), self.host_slice(obs), shape, g.host(), o),
                    |gpu, o| cuda::energy::energy_backward(gpu, self.device_buffer(pred), self.device_buffer(obs), shape, g.dev(), o),
                );
                self.add_grad(grads, pred, dp);
            }
        }
    }
}
