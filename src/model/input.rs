//! One batch of model inputs, and the random parts of a forward pass.

use crate::cpu::elementwise::DropoutMask;
use crate::scalar::Scalar;
use crate::tape::{RowTable, Tape, Var};

/// The random parts of PT-RAG's forward pass, drawn by the caller so that they can be fixed.
#[derive(Clone, Debug)]
pub struct Noise {
    /// The counter stream of the `[cells, K, 2]` standard Gumbel samples for (exclude, include),
    /// drawn where the tape runs (`Tape::gumbel_noise`).
    pub gumbel_key: u64,
    /// The scorer's dropout over its `[cells, K, hidden]` activations; none = no dropout.
    pub dropout: Option<DropoutMask>,
}

/// How PT-RAG turns its scores into candidate weights in a forward pass.
#[derive(Clone, Copy, Debug)]
pub enum Selection<'a> {
    /// Straight-through Gumbel-Softmax with this noise (and the scorer's dropout, if any): training.
    Sampled(&'a Noise),
    /// Include iff the include logit is larger: exactly 0/1 and deterministic.
    Hard,
    /// The probability that a sample includes the candidate, `softmax(logits)[include]`: the
    /// expectation of the sampled weights, deterministic.
    Expected,
}

impl<'a> Selection<'a> {
    /// Sampled when there is noise, else hard.
    pub fn from_noise(noise: Option<&'a Noise>) -> Self {
        noise.map_or(Selection::Hard, Selection::Sampled)
    }
}

/// Expression of a batch's cells: values on the host, or rows of the dataset's expression matrix
/// kept on the GPU (which a GPU tape gathers there).
#[derive(Clone, Copy)]
pub enum Cells<'a> {
    /// `[cells, genes]`
    Values(&'a [f32]),
    Rows {
        table: &'a RowTable,
        rows: &'a [u32],
    },
}

impl Cells<'_> {
    /// The cells as data on `tape`, `[cells, genes]`.
    pub fn on_tape<T: Scalar>(self, tape: &mut Tape<T>, cells: usize, genes: usize) -> Var {
        match self {
            Cells::Values(v) => {
                assert_eq!(v.len(), cells * genes, "expected {cells} x {genes} expression values");
                tape.constant(&[cells, genes], T::from_f32_slice(v))
            }
            Cells::Rows { table, rows } => {
                assert!(rows.len() == cells && table.cols() == genes, "expected {cells} rows of {genes} genes");
                tape.table_rows(table, rows)
            }
        }
    }
}

/// One batch of model inputs: `sets` sets of `cells` cells.
pub struct ModelInput<'a> {
    pub sets: usize,
    pub cells: usize,
    /// `[sets * cells, genes]`: the paired control cell of every cell.
    pub control: Cells<'a>,
    /// `[sets]`
    pub perturbation: &'a [u32],
    /// `[sets]`: the cell type of each set (whose observed responses a candidate carries).
    pub cell_type: &'a [u32],
    /// `[sets * cells]`
    pub batch: &'a [u32],
    /// A training forward pass (the reference's self-exclusion bug acts only there).
    pub training: bool,
    /// PT-RAG's selection (ignored by the other models).
    pub selection: Selection<'a>,
    /// The GenePT table kept on the GPU, whose rows a GPU tape gathers there; none: the model's
    /// host copy, uploaded row by row.
    pub genept: Option<&'a RowTable>,
}

impl<'a> ModelInput<'a> {
    /// The inputs of `b`, its control cells' expression as read on the host (`Batch::with_values`).
    pub fn from_batch(b: &'a crate::data::sampler::Batch, training: bool, selection: Selection<'a>) -> crate::Result<Self> {
        Ok(Self::of_batch(b, Cells::Values(&b.values()?.control), training, selection))
    }

    /// The inputs of `b` with its control cells given as `control`: values read on the host, or
    /// rows that a GPU gathers from its resident matrix.
    pub fn of_batch(b: &'a crate::data::sampler::Batch, control: Cells<'a>, training: bool, selection: Selection<'a>) -> Self {
        ModelInput {
            sets: b.sets,
            cells: b.cells,
            control,
            perturbation: &b.perturbation,
            cell_type: &b.cell_type,
            batch: &b.batch,
            training,
            selection,
            genept: None,
        }
    }
}
