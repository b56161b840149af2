//! Sets and batches. A set is S cells of one (perturbation, cell type) condition; every cell is
//! paired with a control cell of the same cell type drawn at random (with replacement), which is
//! the model's basal input. Training sets are drawn with replacement when a condition has fewer
//! than S cells; evaluation uses each condition's real cells in order, in sets of at most S.

use super::split::{Condition, Fold};
use super::store::Store;
use rand::Rng;

/// `B` sets of `S` cells each, flattened set-major (`[B, S, genes]`): which cells (their rows in
/// the store) and, once read on the host, their expression.
#[derive(Clone, Debug)]
pub struct Batch {
    pub sets: usize,
    pub cells: usize,
    pub genes: usize,
    /// The cells' expression read from the store on the host (`with_values`). None for a batch of
    /// rows only (`training_batch`), whose cells a GPU gathers from its resident matrix.
    pub values: Option<CellValues>,
    /// `[B * S]`: the store's cell index of every paired control cell, and of every target cell.
    pub control_rows: Vec<u32>,
    pub target_rows: Vec<u32>,
    /// `[B]`: the perturbation of each set.
    pub perturbation: Vec<u32>,
    /// `[B]`: the cell type of each set.
    pub cell_type: Vec<u32>,
    /// `[B * S]`: the batch (gem group) of each target cell.
    pub batch: Vec<u32>,
}

/// The expression of a batch's cells.
#[derive(Clone, Debug)]
pub struct CellValues {
    /// `[B * S, genes]`: the paired control cells'.
    pub control: Vec<f32>,
    /// `[B * S, genes]`: the target cells'.
    pub target: Vec<f32>,
}

impl Batch {
    fn with_capacity(sets: usize, cells: usize, genes: usize) -> Batch {
        let n = sets * cells;
        Batch {
            sets,
            cells,
            genes,
            values: None,
            control_rows: Vec::with_capacity(n),
            target_rows: Vec::with_capacity(n),
            perturbation: Vec::with_capacity(sets),
            cell_type: Vec::with_capacity(sets),
            batch: Vec::with_capacity(n),
        }
    }

    fn push_set(&mut self, store: &Store, condition: &Condition, cells: &[u32], controls: &[u32], rng: &mut impl Rng) {
        for &cell in cells {
            self.target_rows.push(cell);
            self.control_rows.push(controls[rng.gen_range(0..controls.len())]);
            self.batch.push(store.cell_batch[cell as usize]);
        }
        self.perturbation.push(condition.perturbation);
        self.cell_type.push(condition.cell_type);
    }

    /// The same target cells, each paired with a control cell drawn anew from `controls`.
    pub fn repaired(&self, store: &Store, controls: &[u32], rng: &mut impl Rng) -> Batch {
        let control_rows: Vec<u32> = self.target_rows.iter().map(|_| controls[rng.gen_range(0..controls.len())]).collect();
        let control = read_rows(store, &control_rows, self.genes);
        let target = match &self.values {
            Some(v) => v.target.clone(),
            None => read_rows(store, &self.target_rows, self.genes),
        };
        Batch { control_rows, values: Some(CellValues { control, target }), ..self.clone() }
    }

    /// The batch with its cells' expression read from the store.
    pub fn with_values(mut self, store: &Store) -> Batch {
        let (target, control) = (read_rows(store, &self.target_rows, self.genes), read_rows(store, &self.control_rows, self.genes));
        self.values = Some(CellValues { control, target });
        self
    }

    /// The cells' expression; an error for a batch of rows only (`with_values` reads it).
    pub fn values(&self) -> crate::Result<&CellValues> {
        self.values.as_ref().ok_or_else(|| crate::Error::Shape {
            op: "batch",
            why: "cells used on the host need the batch's values (Batch::with_values)".into(),
        })
    }
}

/// The expression of cells `rows`, `[rows.len(), genes]`.
fn read_rows(store: &Store, rows: &[u32], genes: usize) -> Vec<f32> {
    let mut values = vec![0.0f32; rows.len() * genes];
    values.chunks_mut(genes.max(1)).zip(rows).for_each(|(out, &cell)| store.expression_row(cell as usize, out));
    values
}

/// S cells of a condition: without replacement when it has enough, with replacement otherwise.
fn draw_cells(condition: &Condition, s: usize, rng: &mut impl Rng) -> Vec<u32> {
    let n = condition.cells.len();
    if n >= s {
        rand::seq::index::sample(rng, n, s).into_iter().map(|i| condition.cells[i]).collect()
    } else {
        (0..s).map(|_| condition.cells[rng.gen_range(0..n)]).collect()
    }
}

/// A training batch: `sets` conditions drawn uniformly from the fold's training conditions; the
/// cells are chosen (their rows in the store), not yet read (`Batch::with_values`).
pub fn training_batch(store: &Store, fold: &Fold, sets: usize, cells: usize, rng: &mut impl Rng) -> Batch {
    let mut batch = Batch::with_capacity(sets, cells, store.n_genes());
    for _ in 0..sets {
        let condition = &fold.train[rng.gen_range(0..fold.train.len())];
        let chosen = draw_cells(condition, cells, rng);
        batch.push_set(store, condition, &chosen, &fold.controls[condition.cell_type as usize], rng);
    }
    batch
}

/// One evaluation set (a batch of one set) per chunk of at most `cells` real cells of the condition.
pub fn evaluation_sets(store: &Store, fold: &Fold, condition: &Condition, cells: usize, rng: &mut impl Rng) -> Vec<Batch> {
    condition
        .cells
        .chunks(cells)
        .map(|chunk| {
            let mut batch = Batch::with_capacity(1, chunk.len(), store.n_genes());
            batch.push_set(store, condition, chunk, &fold.controls[condition.cell_type as usize], rng);
            batch.with_values(store)
        })
        .collect()
}

/// Sets for predicting `perturbation` in `cell_type` from the given control cells alone (an in-silico
/// screen: there may be no real cells): at most `cells` per set, each control cell its own basal
/// input; the "target" rows are the control cells too (their batch labels; no real target exists).
pub fn control_sets(store: &Store, controls: &[u32], perturbation: u32, cell_type: u32, cells: usize) -> Vec<Batch> {
    controls
        .chunks(cells.max(1))
        .map(|chunk| {
            let mut batch = Batch::with_capacity(1, chunk.len(), store.n_genes());
            for &cell in chunk {
                batch.target_rows.push(cell);
                batch.control_rows.push(cell);
                batch.batch.push(store.cell_batch[cell as usize]);
            }
            batch.perturbation.push(perturbation);
            batch.cell_type.push(cell_type);
            batch.with_values(store)
        })
        .collect()
}
