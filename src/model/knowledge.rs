//! What the GenePT-based models know besides their weights: one GenePT vector per perturbation
//! (the control's is zero), the retrieval database, the perturbations that stage one may return,
//! and (for `--candidate-context responses|both`) the fold's observed responses.

use crate::cpu::retrieval::{cosine_topk, normalise_rows};
use crate::data::responses::ObservedResponses;
use crate::{Error, Result};

pub struct Knowledge {
    pub dim: usize,
    /// `[P, dim]`, row `p` is perturbation `p`'s GenePT vector.
    pub vectors: Vec<f32>,
    normalised: Vec<f32>,
    /// `[P]`: whether perturbation `p` may be retrieved.
    pub in_database: Vec<bool>,
    /// The fold's training conditions' mean changes, for the observed-response context.
    pub responses: Option<ObservedResponses>,
    /// By `k`: see `retrieve`.
    neighbours: std::sync::Mutex<std::collections::HashMap<usize, std::sync::Arc<Neighbours>>>,
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
        Ok(Knowledge { dim, vectors, normalised, in_database, responses: None, neighbours: Default::default() })
    }

    /// The same knowledge with perturbations appended (`extra`: `[n, dim]` vectors, none of them
    /// retrievable): perturbations with a GenePT vector but no cells, for an in-silico screen.
    pub fn extended(self, extra: &[f32]) -> Result<Self> {
        let mut vectors = self.vectors;
        vectors.extend_from_slice(extra);
        let mut in_database = self.in_database;
        in_database.resize(vectors.len() / self.dim.max(1), false);
        Ok(Knowledge { responses: self.responses, ..Knowledge::new(vectors, self.dim, in_database)? })
    }

    pub fn with_responses(self, responses: ObservedResponses) -> Self {
        Knowledge { responses: Some(responses), ..self }
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

    /// Cosine top-`k` of every query perturbation over the database, the query itself removed from
    /// its candidates where `exclude_self[i]`: `(indices, similarities)`, both `[queries, k]`, best
    /// first (ties towards the lower index).
    ///
    /// The answers come from a table of every perturbation's top `k + 1`, computed once (all
    /// perturbations in one product) at the first call for this `k`: a step then does no
    /// similarity work at all (on a GPU, none on the host between two steps), and a query's answer
    /// does not depend on which other queries share its batch. Removing the query from its top
    /// `k + 1` (or the last one, if the query is not among them) gives its top `k` without it.
    pub fn retrieve(&self, queries: &[u32], exclude_self: &[bool], k: usize) -> (Vec<u32>, Vec<f32>) {
        assert_eq!(queries.len(), exclude_self.len(), "retrieve: one exclusion flag per query");
        let table = self.neighbours(k);
        let (mut idx, mut sims) = (Vec::with_capacity(queries.len() * k), Vec::with_capacity(queries.len() * k));
        for (&q, &exclude) in queries.iter().zip(exclude_self) {
            let row = q as usize * (k + 1);
            let (top, top_sims) = (&table.indices[row..][..k + 1], &table.sims[row..][..k + 1]);
            let skip = if exclude { top.iter().position(|&c| c == q).unwrap_or(k) } else { k };
            for i in (0..=k).filter(|&i| i != skip) {
                idx.push(top[i]);
                sims.push(top_sims[i]);
            }
        }
        (idx, sims)
    }

    /// Makes the table of every perturbation's top `k + 1` on `gpu` (the CUDA cosine top-K, the
    /// twin of the CPU one), so that a GPU run's `retrieve` reads it instead of computing it on the
    /// host: one launch over all perturbations. Ties go to the lower index on both; similarities
    /// may differ from the CPU's in the last bits (another summation order).
    pub fn compute_neighbours_on(&self, gpu: &crate::cuda::Gpu, k: usize) -> Result<()> {
        let p = self.in_database.len();
        let table = gpu.upload(&self.normalised)?;
        let allowed = gpu.upload(&self.in_database.iter().map(|&b| b as u8).collect::<Vec<u8>>())?;
        let exclude = gpu.upload(&vec![-1i32; p])?;
        let (mut indices, mut sims) = (gpu.zeros::<u32>(p * (k + 1))?, gpu.zeros::<f32>(p * (k + 1))?);
        crate::cuda::retrieval::cosine_topk(gpu, &table, &table, self.dim, &allowed, &exclude, k + 1, &mut indices, &mut sims)?;
        let neighbours = Neighbours { indices: gpu.download(&indices)?, sims: gpu.download(&sims)? };
        self.neighbours.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(k, std::sync::Arc::new(neighbours));
        Ok(())
    }

    /// The table of every perturbation's top `k + 1` neighbours (itself included when in the
    /// database), made at the first call for this `k` (on the host, unless `compute_neighbours_on`
    /// made it).
    fn neighbours(&self, k: usize) -> std::sync::Arc<Neighbours> {
        let mut tables = self.neighbours.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tables
            .entry(k)
            .or_insert_with(|| {
                let p = self.in_database.len();
                let (mut indices, mut sims) = (vec![0u32; p * (k + 1)], vec![0.0f32; p * (k + 1)]);
                cosine_topk(
                    &self.normalised,
                    &self.normalised,
                    self.dim,
                    &self.in_database,
                    &vec![None; p],
                    k + 1,
                    &mut indices,
                    &mut sims,
                );
                std::sync::Arc::new(Neighbours { indices, sims })
            })
            .clone()
    }
}

