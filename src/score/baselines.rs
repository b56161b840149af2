//! The baselines a perturbation model has to beat (Ahlmann-Eltze, Huber & Anders, Nature Methods
//! 2025; Csendes et al. 2025). Each predicts a condition's mean expression change in the target
//! cell type; its predicted cells are the paired control cells, moved so that their mean is the
//! control mean, plus that change: the distributional metrics apply to it as to a model, and its
//! mean is exactly the control mean plus the change. Without the centring, the few dozen paired
//! cells' own sampling noise adds about 0.03 to every baseline's MSE on the built-in data (the
//! `control` baseline: 0.114 instead of 0.082), noise the trained models learn to ignore. Nor are
//! they clamped at 0, which would bias the mean of the many zero entries upwards; `predict` clamps
//! when it writes files, as cell-eval expects. A baseline is meant at its strongest.
//!
//! Fitted per fold from the fold's training conditions and control cells only. The target cell
//! type's validation conditions choose the two hyper-parameters (the neighbours' k and the ridge
//! penalty); its test conditions are never read. "Mean change" is a condition's mean expression
//! minus the mean of all control cells of its cell type.

use super::metrics::{mean_rows, mse};
use crate::data::responses::{mean_of_vectors, ObservedResponses};
use crate::data::split::{Condition, Fold};
use crate::data::store::Store;
use crate::Result;
use serde::Serialize;
use std::collections::BTreeMap;

/// The baselines, in reading order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// No change: each real cell predicted by its paired control cell.
    Control,
    /// The mean change of the target cell type's training perturbations (each counts once).
    TrainingMean,
    /// The query's own mean change in the other cell types (training data in this protocol), averaged.
    CrossCellType,
    /// The mean change, in the target cell type, of the query's k nearest GenePT neighbours (cosine)
    /// among the target's training perturbations; k chosen on validation.
    Neighbours,
    /// Ridge regression from [GenePT PCs; cross-cell-type change PCs] to the target-cell-type
    /// change, fitted on the target's training perturbations; penalty chosen on validation.
    Linear,
    /// `linear` with its number of principal components per block chosen on validation as well
    /// (`COMPONENT_GRID`, jointly with the penalty); `linear` keeps `LINEAR_COMPONENTS`, so that
    /// published figures stay comparable.
    LinearPcs,
    /// `w * linear + (1 - w) * neighbours`, the weight chosen on validation (`BLEND_WEIGHTS`).
    LinearNeighbours,
}

impl Baseline {
    pub const ALL: [Baseline; 7] = [
        Baseline::Control,
        Baseline::TrainingMean,
        Baseline::CrossCellType,
        Baseline::Neighbours,
        Baseline::Linear,
        Baseline::LinearPcs,
        Baseline::LinearNeighbours,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Control => "control",
            Baseline::TrainingMean => "training-mean",
            Baseline::CrossCellType => "cross-cell-type",
            Baseline::Neighbours => "neighbours",
            Baseline::Linear => "linear",
            Baseline::LinearPcs => "linear-pcs",
            Baseline::LinearNeighbours => "linear-neighbours",
        }
    }
    /// `neighbours` and the ridges read GenePT vectors: a store prepared with `--genept none` has none of them.
    pub fn needs_genept(self) -> bool {
        matches!(self, Baseline::Neighbours | Baseline::Linear | Baseline::LinearPcs | Baseline::LinearNeighbours)
    }
    pub fn is_baseline(name: &str) -> bool {
        Baseline::ALL.iter().any(|b| b.name() == name)
    }
}

