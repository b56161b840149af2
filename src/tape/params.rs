//! Trainable parameters, kept outside the tape so that a tape can be built and dropped every step.
//!
//! THE GRADIENT CONTRACT: `Params::grad` ACCUMULATES. `Tape::backward` followed by
//! `Gradients::accumulate_into` adds (`+=`) each parameter's gradient to `grad`; nothing clears it
//! except `zero_grad`. A training step therefore zeroes, runs forward/backward, clips, then updates.

use crate::scalar::Scalar;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

#[derive(Clone, Debug)]
pub struct Param<T> {
    pub name: String,
    pub shape: Vec<usize>,
    /// Shared with the tape during a step (no copy); `Arc::make_mut` in the optimiser after the tape is gone.
    pub value: Arc<Vec<T>>,
    pub grad: Vec<T>,
    /// Frozen parameters still take part in the forward pass but receive no update.
    pub trainable: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Params<T> {
    pub entries: Vec<Param<T>>,
}

impl<T: Scalar> Params<T> {
    pub fn new() -> Self {
        Params { entries: Vec::new() }
    }
    pub fn add(&mut self, name: &str, shape: &[usize], value: Vec<T>) -> ParamId {
        let numel: usize = shape.iter().product();
        assert_eq!(value.len(), numel, "parameter {name}: {} values for shape {shape:?}", value.len());
        assert!(self.entries.iter().all(|p| p.name != name), "parameter {name} defined twice");
        self.entries.push(Param {
            name: name.to_string(),
            shape: shape.to_vec(),
            value: Arc::new(value),
            grad: vec![T::zero(); numel],
            trainable: true,
        });
        ParamId(self.entries.len() - 1)
    }
    pub fn get(&self, id: ParamId) -> &Param<T> {
        &self.entries[id.0]
    }
    pub fn by_name(&self, name: &str) -> Option<&Param<T>> {
        self.entries.iter().find(|p| p.name == name)
    }
    pub fn zero_grad(&mut self) {
        self.entries.iter_mut().for_each(|p| p.grad.iter_mut().for_each(|g| *g = T::zero()));
    }
    pub fn count(&self) -> usize {
        self.entries.iter().map(|p| p.value.len()).sum()
    }
    pub fn trainable_count(&self) -> usize {
        self.entries.iter().filter(|p| p.trainable).map(|p| p.value.len()).sum()
    }
}