/// Every perturbation's top `k + 1` over the database: `[P, k + 1]` each, best first.
struct Neighbours {
    indices: Vec<u32>,
    sims: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The table's answers are the direct top-k with the query excluded (or not), including ties
    /// (duplicated vectors), queries outside the database and a query without a vector.
    #[test]
    fn retrieval_from_the_table_equals_direct_top_k() {
        let (p, dim, k) = (40, 6, 5);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut vectors: Vec<f32> = (0..p * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        vectors.copy_within(3 * dim..4 * dim, 7 * dim); // 3 and 7 tie for every query
        vectors[..dim].fill(0.0); // the control
        let in_database: Vec<bool> = (0..p).map(|i| i % 9 != 4).collect();
        let knowledge = Knowledge::new(vectors, dim, in_database).unwrap();
        let queries: Vec<u32> = (0..p as u32).chain([7, 3, 4]).collect();
        for exclude_self in [true, false] {
            let flags = vec![exclude_self; queries.len()];
            let (idx, sims) = knowledge.retrieve(&queries, &flags, k);
            let q: Vec<f32> = queries.iter().flat_map(|&i| knowledge.normalised[i as usize * dim..][..dim].to_vec()).collect();
            let exclude: Vec<Option<usize>> = queries.iter().map(|&i| exclude_self.then_some(i as usize)).collect();
            let (mut want_idx, mut want_sims) = (vec![0u32; queries.len() * k], vec![0.0f32; queries.len() * k]);
            cosine_topk(&q, &knowledge.normalised, dim, &knowledge.in_database, &exclude, k, &mut want_idx, &mut want_sims);
            assert_eq!(idx, want_idx, "exclude_self {exclude_self}");
            assert_eq!(sims, want_sims, "exclude_self {exclude_self}");
        }
    }

    /// A GPU run's neighbour table (the CUDA cosine top-K, here under the emulator) gives the
    /// answers the host's gives: the same candidates, similarities within float rounding.
    #[test]
    fn the_neighbour_table_made_on_a_gpu_answers_as_the_hosts() {
        let (p, dim, k) = (30, 8, 4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut vectors: Vec<f32> = (0..p * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        vectors[..dim].fill(0.0); // the control
        let in_database: Vec<bool> = (0..p).map(|i| i % 7 != 2).collect();
        let on_host = Knowledge::new(vectors.clone(), dim, in_database.clone()).unwrap();
        let on_gpu = Knowledge::new(vectors, dim, in_database).unwrap();
        let gpu = crate::cuda::Gpu::emulated(crate::cuda::ThreadOrder::Reverse).expect("the emulated kernels are built");
        on_gpu.compute_neighbours_on(&gpu, k).unwrap();
        let queries: Vec<u32> = (0..p as u32).collect();
        for exclude_self in [true, false] {
            let flags = vec![exclude_self; p];
            let ((idx_h, sims_h), (idx_g, sims_g)) = (on_host.retrieve(&queries, &flags, k), on_gpu.retrieve(&queries, &flags, k));
            assert_eq!(idx_g, idx_h, "exclude_self {exclude_self}");
            for (g, h) in sims_g.iter().zip(&sims_h) {
                assert!((g - h).abs() <= 1e-6 || (g.is_infinite() && g == h), "similarity {g} on the GPU, {h} on the host");
            }
        }
    }
}