/// The neighbours' k is chosen among these (clamped to the training perturbations available).
pub const NEIGHBOUR_KS: [usize; 4] = [5, 10, 20, 32];
/// The ridge penalty is chosen among these, each times the number of training perturbations.
pub const RIDGE_PENALTIES: [f64; 7] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0];
/// Without validation conditions to choose on: the neighbours' k and the ridge penalty.
const DEFAULT_K: usize = 10;
const DEFAULT_PENALTY: f64 = 1.0;
/// Principal components kept of each feature block of `linear` (GenePT, cross-cell-type change).
pub const LINEAR_COMPONENTS: usize = 32;
/// `linear-pcs` chooses its components per block among these (at most the training perturbations).
pub const COMPONENT_GRID: [usize; 5] = [8, 16, 32, 64, 128];
/// `linear-neighbours` chooses the weight of `linear` among these.
pub const BLEND_WEIGHTS: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// What validation chose, with the validation mean-change MSE of every candidate value.
#[derive(Clone, Debug, Serialize)]
pub struct BaselineChoices {
    pub neighbours_k: usize,
    pub neighbours_val_mse: Vec<(usize, f64)>,
    pub ridge_penalty: f64,
    pub ridge_val_mse: Vec<(f64, f64)>,
    /// Components kept per block (GenePT, cross-cell-type change).
    pub linear_components: (usize, usize),
    /// `linear-pcs`: the components asked per block and the penalty chosen, with the validation
    /// MSE of every (components, penalty) pair.
    pub pcs_components: usize,
    pub pcs_penalty: f64,
    pub pcs_val_mse: Vec<((usize, f64), f64)>,
    /// `linear-neighbours`: the weight of `linear`, with the validation MSE of every weight.
    pub blend_weight: f64,
    pub blend_val_mse: Vec<(f64, f64)>,
}

pub struct Baselines {
    target: u32,
    /// Mean change of every training condition, and each cell type's control mean.
    observed: ObservedResponses,
    /// The target cell type's training perturbations (the control excluded), in fold order.
    target_train: Vec<u32>,
    /// Unit GenePT vectors `[perturbations, dim]` (zero rows stay zero).
    genept: Vec<f64>,
    dim: usize,
    training_mean: Vec<f64>,
    design: LinearDesign,
    ridge: Ridge,
    /// `linear-pcs`'s design and fit.
    pcs_design: LinearDesign,
    pcs_ridge: Ridge,
    pub choices: BaselineChoices,
}

fn unit_rows(v: &[f32], dim: usize) -> Vec<f64> {
    v.chunks(dim.max(1))
        .flat_map(|r| {
            let n = r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            r.iter().map(move |&x| if n > 0.0 { x as f64 / n } else { 0.0 })
        })
        .collect()
}

