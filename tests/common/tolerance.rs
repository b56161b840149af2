//! Every tolerance of the test suite, each with the reason for its value. A comparison passes when
//! `|actual - expected| <= atol + rtol * |expected|` (`assert_close`, `Tol::holds`); a `f64` here
//! is a bound on `|actual - expected|` itself, or a relative one where its comment says so.
#![allow(dead_code)]

/// An absolute and a relative tolerance, as `assert_close` takes them.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

impl Tol {
    pub fn holds(self, actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= self.atol + self.rtol * expected.abs()
    }
}

const fn tol(atol: f64, rtol: f64) -> Tol {
    Tol { atol, rtol }
}

/// Bit for bit: copies, gathers, masks and comparisons, where nothing is rounded.
pub const EXACT: Tol = tol(0.0, 0.0);

// ---- An f32 kernel (the CPU's f32 path, or a CUDA kernel) against the f64 reference ----

/// One rounding per element, plus libm-vs-CUDA differences in exp/erf (a few ulp).
pub const F32_ELEMENTWISE: Tol = tol(1e-6, 1e-5);
/// Row reductions of a few hundred f32 terms in a different order from the reference.
pub const F32_REDUCTION: Tol = tol(1e-5, 1e-4);
/// Energy sums sqrt of 2,000-term squared distances over ~600 pairs, then differences of means.
pub const F32_ENERGY: Tol = tol(1e-4, 1e-4);
/// Online softmax (rescaled partial sums) and f32 dot products of up to 128 terms.
pub const F32_ATTENTION: Tol = tol(2e-5, 2e-4);
/// Gumbel noise `-ln(-ln u)` of the same counter-keyed `u`: one f32 rounding of `u` and two logs.
pub const F32_GUMBEL_NOISE: Tol = tol(1e-7, 1e-7);
/// The clipping norm and scale: the squares summed in f64 on both sides (in another order), the
/// scale then rounded to f32 (6e-8 relative).
pub const CLIP: Tol = tol(0.0, 1e-6);
/// Cosine similarities of 1,536-wide f32 rows against f64 ones.
pub const F32_COSINE: Tol = tol(1e-6, 1e-6);

// ---- The same f64 computation in another order or another formulation ----

/// A handful of operations against a value worked out by hand: a few ulp.
pub const F64_CLOSED_FORM: Tol = tol(1e-15, 0.0);
/// Tens to thousands of f64 operations against an exact or brute-force value (assignments,
/// eigen-decompositions, adjusted p-values, counts of a few hundred): ~1e-16 per operation.
pub const F64_EXACT: Tol = tol(1e-12, 0.0);
/// The same absolute bound as a plain number, for scalar checks.
pub const F64_EXACT_ABS: f64 = 1e-12;
/// PT-RAG's factorised triplet layer against the explicit one, in f64: the same sums split into
/// three parts.
pub const F64_FACTORISED: Tol = tol(1e-12, 1e-12);
/// A model run per set against per cell, in f64: the same predictions with sums over thousands of
/// terms in another order...
pub const F64_PER_SET_PREDICTIONS: Tol = tol(1e-12, 1e-10);
/// ...and its gradients, which sum those differences again over every cell.
pub const F64_PER_SET_GRADIENTS: Tol = tol(1e-12, 1e-9);
/// A ridge fit with a vanishing penalty (1e-12) against the interpolating solution: the penalty's
/// own bias and the system's conditioning.
pub const RIDGE_VANISHING_PENALTY: f64 = 1e-5;
/// Our p-values against scipy's, printed to 17 digits: statrs's erfc and incomplete beta are good
/// to about 1e-10.
pub const SCIPY_P_VALUE: Tol = tol(1e-9, 0.0);
/// Welch's t-test p against scipy's: the t distribution's CDF, good to about 1e-11.
pub const SCIPY_WELCH_P: Tol = tol(1e-10, 0.0);
/// PCA by power iteration against the exact decomposition of a small matrix: iterated to 1e-12, the
/// directions then only to its square root on nearly equal eigenvalues.
pub const PCA: Tol = tol(1e-9, 0.0);

