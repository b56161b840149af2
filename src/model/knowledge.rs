//! What the GenePT-based models know besides their weights: one GenePT vector per perturbation
//! (the control's is zero) and the retrieval database, the perturbations that stage one may return.

use crate::cpu::retrieval::{cosine_topk, normalise_rows};
use crate::{Error, Result};

pub struct Knowledge {
    pub dim: usize,
    /// `[P, dim]`, row `p` is perturbation `p`'s GenePT vector.
    pub vectors: Vec<f32>,
    normalised: Vec<f32>,
    /// `[P]`: whether perturbation `p` may be retrieved.
    pub in_database: Vec<bool>,
}

impl Knowledge {
    /// `in_database[p]` marks the retrievable perturbations; rows without a vector (all zeros) are
    /// never retrievable.
    pub fn new(vectors: Vec<f32>, dim: usize, mut in_database: Vec<bool>) -> Result<Self> {
        if dim == 0 || vectors.len() != in_database.len() * dim {
            return Err(Error::invalid(
                "GenePT table",
                format!("{} values for {} perturbations of dimension {dim}", vectors.len(), in_database.len()),
            ));
        }
        if let Some(p) = vectors.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid("GenePT table", format!("perturbation {} has a non-finite value", p / dim)));
        }
        let mut normalised = vectors.clone();
        normalise_rows(&mut normalised, dim);
        for (p, row) in vectors.chunks(dim).enumerate() {
            in_database[p] &= row.iter().any(|&v| v != 0.0);
        }
        Ok(Knowledge { dim, vectors, normalised, in_database })
    }

    pub fn database_size(&self) -> usize {
        self.in_database.iter().filter(|&&b| b).count()
    }

    /// Mean squared L2 norm of the vectors in the database (1 for GenePT's unit-norm embeddings).
    pub fn mean_squared_norm(&self) -> f64 {
        let (mut sum, mut n) = (0.0, 0usize);
        for (row, _) in self.vectors.chunks(self.dim).zip(&self.in_database).filter(|(_, &b)| b) {
            sum += row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            n += 1;
        }
        if n == 0 {
            1.0
        } else {
            sum / n as f64
        }
    }

    /// Cosine top-`k` of every query perturbation over the database, `exclude[i]` removed from the
    /// candidates of query `i`: `(indices, similarities)`, both `[queries, k]`, best first.
    pub fn retrieve(&self, queries: &[u32], exclude: &[Option<usize>], k: usize) -> (Vec<u32>, Vec<f32>) {
        let d = self.dim;
        let q: Vec<f32> = queries.iter().flat_map(|&p| self.normalised[p as usize * d..][..d].iter().copied()).collect();
        let (mut idx, mut sims) = (vec![0u32; queries.len() * k], vec![0.0f32; queries.len() * k]);
        cosine_topk(&q, &self.normalised, d, &self.in_database, exclude, k, &mut idx, &mut sims);
        (idx, sims)
    }
}