impl Baselines {
    /// Fits every baseline for `fold` (see the module doc for what each may read).
    pub fn fit(store: &Store, fold: &Fold) -> Result<Baselines> {
        let g = store.n_genes();
        let observed = ObservedResponses::fit(store, fold);
        let target = fold.target as u32;
        let target_train: Vec<u32> =
            fold.train.iter().filter(|c| c.cell_type == target && c.perturbation != store.control_index).map(|c| c.perturbation).collect();
        let training_mean =
            mean_of_vectors(target_train.iter().filter_map(|&p| observed.change(p, target)), g).unwrap_or_else(|| vec![0.0; g]);
        let dim = store.manifest.embed_dim;
        let genept = unit_rows(&store.genept_table(), dim);
        let mut b = Baselines {
            target,
            observed,
            target_train,
            genept,
            dim,
            training_mean,
            design: LinearDesign::default(),
            ridge: Ridge::default(),
            pcs_design: LinearDesign::default(),
            pcs_ridge: Ridge::default(),
            choices: BaselineChoices {
                neighbours_k: DEFAULT_K,
                neighbours_val_mse: vec![],
                ridge_penalty: DEFAULT_PENALTY,
                ridge_val_mse: vec![],
                linear_components: (0, 0),
                pcs_components: LINEAR_COMPONENTS,
                pcs_penalty: DEFAULT_PENALTY,
                pcs_val_mse: vec![],
                blend_weight: 1.0,
                blend_val_mse: vec![],
            },
        };
        // Validation chooses k and the penalty by the mean-change MSE over its conditions; with no
        // validation conditions, the defaults.
        let val: Vec<(u32, Vec<f64>)> = fold.val.iter().map(|c| (c.perturbation, b.observed.change_of(store, c))).collect();
        let val_mse = |predict: &dyn Fn(u32) -> Vec<f64>| -> f64 {
            val.iter().map(|(p, real)| mse(&predict(*p), real)).sum::<f64>() / val.len().max(1) as f64
        };
        if dim == 0 {
            return Ok(b);
        }
        let n_train = b.target_train.len().max(1);
        let mut ks: Vec<usize> = NEIGHBOUR_KS.iter().map(|&k| k.min(n_train)).collect();
        ks.dedup();
        if !val.is_empty() {
            b.choices.neighbours_val_mse = ks.iter().map(|&k| (k, val_mse(&|p| b.neighbours(p, k)))).collect();
        }
        b.choices.neighbours_k = best(&b.choices.neighbours_val_mse).unwrap_or(DEFAULT_K.min(n_train));
        b.design = LinearDesign::fit(&b, LINEAR_COMPONENTS);
        b.choices.linear_components = b.design.components(dim, g);
        if !val.is_empty() {
            let fit_at = |l: f64| b.design.ridge(&b, &b.target_train, l * n_train as f64);
            b.choices.ridge_val_mse =
                RIDGE_PENALTIES.iter().map(|&l| (l, val_mse(&|p| fit_at(l).predict(&b.design.features(&b, p))))).collect();
        }
        b.choices.ridge_penalty = best(&b.choices.ridge_val_mse).unwrap_or(DEFAULT_PENALTY);
        b.ridge = b.design.ridge(&b, &b.target_train, b.choices.ridge_penalty * n_train as f64);
        (b.pcs_design, b.pcs_ridge) = (b.design.clone(), b.ridge.clone());
        (b.choices.pcs_components, b.choices.pcs_penalty) = (LINEAR_COMPONENTS, b.choices.ridge_penalty);
        if !val.is_empty() {
            // `linear-pcs`: every (components, penalty) pair on validation.
            let mut scores = Vec::new();
            for components in COMPONENT_GRID {
                let design = LinearDesign::fit(&b, components);
                for &l in &RIDGE_PENALTIES {
                    let ridge = design.ridge(&b, &b.target_train, l * n_train as f64);
                    scores.push(((components, l), val_mse(&|p| ridge.predict(&design.features(&b, p)))));
                }
            }
            b.choices.pcs_val_mse = scores;
            if let Some((components, l)) = best(&b.choices.pcs_val_mse) {
                b.pcs_design = LinearDesign::fit(&b, components);
                b.pcs_ridge = b.pcs_design.ridge(&b, &b.target_train, l * n_train as f64);
                (b.choices.pcs_components, b.choices.pcs_penalty) = (components, l);
            }
            // `linear-neighbours`: the weight of `linear` against the chosen neighbours.
            let k = b.choices.neighbours_k;
            b.choices.blend_val_mse =
                BLEND_WEIGHTS.iter().map(|&w| (w, val_mse(&|p| blend(w, &b.shift(Baseline::Linear, p), &b.neighbours(p, k))))).collect();
            b.choices.blend_weight = best(&b.choices.blend_val_mse).unwrap_or(1.0);
        }
        Ok(b)
    }

    /// The baselines this store allows (without GenePT vectors, not `neighbours` or `linear`).
    pub fn available(&self) -> Vec<Baseline> {
        Baseline::ALL.into_iter().filter(|b| self.dim > 0 || !b.needs_genept()).collect()
    }

