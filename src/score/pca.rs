//! Principal components of expression, fitted on training cells, for the distributional metrics.
//!
//! The covariance (`genes x genes`) is formed with the GEMM kernel; its leading eigenvectors come
//! from subspace iteration (a block of `k + 10` vectors multiplied by the covariance and
//! re-orthonormalised until the subspace stops moving), followed by a Rayleigh-Ritz step whose small
//! symmetric eigenproblem is solved by cyclic Jacobi rotations.

use crate::cpu::gemm::matmul;

pub struct Pca {
    pub genes: usize,
    pub mean: Vec<f64>,
    /// `[components, genes]`, orthonormal rows, by decreasing variance.
    pub components: Vec<f64>,
    /// The variance along each component.
    pub variance: Vec<f64>,
}

/// Eigen-decomposition of a small symmetric matrix `a: [n, n]` by cyclic Jacobi rotations:
/// `(eigenvalues, eigenvectors as rows)`, by decreasing eigenvalue.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    for _sweep in 0..100 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j].powi(2)).sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p][q].
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vpk, vqk) = (v[p * n + k], v[q * n + k]);
                    v[p * n + k] = c * vpk - s * vqk;
                    v[q * n + k] = s * vpk + c * vqk;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let vectors = order.iter().flat_map(|&i| v[i * n..(i + 1) * n].to_vec()).collect();
    (values, vectors)
}

/// Orthonormalises the rows of `q: [k, n]` in place (modified Gram-Schmidt, twice for stability).
fn orthonormalise_rows(q: &mut [f64], n: usize) {
    let k = q.len() / n;
    for _ in 0..2 {
        for i in 0..k {
            for j in 0..i {
                let dot: f64 = (0..n).map(|c| q[i * n + c] * q[j * n + c]).sum();
                for c in 0..n {
                    q[i * n + c] -= dot * q[j * n + c];
                }
            }
            let norm = (0..n).map(|c| q[i * n + c].powi(2)).sum::<f64>().sqrt();
            // A degenerate direction (rank-deficient data) is replaced by a unit vector later
            // orthogonalised again; with real data this does not happen.
            let norm = if norm > 1e-300 { norm } else { 1.0 };
            (0..n).for_each(|c| q[i * n + c] /= norm);
        }
    }
}

impl Pca {
    /// Fits `components` principal components to `cells: [n, genes]` (at most `genes`).
    pub fn fit(cells: &[f64], genes: usize, components: usize) -> Pca {
        let n = cells.len() / genes;
        let k = components.min(genes).min(n.max(1));
        let mean = super::metrics::mean_rows(cells, genes);
        let centred: Vec<f64> = cells.chunks(genes).flat_map(|r| r.iter().zip(&mean).map(|(x, m)| x - m)).collect();
        let mut cov = vec![0.0; genes * genes];
        matmul(&centred, &centred, &mut cov, genes, n, genes, true, false, false);
        cov.iter_mut().for_each(|c| *c /= (n.max(2) - 1) as f64);

        let block = (k + 10).min(genes);
        // Deterministic start: a fixed pseudo-random block.
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut q: Vec<f64> = (0..block * genes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        orthonormalise_rows(&mut q, genes);
        let mut next = vec![0.0; block * genes];
        for _ in 0..200 {
            // rows of Q times C (C symmetric)
            matmul(&q, &cov, &mut next, block, genes, genes, false, false, false);
            orthonormalise_rows(&mut next, genes);
            // converged when the leading k directions stop moving: |<q_i, next_i>| ~ 1
            let moved =
                (0..k).map(|i| 1.0 - (0..genes).map(|c| q[i * genes + c] * next[i * genes + c]).sum::<f64>().abs()).fold(0.0, f64::max);
            std::mem::swap(&mut q, &mut next);
            if moved < 1e-12 {
                break;
            }
        }
        // Rayleigh-Ritz: B = Q C Q^T, B = W diag W^T, components = W^T Q.
        let mut qc = vec![0.0; block * genes];
        matmul(&q, &cov, &mut qc, block, genes, genes, false, false, false);
        let mut b = vec![0.0; block * block];
        matmul(&qc, &q, &mut b, block, genes, block, false, true, false);
        let (values, w) = symmetric_eigen(&b, block);
        let mut comps = vec![0.0; block * genes];
        matmul(&w, &q, &mut comps, block, block, genes, false, false, false);
        comps.truncate(k * genes);
        Pca { genes, mean, components: comps, variance: values[..k].to_vec() }
    }

    /// The components as scanpy stores them in `varm["PCs"]`: `[genes, components]`, float32.
    pub fn loadings(&self) -> Vec<f32> {
        let k = self.n_components();
        (0..self.genes).flat_map(|g| (0..k).map(move |c| self.components[c * self.genes + g] as f32)).collect()
    }

    /// A PCA from `loadings: [genes, components]` (`varm["PCs"]`), centred at zero: the distances
    /// between projected clouds and the differences of their means do not depend on the centre.
    pub fn from_loadings(loadings: &[f32], genes: usize) -> Pca {
        let k = loadings.len() / genes.max(1);
        let components = (0..k).flat_map(|c| (0..genes).map(move |g| loadings[g * k + c] as f64)).collect();
        Pca { genes, mean: vec![0.0; genes], components, variance: vec![f64::NAN; k] }
    }

    pub fn n_components(&self) -> usize {
        self.variance.len()
    }

    /// Coordinates of `cells: [n, genes]` in the components: `[n, components]`.
    pub fn project(&self, cells: &[f64]) -> Vec<f64> {
        let (n, k) = (cells.len() / self.genes, self.n_components());
        let centred: Vec<f64> = cells.chunks(self.genes).flat_map(|r| r.iter().zip(&self.mean).map(|(x, m)| x - m)).collect();
        let mut out = vec![0.0; n * k];
        matmul(&centred, &self.components, &mut out, n, self.genes, k, false, true, false);
        out
    }
}
