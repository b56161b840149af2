//! Cosine top-K retrieval over perturbation embeddings (PT-RAG's stage one, also Vanilla RAG's).
//!
//! Shapes: `queries: [Q, E]`, `db: [N, E]`, both with L2-normalised rows (`normalise_rows`; an
//! all-zero row, the control's GenePT vector, stays zero and has similarity 0 to everything),
//! `allowed: [N]` (which rows form the retrieval database), `exclude: [Q]` (a row each query may not
//! retrieve, normally itself), outputs `indices, sims: [Q, K]`, best first. Ties go to the lower row
//! index, so the result is deterministic. Retrieval is not differentiated.

use super::gemm::matmul;

/// Scales every `dim`-wide row of `x` to unit L2 norm (zero rows are left zero).
pub fn normalise_rows(x: &mut [f32], dim: usize) {
    for row in x.chunks_mut(dim) {
        let norm = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn cosine_topk(
    queries: &[f32],
    db: &[f32],
    dim: usize,
    allowed: &[bool],
    exclude: &[Option<usize>],
    k: usize,
    indices: &mut [u32],
    sims: &mut [f32],
) {
    let (q, n) = (queries.len() / dim, db.len() / dim);
    assert!(queries.len() == q * dim && db.len() == n * dim && allowed.len() == n && exclude.len() == q, "cosine_topk: buffer sizes");
    assert!(indices.len() == q * k && sims.len() == q * k, "cosine_topk: output sizes");
    let mut all = vec![0.0f32; q * n];
    matmul(queries, db, &mut all, q, dim, n, false, true, false);
    let mut cand: Vec<(f32, u32)> = Vec::with_capacity(n);
    for (r, row) in all.chunks(n.max(1)).enumerate() {
        cand.clear();
        cand.extend(row.iter().enumerate().filter(|&(j, _)| allowed[j] && exclude[r] != Some(j)).map(|(j, &s)| (s, j as u32)));
        assert!(cand.len() >= k, "cosine_topk: {} candidates for top-{k}", cand.len());
        let better = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if k < cand.len() {
            cand.select_nth_unstable_by(k, better);
        }
        cand[..k].sort_unstable_by(better);
        for (i, &(s, j)) in cand[..k].iter().enumerate() {
            indices[r * k + i] = j;
            sims[r * k + i] = s;
        }
    }
}