    /// The predicted mean change of `perturbation` in the target cell type.
    pub fn shift(&self, baseline: Baseline, perturbation: u32) -> Vec<f64> {
        match baseline {
            Baseline::Control => vec![0.0; self.training_mean.len()],
            Baseline::TrainingMean => self.training_mean.clone(),
            Baseline::CrossCellType => self.cross_cell_type(perturbation).unwrap_or_else(|| self.training_mean.clone()),
            Baseline::Neighbours => self.neighbours(perturbation, self.choices.neighbours_k),
            Baseline::Linear => self.ridge.predict(&self.design.features(self, perturbation)),
            Baseline::LinearPcs => self.pcs_ridge.predict(&self.pcs_design.features(self, perturbation)),
            Baseline::LinearNeighbours => blend(
                self.choices.blend_weight,
                &self.shift(Baseline::Linear, perturbation),
                &self.neighbours(perturbation, self.choices.neighbours_k),
            ),
        }
    }

    /// Per baseline, the mean over `conditions` (of the target cell type) of the MSE between its
    /// predicted and the observed mean change: `train`'s figure beside the model's mean-change MSE.
    pub fn mean_change_mse(&self, store: &Store, conditions: &[Condition]) -> Vec<(Baseline, f64)> {
        let observed: Vec<(u32, Vec<f64>)> = conditions.iter().map(|c| (c.perturbation, self.observed.change_of(store, c))).collect();
        self.available()
            .into_iter()
            .map(|b| (b, observed.iter().map(|(p, real)| mse(&self.shift(b, *p), real)).sum::<f64>() / observed.len().max(1) as f64))
            .collect()
    }

    /// Predicted cells: the paired control cells `[n, genes]` centred on the control mean, plus
    /// the baseline's shift (not clamped; see the module doc).
    pub fn predict_cells(&self, baseline: Baseline, perturbation: u32, paired: &[f64]) -> Vec<f64> {
        self.cells_with_shift(&self.shift(baseline, perturbation), paired)
    }

    /// The paired control cells `[n, genes]` centred on the control mean, plus `shift`: how every
    /// baseline (and oracle) turns a predicted mean change into cells.
    pub fn cells_with_shift(&self, shift: &[f64], paired: &[f64]) -> Vec<f64> {
        let g = shift.len().max(1);
        let paired_mean = mean_rows(paired, g);
        let offset: Vec<f64> =
            shift.iter().zip(&self.observed.control_mean[self.target as usize]).zip(&paired_mean).map(|((s, c), m)| s + c - m).collect();
        paired.chunks(g).flat_map(|r| r.iter().zip(&offset).map(|(x, o)| x + o)).collect()
    }

    /// A condition's observed mean change (its mean minus its cell type's control mean).
    pub fn observed_change(&self, store: &Store, c: &Condition) -> Vec<f64> {
        self.observed.change_of(store, c)
    }

