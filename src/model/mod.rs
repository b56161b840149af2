//! Models. STATE is here; STATE+GenePT, Vanilla RAG and PT-RAG build on the same backbone.

pub mod state;

use crate::cpu::energy::EnergyShape;
use crate::real::Real;
use crate::tape::{Tape, Var};
use serde::{Deserialize, Serialize};

/// Architecture sizes; defaults are the paper's (REFERENCE.md §1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// SwiGLU inner width.
    pub mlp: usize,
    pub rms_eps: f64,
    /// Causal attention over the set (reference-compatibility); the default is bidirectional.
    pub causal: bool,
    /// PyTorch `nn.Linear` initialisation of the one-hot perturbation encoder, as the reference
    /// (default: embedding-style N(0, 1), see `state.rs`).
    pub reference_init: bool,
    /// From the data: genes, perturbations (control included), batch groups.
    pub genes: usize,
    pub perturbations: usize,
    pub batches: usize,
}

impl ModelConfig {
    pub fn paper(genes: usize, perturbations: usize, batches: usize) -> Self {
        ModelConfig {
            hidden: 128,
            layers: 8,
            heads: 12,
            head_dim: 58,
            mlp: 2784,
            rms_eps: 1e-6,
            causal: false,
            reference_init: false,
            genes,
            perturbations,
            batches,
        }
    }
}

/// One batch of model inputs: `sets` sets of `cells` cells.
pub struct ModelInput<'a> {
    pub sets: usize,
    pub cells: usize,
    /// `[sets * cells, genes]`: the paired control cell of every cell.
    pub control: &'a [f32],
    /// `[sets]`
    pub perturbation: &'a [u32],
    /// `[sets * cells]`
    pub batch: &'a [u32],
}

impl<'a> ModelInput<'a> {
    pub fn from_batch(b: &'a crate::data::sampler::Batch) -> Self {
        ModelInput { sets: b.sets, cells: b.cells, control: &b.control, perturbation: &b.perturbation, batch: &b.batch }
    }
}

/// Mean over sets of the per-set (half) energy distance between `pred` and `target`, both `[sets * cells, genes]`.
pub fn energy_loss<T: Real>(tape: &mut Tape<T>, pred: Var, target: Var, sets: usize, cells: usize, genes: usize) -> Var {
    let shape = EnergyShape { sets, cells_pred: cells, cells_obs: cells, genes };
    let per_set = tape.energy(pred, target, shape);
    tape.mean(per_set)
}
