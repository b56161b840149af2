//! Observed responses as model inputs (beyond the paper): the encoders of the candidates' and the
//! query's observed mean changes, and the candidates' similarity features.

use super::config::{CandidateContext, ModelConfig};
use super::knowledge::Knowledge;
use super::layers::{normal, Linear};
use crate::data::responses::ObservedResponses;
use crate::scalar::Scalar;
use crate::tape::{ParamId, Params, Tape, Var};
use crate::{Error, Result};
use rand::Rng;
use std::borrow::Cow;

/// `Linear(G + 1 -> H)` of an observed mean change and its observed indicator: one for the
/// candidates' changes in the set's cell type, one for the query's in the other cell types.
pub(super) struct ResponseEncoders {
    pub(super) candidate: Linear,
    pub(super) query: Linear,
    /// `[G]`, 1 at the start: the response readout's per-gene gate (`response_readout` only).
    pub(super) readout_gate: Option<ParamId>,
}

impl ResponseEncoders {
    /// The encoders `cfg.candidate_context` asks for (none for GenePT alone), over the fold's
    /// response table in `knowledge`.
    pub(super) fn new<T: Scalar>(
        cfg: &ModelConfig,
        knowledge: Option<&Knowledge>,
        params: &mut Params<T>,
        rng: &mut impl Rng,
    ) -> Result<Option<Self>> {
        let (g, h) = (cfg.genes, cfg.hidden);
        if cfg.candidate_context == CandidateContext::Genept {
            return Ok(None);
        }
        let Some(observed) = knowledge.and_then(|k| k.responses.as_ref()) else {
            return Err(Error::invalid(
                "candidate context",
                "observed responses need the fold's response table (`Knowledge::with_responses`)",
            ));
        };
        // Encodings of unit scale for a change of typical norm, as the GenePT encoder's.
        let sd = (1.0 / observed.rms_norm()) as f32;
        let mut encoder = |name: &str| {
            let lin = Linear::new(params, rng, name, g + 1, h, true);
            params.entries[lin.weight.0].value = std::sync::Arc::new(T::from_f32_slice(&normal(rng, h * (g + 1), sd)));
            lin
        };
        let (candidate, query) = (encoder("responses.candidate"), encoder("responses.query"));
        let readout_gate = cfg.response_readout.then(|| params.add("responses.readout_gate", &[g], vec![T::one(); g]));
        Ok(Some(ResponseEncoders { candidate, query, readout_gate }))
    }
}

/// Observed changes as an encoder's input `[rows, genes + 1]`: each change and a 1, or zeros for
/// one never observed.
pub(super) fn response_rows<'c, T: Scalar>(
    tape: &mut Tape<T>,
    changes: impl Iterator<Item = Option<Cow<'c, Vec<f64>>>>,
    genes: usize,
) -> Var {
    let mut values = Vec::new();
    let mut rows = 0;
    for change in changes {
        match change {
            Some(v) => values.extend(v.iter().map(|&x| T::f(x)).chain([T::one()])),
            None => values.extend(std::iter::repeat_n(T::zero(), genes + 1)),
        }
        rows += 1;
    }
    tape.constant(&[rows, genes + 1], values)
}

/// The similarity features `[rows * K, F]` of every query row's K candidates (see
/// `ModelConfig::similarity_features`), each standardised over the row's K (over the observed
/// candidates for the response cosine; 0 for the unobserved and for a row without spread).
pub(super) fn similarity_features(
    knowledge: &Knowledge,
    responses: Option<(&ObservedResponses, &[Option<Vec<f64>>])>,
    queries: &[u32],
    candidates: &[u32],
    k: usize,
    cell_type: impl Fn(usize) -> u32,
) -> Vec<f64> {
    let features = if responses.is_some() { 2 } else { 1 };
    let vector = |p: u32| &knowledge.vectors[p as usize * knowledge.dim..][..knowledge.dim];
    let mut out = vec![0.0; candidates.len() * features];
    for (r, &query) in queries.iter().enumerate() {
        let row = r * k..(r + 1) * k;
        // In f64 from the vectors (retrieval's f32 similarities would carry their rounding, which the
        // standardisation magnifies, into the features).
        let cosine: Vec<Option<f64>> = candidates[row.clone()].iter().map(|&c| Some(cosine_of(vector(query), vector(c)))).collect();
        let mut columns = vec![cosine];
        if let Some((observed, cross)) = responses {
            let response = |c: u32| Some(cosine_of(cross[r].as_ref()?, observed.change(c, cell_type(r))?));
            columns.push(candidates[row.clone()].iter().map(|&c| response(c)).collect());
        }
        for (f, column) in columns.iter().enumerate() {
            for (j, z) in standardised(column).into_iter().enumerate() {
                out[(row.start + j) * features + f] = z;
            }
        }
    }
    out
}

/// The cosine of `a` and `b`, computed in f64 (0 when either is zero).
fn cosine_of<A: Copy + Into<f64>>(a: &[A], b: &[A]) -> f64 {
    let f = |x: &A| -> f64 { (*x).into() };
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f(x) * f(y)).sum();
    let norms = (a.iter().map(|x| f(x) * f(x)).sum::<f64>() * b.iter().map(|x| f(x) * f(x)).sum::<f64>()).sqrt();
    if norms > 0.0 {
        dot / norms
    } else {
        0.0
    }
}

/// `(x - mean) / sd` over the present values (sd with ddof 0, floored at 1e-6), 0 for the absent.
fn standardised(values: &[Option<f64>]) -> Vec<f64> {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    if present.is_empty() {
        return vec![0.0; values.len()];
    }
    let mean = present.iter().sum::<f64>() / present.len() as f64;
    let sd = (present.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / present.len() as f64).sqrt().max(1e-6);
    values.iter().map(|v| v.map_or(0.0, |x| (x - mean) / sd)).collect()
}