    /// The target cell type's training perturbations, each with its observed mean change there.
    pub fn target_training_changes(&self) -> impl Iterator<Item = (u32, &Vec<f64>)> + '_ {
        self.target_train.iter().filter_map(|&p| self.observed.change(p, self.target).map(|c| (p, c)))
    }

    /// The mean change of the target cell type's training perturbations (`training-mean`).
    pub fn training_mean(&self) -> &[f64] {
        &self.training_mean
    }

    /// The query's observed mean change averaged over the other cell types; None if never observed.
    fn cross_cell_type(&self, p: u32) -> Option<Vec<f64>> {
        self.observed.cross_cell_type(p, self.target)
    }

    /// `linear` refitted at another penalty (times the number of training perturbations).
    pub fn linear_at(&self, p: u32, penalty: f64) -> Vec<f64> {
        self.design.ridge(self, &self.target_train, penalty * self.target_train.len().max(1) as f64).predict(&self.design.features(self, p))
    }

    /// `linear`'s prediction of each training perturbation of the target cell type by a ridge that
    /// did not see it: the perturbations in `groups` interleaved groups, each predicted by a fit on
    /// the others. That fit's penalty is chosen among `RIDGE_PENALTIES` by leave-one-group-out over
    /// the other groups alone, so a perturbation's own change reaches neither its fit nor its
    /// penalty. The feature projections stay those of all training perturbations (they read
    /// features, never the target cell type's changes).
    pub fn linear_cross_fitted(&self, groups: usize) -> Vec<(u32, Vec<f64>)> {
        let n = self.target_train.len();
        let groups = groups.clamp(1, n.max(1));
        let in_groups = |keep: &dyn Fn(usize) -> bool| -> Vec<u32> {
            self.target_train.iter().enumerate().filter(|(i, _)| keep(i % groups)).map(|(_, &p)| p).collect()
        };
        let change = |p: u32| self.observed.change(p, self.target).expect("a training perturbation");
        let fit = |perts: &[u32], penalty: f64| self.design.ridge(self, perts, penalty * perts.len().max(1) as f64);
        let predict = |ridge: &Ridge, p: u32| ridge.predict(&self.design.features(self, p));
        let mut out = Vec::with_capacity(n);
        for held in 0..groups {
            // Leave-one-group-out error over the kept groups (the default penalty with fewer than two).
            let inner_error = |penalty: f64| -> f64 {
                (0..groups)
                    .filter(|&inner| inner != held)
                    .map(|inner| {
                        let ridge = fit(&in_groups(&|g| g != held && g != inner), penalty);
                        in_groups(&|g| g == inner).iter().map(|&p| mse(&predict(&ridge, p), change(p))).sum::<f64>()
                    })
                    .sum()
            };
            let penalty = match groups > 2 {
                true => best(&RIDGE_PENALTIES.iter().map(|&l| (l, inner_error(l))).collect::<Vec<_>>()).unwrap_or(DEFAULT_PENALTY),
                false => DEFAULT_PENALTY,
            };
            let ridge = fit(&in_groups(&|g| g != held), penalty);
            out.extend(in_groups(&|g| g == held).into_iter().map(|p| (p, predict(&ridge, p))));
        }
        out
    }

    /// The mean target-cell-type change of the k training perturbations nearest to `p` in GenePT
    /// cosine (`p` itself excluded; ties by index).
    pub fn neighbours(&self, p: u32, k: usize) -> Vec<f64> {
        let row = |i: u32| &self.genept[i as usize * self.dim..(i as usize + 1) * self.dim];
        let q = row(p);
        let mut scored: Vec<(f64, u32)> =
            self.target_train.iter().filter(|&&c| c != p).map(|&c| (row(c).iter().zip(q).map(|(a, b)| a * b).sum::<f64>(), c)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        mean_of_vectors(
            scored.iter().take(k).map(|(_, c)| self.observed.change(*c, self.target).expect("a training perturbation")),
            self.training_mean.len(),
        )
        .unwrap_or_else(|| self.training_mean.clone())
    }
}

/// The interleaved groups in which `linear_for_every_condition` cross-fits a cell type's training
/// perturbations.
pub const CROSS_FIT_GROUPS: usize = 5;

/// `linear`'s predicted mean change for every condition a model of `fold` trains or is evaluated
/// on, by (perturbation, cell type): what `--output-anchor linear` adds to the prediction. Each
/// cell type gets its own ridge with the same features as the target's baseline (its GenePT and
/// cross-cell-type features). A training condition's prediction is cross-fitted
/// (`Baselines::linear_cross_fitted` over `CROSS_FIT_GROUPS`): a fit that saw it would hand the
/// model a prediction as good as its own target, better than any it gets at test. The target's
/// validation and test perturbations get the baseline itself, `linear`; the control, no change.
/// Reads what the baselines read, so never a test cell.
pub fn linear_for_every_condition(store: &Store, fold: &Fold) -> Result<BTreeMap<(u32, u32), Vec<f64>>> {
    let target = Baselines::fit(store, fold)?;
    let mut out = BTreeMap::new();
    for cell_type in 0..fold.controls.len() {
        let own;
        let b = if cell_type == fold.target {
            &target
        } else {
            let there = Fold { target: cell_type, train: fold.train.clone(), val: vec![], test: vec![], controls: fold.controls.clone() };
            own = Baselines::fit(store, &there)?;
            &own
        };
        for (p, change) in b.linear_cross_fitted(CROSS_FIT_GROUPS) {
            out.insert((p, cell_type as u32), change);
        }
    }
    for c in fold.val.iter().chain(&fold.test) {
        out.insert((c.perturbation, c.cell_type), target.shift(Baseline::Linear, c.perturbation));
    }
    // The control sets: no change.
    for cell_type in 0..fold.controls.len() as u32 {
        out.insert((store.control_index, cell_type), vec![0.0; store.n_genes()]);
    }
    Ok(out)
}