// ---- Gradients ----

/// Central differences with h = 1e-6 in f64: truncation ~h^2 f''' ~ 1e-12 and rounding
/// ~1e-16 / h ~ 1e-10, so analytic and numeric gradients agree to ~1e-8.
pub const FINITE_DIFFERENCE: Tol = tol(1e-6, 1e-5);
/// The same through a whole model's loss (attention, norms, the energy's square roots): the
/// numeric side's rounding is larger, so a looser relative part.
pub const MODEL_FINITE_DIFFERENCE: Tol = tol(1e-6, 1e-4);

// ---- Against PyTorch (tests/parity.rs; the relative part relative to each tensor's largest value) ----

/// f64: the same formulas in another order (measured: within 1e-14).
pub const PARITY_F64: Tol = tol(1e-14, 1e-12);
/// f32, the training precision: ~1e-7 per operation grows through the layers and the energy's
/// square roots (measured: worst 5e-5 to 1e-4, the loss of the one-hot STATE case).
pub const PARITY_F32: Tol = tol(1e-7, 5e-4);

// ---- Whole f32 models ----

/// A model's f32 predictions computed twice in another order (permuted sets, another engine,
/// a checkpoint reloaded on the other device).
pub const F32_MODEL: Tol = tol(1e-5, 1e-4);
/// The first training steps on the CPU and the GPU path: the same updates, f32 rounding in
/// another order.
pub const TRAINING_FIRST_STEPS: Tol = tol(1e-6, 1e-3);
/// Later steps: Adam's first steps (of size lr whatever the gradient's scale) let the rounding
/// differences grow slowly, so losses and norms drift apart by up to ~2%.
pub const TRAINING_LATER_STEPS: Tol = tol(1e-6, 2e-2);
/// Predictions after those steps.
pub const TRAINING_PREDICTIONS: Tol = tol(1e-3, 2e-2);
/// The change that causal attention must make to predictions (a lower bound, not a tolerance):
/// well above `F32_MODEL`.
pub const CAUSAL_MAKES_A_DIFFERENCE: f64 = 1e-3;
/// A gradient accumulated on the GPU against the CPU's, relative to the tensor's largest entry.
pub const F32_GRADIENT_OF_MAX: f64 = 1e-4;

// ---- Stored and exchanged values ----

/// A value stored as f32 against its f64 source (scanpy's normalised matrix, GenePT vectors):
/// one rounding, 6e-8 relative; absolute for values of at most 1, else relative to `max(|value|, 1)`.
pub const F32_STORAGE: f64 = 1e-6;
/// Distributional metrics (PCA, W1, W2, energy, MMD) recomputed from f32 files against the run's
/// own f64 arrays, relative to `max(|value|, 1e-3)`: sums of thousands of rounded terms.
pub const F32_FILE_DISTRIBUTIONAL: f64 = 1e-5;
/// A figure recomputed from the same f64 values by another route (a baseline's shift, MSE, a
/// rate times its peak): a bound on the difference, absolute or relative as the check writes it.
pub const SAME_VALUES: f64 = 1e-9;
/// The norm of a unit GenePT vector as stored, summed in f32 over its entries.
pub const UNIT_NORM_F32: f64 = 1e-4;
/// A screen's effect in `screen.csv` (six decimals) against the norm recomputed from `pred.h5ad`'s
/// f32 cells: a loose bound, the two come from the same cells.
pub const SCREEN_EFFECT: f64 = 1e-3;

// ---- Statistics and counts ----

/// A frequency over 4,000 sampled selections against its expected weight: the binomial standard
/// error is at most 0.5 / sqrt(4000) = 0.008; five standard errors.
pub const SAMPLED_FREQUENCY: f64 = 0.04;
/// The reference's FLOPs against the paper's Table 7, relative: Table 7 averaged over test sets of
/// at most 64 cells (48 on average), which shrinks the attention term against our S = 64.
pub const TABLE7_FLOPS: f64 = 0.006;
/// Our PT-RAG FLOPs per cell against the 31.8 M the docs quote: that figure's rounding.
pub const QUOTED_FLOPS: f64 = 0.05e6;
