//! What the retrieval models feed the backbone instead of `basal + pert`.
//!
//! Shapes: `basal: [N, H]` (N = sets x cells), `query_enc: [rows, H]`, `cand_enc: [rows * K, H]`, where
//! a "row" is one retrieval query: a set (default) or a cell (the reference's per-cell formulation).
//! Cell `c` belongs to row `c / (N / rows)`.

use super::layers::{norm_scale, norm_shift, Linear};
use super::{LogitNorm, ModelConfig, Noise, Selection};
use crate::cpu::attention::AttentionShape;
use crate::cpu::selection::TripletLayout;
use crate::scalar::Scalar;
use crate::tape::{ParamId, Params, Tape, Var};
use rand::Rng;

fn row_of_cells(cells: usize, rows: usize) -> Vec<usize> {
    let per_row = cells / rows;
    (0..cells).map(|c| c / per_row).collect()
}

/// Vanilla RAG: single-head cross-attention from every cell (query `basal + pert`) to its K
/// encoded candidates, with no learned selection; the result is the backbone input.
pub struct CrossAttention {
    q: Linear,
    k: Linear,
    v: Linear,
}

impl CrossAttention {
    pub fn new<T: Scalar>(params: &mut Params<T>, rng: &mut impl Rng, hidden: usize) -> Self {
        let mut lin = |name: &str| Linear::new(params, rng, name, hidden, hidden, false);
        CrossAttention { q: lin("context.q"), k: lin("context.k"), v: lin("context.v") }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: Scalar>(
        &self,
        tape: &mut Tape<T>,
        params: &Params<T>,
        basal: Var,
        query_enc: Var,
        cand_enc: Var,
        rows: usize,
        k: usize,
    ) -> Var {
        let (n, h) = (tape.shape(basal)[0], tape.shape(basal)[1]);
        let pert = tape.gather(query_enc, &row_of_cells(n, rows));
        let query = tape.add(basal, pert);
        let (q, kk, v) = (self.q.apply(tape, params, query), self.k.apply(tape, params, cand_enc), self.v.apply(tape, params, cand_enc));
        let shape = AttentionShape { sets: rows, cells: n / rows, keys: k, heads: 1, head_dim: h, causal: false };
        tape.attention(q, kk, v, shape)
    }
}

/// PT-RAG's stage two: for every cell and candidate the triplet `[h_ctrl; h_pert; h_k]` (3H),
/// LayerNorm, a scorer MLP `Linear(3H -> H) GELU Dropout Linear(H -> 2)` giving (exclude, include)
/// logits divided by their global standard deviation (`LogitNorm`), straight-through Gumbel-Softmax (hard 0/1
/// forward, soft gradient), and `z = sum_k w_k * Linear(3H -> H)(triplet_k)`, not normalised by the count.
pub struct Selector {
    norm_w: ParamId,
    norm_b: ParamId,
    score_hidden: Linear,
    score_out: Linear,
    proj: Linear,
}

/// `Linear(LayerNorm(triplet))` for every triplet, from the parts: with `Wg = W diag(gamma)`,
/// `part_x Wg_x^T` for each part's block of columns, `v = Wg 1` and `c = W beta + b`.
fn linear_on_triplets<T: Scalar>(
    tape: &mut Tape<T>,
    params: &Params<T>,
    linear: &Linear,
    (gamma, beta): (Var, Var),
    parts: [Var; 3],
    stats: Var,
    layout: TripletLayout,
) -> Var {
    let w = tape.param(params, linear.weight);
    let (out, width) = (tape.shape(w)[0], tape.shape(w)[1]);
    let h = width / 3;
    let scaled = tape.scale_cols(w, gamma);
    let mut x = 0;
    let projected = parts.map(|p| {
        let block = tape.slice_cols(scaled, x * h, h);
        x += 1;
        tape.matmul(p, block, false, true)
    });
    let ones = tape.constant(&[width, 1], vec![T::one(); width]);
    let v = tape.matmul(scaled, ones, false, false);
    let v = tape.reshape(v, &[out]);
    let beta = tape.reshape(beta, &[width, 1]);
    let c = tape.matmul(w, beta, false, false);
    let mut c = tape.reshape(c, &[out]);
    if let Some(b) = linear.bias {
        let b = tape.param(params, b);
        c = tape.add(c, b);
    }
    tape.triplet_assemble(projected, stats, v, c, layout)
}

/// PyTorch's LayerNorm epsilon and the floor of the logits' standard deviation (the reference's).
const LAYER_NORM_EPS: f64 = 1e-5;
const STD_FLOOR: f64 = 1e-6;

impl Selector {
    pub fn new<T: Scalar>(params: &mut Params<T>, rng: &mut impl Rng, hidden: usize) -> Self {
        let width = 3 * hidden;
        Selector {
            norm_w: norm_scale(params, "select.norm.weight", width),
            norm_b: norm_shift(params, "select.norm.bias", width),
            score_hidden: Linear::new(params, rng, "select.score_hidden", width, hidden, true),
            score_out: Linear::new(params, rng, "select.score_out", hidden, 2, true),
            proj: Linear::new(params, rng, "select.proj", width, hidden, true),
        }
    }