/// `w * a + (1 - w) * b`.
fn blend(w: f64, a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| w * x + (1.0 - w) * y).collect()
}

/// The value (first of a tie) with the smallest finite validation error.
fn best<T: Copy>(scores: &[(T, f64)]) -> Option<T> {
    scores.iter().filter(|(_, e)| e.is_finite()).min_by(|a, b| a.1.total_cmp(&b.1)).map(|(v, _)| *v)
}

/// A projection onto leading principal components, fitted through the `n x n` Gram matrix (few
/// rows of high dimension), scaled so that the block's coordinates have a total variance of 1 over
/// the training rows: two blocks weigh alike in the ridge, and the penalty is on a fixed scale.
#[derive(Clone, Default)]
struct Projection {
    dims: usize,
    mean: Vec<f64>,
    /// `[components, dims]`, orthonormal rows, already scaled by `1 / sqrt(total variance)`.
    directions: Vec<f64>,
}

impl Projection {
    fn fit(rows: &[f64], dims: usize, components: usize) -> Projection {
        let n = rows.len() / dims.max(1);
        if n < 2 {
            return Projection { dims, mean: vec![0.0; dims], directions: vec![] };
        }
        let mean = mean_rows(rows, dims);
        let centred: Vec<f64> = rows.chunks(dims).flat_map(|r| r.iter().zip(&mean).map(|(x, m)| x - m)).collect();
        let mut gram = vec![0.0; n * n];
        crate::cpu::gemm::matmul(&centred, &centred, &mut gram, n, dims, n, false, true, false);
        let (values, vectors) = super::pca::symmetric_eigen(&gram, n);
        // the Gram eigenvalues sum to n times the total variance
        let total: f64 = values.iter().filter(|&&v| v > 0.0).sum::<f64>() / n as f64;
        let keep = values.iter().take(components).filter(|&&v| v > 1e-10 * values[0].max(1e-300)).count();
        let mut directions = vec![0.0; keep * dims];
        for (i, dir) in directions.chunks_mut(dims).enumerate() {
            // v_i = X^T u_i / sqrt(lambda_i) is the unit direction; then scaled for the block weight.
            let scale = 1.0 / (values[i].sqrt() * total.sqrt());
            for (j, row) in centred.chunks(dims).enumerate() {
                let u = vectors[i * n + j] * scale;
                dir.iter_mut().zip(row).for_each(|(d, x)| *d += u * x);
            }
        }
        Projection { dims, mean, directions }
    }
    fn project(&self, x: &[f64]) -> Vec<f64> {
        self.directions.chunks(self.dims.max(1)).map(|d| d.iter().zip(x).zip(&self.mean).map(|((d, x), m)| d * (x - m)).sum()).collect()
    }
}

/// `linear`'s features: [GenePT projection; cross-cell-type change projection].
#[derive(Clone, Default)]
struct LinearDesign {
    genept: Projection,
    cross: Projection,
}

