//! What a model needs at least, in bytes, from its sizes alone: absurd sizes (`--hidden 100000000`,
//! `--cells-per-set 100000`) are refused up front with the figure, since an allocation that large
//! aborts the process instead of returning an error. The figures are lower bounds (the largest
//! tables and activations only), so a size that fits is never refused.

use super::{ModelConfig, ModelKind};
use crate::machine::check_fits;
use crate::Result;

impl ModelConfig {
    /// Parameters, at least: the basal encoder, the perturbation encoder, the batch table, the
    /// backbone's projections and the head. In f64, so that no size overflows.
    pub fn parameters_at_least(&self) -> f64 {
        let f = |x: usize| x as f64;
        let (h, g) = (f(self.hidden), f(self.genes));
        let perturbation_in = if self.kind == ModelKind::State { f(self.perturbations) } else { f(self.genept_dim) };
        let attention = f(self.heads) * f(self.head_dim);
        let layer = 4.0 * h * attention + 3.0 * h * f(self.mlp);
        g * h + perturbation_in * h + f(self.batches) * h + f(self.layers) * layer + h * g
    }

    /// Bytes of one training step of `sets` x `cells` cells, at least: every parameter's value,
    /// gradient and two Adam moments, and per cell its control and target rows and the backbone's
    /// activations that the tape keeps for the backward pass, all in f32.
    pub fn training_step_bytes_at_least(&self, sets: usize, cells: usize) -> f64 {
        let f = |x: usize| x as f64;
        let attention = f(self.heads) * f(self.head_dim);
        let per_cell = 2.0 * f(self.genes) + f(self.layers) * (3.0 * attention + 2.0 * f(self.mlp) + 2.0 * f(self.hidden));
        4.0 * (4.0 * self.parameters_at_least() + f(sets) * f(cells) * per_cell)
    }

    /// `check_fits` for one training step of `sets` x `cells` cells; `batch` names them as the
    /// command's flags do (`--sets-per-batch 16, --cells-per-set 16`).
    pub fn check_training_fits(&self, sets: usize, cells: usize, batch: &str) -> Result<()> {
        check_fits(self.training_step_bytes_at_least(sets, cells), || {
            format!(
                "sizes (--hidden {}, --layers {}, --heads {}, --head-dim {}, --mlp {}; {batch})",
                self.hidden, self.layers, self.heads, self.head_dim, self.mlp
            )
        })
    }
}