    /// Returns `(z [N, H], w [N * K, 1], logits [N * K, 2])`, the logits as scaled for the Gumbel-Softmax. Only `Selection::Sampled` applies dropout; hard selection
    /// breaks ties towards exclusion.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: Scalar>(
        &self,
        cfg: &ModelConfig,
        tape: &mut Tape<T>,
        params: &Params<T>,
        basal: Var,
        query_enc: Var,
        cand_enc: Var,
        rows: usize,
        selection: Selection,
    ) -> (Var, Var, Var) {
        let (n, k, h) = (tape.shape(basal)[0], cfg.top_k, tape.shape(basal)[1]);
        // The triplets [h_ctrl; h_pert; h_k] are never formed: their LayerNorm statistics come from
        // per-part row sums, and each linear layer on them from per-part products (see
        // `cpu::selection::triplet_assemble_forward`), which saves the (N K, 3H) tensors.
        let layout = TripletLayout { cells: n, rows, k };
        let parts = [basal, query_enc, cand_enc];
        let ones = tape.constant(&[h, 1], vec![T::one(); h]);
        let sums = parts.map(|p| tape.matmul(p, ones, false, false));
        let squares = parts.map(|p| {
            let squared = tape.mul(p, p);
            tape.matmul(squared, ones, false, false)
        });
        let stats = tape.triplet_stats(sums, squares, layout, 3 * h, LAYER_NORM_EPS);
        let norm = (tape.param(params, self.norm_w), tape.param(params, self.norm_b));
        let hidden = linear_on_triplets(tape, params, &self.score_hidden, norm, parts, stats, layout);
        let mut hidden = tape.gelu(hidden);
        if let Selection::Sampled(Noise { dropout: Some(mask), .. }) = selection {
            hidden = tape.dropout(hidden, *mask);
        }
        let logits = self.score_out.apply(tape, params, hidden);
        let logits = match cfg.logit_norm {
            LogitNorm::GlobalStd => tape.scale_by_std(logits, STD_FLOOR),
            LogitNorm::None => logits,
        };
        let choice = match selection {
            Selection::Sampled(noise) => {
                let noise = tape.gumbel_noise(&[n * k, 2], noise.gumbel_key);
                tape.gumbel_st(logits, noise, cfg.tau)
            }
            Selection::Hard => {
                let zeros = tape.constant(&[n * k, 2], vec![T::zero(); n * k * 2]);
                tape.gumbel_st(logits, zeros, cfg.tau)
            }
            // The Gumbel-max sample includes with probability softmax(logits) (whatever tau is).
            Selection::Expected => tape.softmax(logits),
        };
        let w = tape.slice_cols(choice, 1, 1);

        let projected = linear_on_triplets(tape, params, &self.proj, norm, parts, stats, layout);
        let weighted = tape.scale_rows(projected, w);
        (tape.sum_groups(weighted, k), w, logits)
    }
}