impl LinearDesign {
    /// The projections onto at most `components` principal components per block.
    fn fit(b: &Baselines, components: usize) -> LinearDesign {
        let g = b.training_mean.len();
        let genept: Vec<f64> =
            b.target_train.iter().flat_map(|&p| b.genept[p as usize * b.dim..(p as usize + 1) * b.dim].to_vec()).collect();
        let cross: Vec<f64> = b.target_train.iter().flat_map(|&p| b.cross_cell_type(p).unwrap_or_else(|| vec![0.0; g])).collect();
        LinearDesign { genept: Projection::fit(&genept, b.dim, components), cross: Projection::fit(&cross, g, components) }
    }
    fn components(&self, dim: usize, genes: usize) -> (usize, usize) {
        (self.genept.directions.len() / dim.max(1), self.cross.directions.len() / genes.max(1))
    }
    /// A perturbation never observed in another cell type gets the training perturbations' mean
    /// cross-cell-type change (a zero coordinate in that block).
    fn features(&self, b: &Baselines, p: u32) -> Vec<f64> {
        let e = self.genept.project(&b.genept[p as usize * b.dim..(p as usize + 1) * b.dim]);
        let x = b
            .cross_cell_type(p)
            .map(|v| self.cross.project(&v))
            .unwrap_or_else(|| vec![0.0; self.cross.directions.len() / self.cross.dims.max(1)]);
        [e, x].concat()
    }
    /// Ridge with an intercept, `W = (F^T F + penalty I)^-1 F^T (Y - mean Y)` over centred
    /// features, fitted on the target cell type's training perturbations `perts`.
    fn ridge(&self, b: &Baselines, perts: &[u32], penalty: f64) -> Ridge {
        let g = b.training_mean.len();
        let change = |p: u32| b.observed.change(p, b.target).expect("a training perturbation");
        let target_mean = mean_of_vectors(perts.iter().map(|&p| change(p)), g).unwrap_or_else(|| b.training_mean.clone());
        let rows: Vec<Vec<f64>> = perts.iter().map(|&p| self.features(b, p)).collect();
        let f = rows.first().map_or(0, |r| r.len());
        let n = rows.len();
        if n == 0 || f == 0 {
            return Ridge { feature_mean: vec![0.0; f], target_mean, weights: vec![0.0; f * g] };
        }
        let feature_mean = mean_rows(&rows.concat(), f);
        let x: Vec<f64> = rows.iter().flat_map(|r| r.iter().zip(&feature_mean).map(|(v, m)| v - m)).collect();
        let y: Vec<f64> = perts.iter().flat_map(|&p| change(p).iter().zip(&target_mean).map(|(v, m)| v - m)).collect();
        let mut a = vec![0.0; f * f];
        crate::cpu::gemm::matmul(&x, &x, &mut a, f, n, f, true, false, false);
        (0..f).for_each(|i| a[i * f + i] += penalty);
        let mut rhs = vec![0.0; f * g];
        crate::cpu::gemm::matmul(&x, &y, &mut rhs, f, n, g, true, false, false);
        let weights = cholesky_solve(&a, f, &rhs, g);
        Ridge { feature_mean, target_mean, weights }
    }
}

#[derive(Clone, Default)]
struct Ridge {
    feature_mean: Vec<f64>,
    target_mean: Vec<f64>,
    /// `[features, genes]`
    weights: Vec<f64>,
}

impl Ridge {
    fn predict(&self, features: &[f64]) -> Vec<f64> {
        let mut out = self.target_mean.clone();
        let g = out.len();
        for ((x, m), w) in features.iter().zip(&self.feature_mean).zip(self.weights.chunks(g.max(1))) {
            out.iter_mut().zip(w).for_each(|(o, w)| *o += (x - m) * w);
        }
        out
    }
}

/// Solves `A X = B` for a symmetric positive definite `a: [n, n]` and `b: [n, m]` (Cholesky).
fn cholesky_solve(a: &[f64], n: usize, b: &[f64], m: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            l[i * n + j] = if i == j { s.max(1e-300).sqrt() } else { s / l[j * n + j] };
        }
    }
    let mut x = b.to_vec();
    for c in 0..m {
        for i in 0..n {
            let s = x[i * m + c] - (0..i).map(|k| l[i * n + k] * x[k * m + c]).sum::<f64>();
            x[i * m + c] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s = x[i * m + c] - (i + 1..n).map(|k| l[k * n + i] * x[k * m + c]).sum::<f64>();
            x[i * m + c] = s / l[i * n + i];
        }
    }
    x
}
