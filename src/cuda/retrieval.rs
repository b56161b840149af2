//! Launchers for `kernels/retrieval.cu`, the twin of `src/cpu/retrieval.rs`: row normalisation and
//! the batched cosine top-K with self-exclusion.

use super::{check_int, check_len, kernels, Args, Buffer, Gpu, Launch};
use crate::{Error, Result};

const THREADS: u32 = 256;

/// Scales every `dim`-wide row of `x` to unit L2 norm in place (zero rows stay zero).
pub fn normalise_rows(gpu: &Gpu, x: &mut Buffer<f32>, dim: usize) -> Result<()> {
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(Error::Shape { op: "normalise_rows", why: format!("{} values in rows of {dim}", x.len()) });
    }
    check_int("normalise_rows", &[x.len()])?;
    let launch = Launch::new([x.len() / dim, 1, 1], THREADS, THREADS as usize / 32)?;
    gpu.launch(&kernels::NORMALISE_ROWS_F32, launch, Args::new().output(x).int(dim))
}

/// Top-`k` database rows by cosine similarity for every query, best first, ties to the lower row.
/// `allowed: [N]` is 0/1; `exclude: [Q]` is a row each query may not return, or -1. Slots that no
/// allowed row can fill (fewer than `k` candidates) get index `u32::MAX` and similarity `-inf`.
#[allow(clippy::too_many_arguments)]
pub fn cosine_topk(
    gpu: &Gpu,
    queries: &Buffer<f32>,
    db: &Buffer<f32>,
    dim: usize,
    allowed: &Buffer<u8>,
    exclude: &Buffer<i32>,
    k: usize,
    indices: &mut Buffer<u32>,
    sims: &mut Buffer<f32>,
) -> Result<()> {
    if dim == 0 || !queries.len().is_multiple_of(dim) || !db.len().is_multiple_of(dim) {
        return Err(Error::Shape {
            op: "cosine_topk",
            why: format!("{} query and {} database values in rows of {dim}", queries.len(), db.len()),
        });
    }
    let (q, n) = (queries.len() / dim, db.len() / dim);
    check_int("cosine_topk", &[queries.len(), db.len(), q * k])?;
    check_len("cosine_topk", "allowed", allowed, n)?;
    check_len("cosine_topk", "exclude", exclude, q)?;
    check_len("cosine_topk", "indices", indices, q * k)?;
    check_len("cosine_topk", "sims", sims, q * k)?;
    let launch = Launch::new([q, 1, 1], THREADS, dim + n + 2 * THREADS as usize / 32)?;
    let args = Args::new().input(queries).input(db).input(allowed).input(exclude).int(n).int(dim).int(k).output(indices).output(sims);
    gpu.launch(&kernels::COSINE_TOPK_F32, launch, args)
}
