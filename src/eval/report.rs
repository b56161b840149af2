//! `evaluate`: every test condition of one or more run directories through the paper's metrics,
//! with the five baselines of `baselines` (each fitted per fold on training data), summarised per
//! model with Mann-Whitney U tests between every pair of models and baselines and
//! Benjamini-Hochberg over all tests.

use super::figures::{curves_svg, distributions_svg, jaccard_svg, planted_svg, read_curve, Curve};
use crate::score::baselines::{Baseline, BaselineChoices, Baselines};
use crate::score::metrics::{deg_mask, energy_distance, mae, mean_rows, mmd_rbf, mse, pearson, spearman, wasserstein, DegRule};
// The rows of a report, here for the modules that read them (figures, learning curves).
use crate::data::output::OutputSet;
use crate::data::store::Store;
use crate::score::metrics::{scores, Metric};
pub use crate::score::metrics::{ConditionRow, METRICS};
use crate::score::oracles::{Oracle, StoreTruth};
use crate::score::pca::Pca;
use crate::score::planted::{planted_metrics, PlantedMetrics, PlantedTruth};
use crate::score::stats::{benjamini_hochberg, mann_whitney_u, significance_mark, wilcoxon_signed_rank};
use crate::train::run::{fold_dirs, TrainedRun};
use crate::train::run_dir::RunRecord;
use crate::Result;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub deg_rule: DegRule,
    pub pca_components: usize,
    /// Training cells sampled to fit the PCA.
    pub pca_cells: usize,
    /// Compatibility: W1, W2, energy and MMD as the mean over principal components of 1-D
    /// distances (how the paper's evaluator computed them), instead of between the clouds.
    pub per_component: bool,
    /// What the PCA is fitted on, as the report says it.
    pub pca_fitted_on: &'static str,
    /// Draws of paired control cells a model's predicted mean change is averaged over
    /// (`Trainer::predict_condition_drawn`); baselines and oracles are exact and need none.
    pub draws: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            deg_rule: DegRule::Paper,
            pca_components: 50,
            pca_cells: 4096,
            per_component: false,
            pca_fitted_on: "training cells",
            draws: crate::train::DEFAULT_EVAL_DRAWS,
        }
    }
}

/// The metrics of one condition: predicted and real cells `[n, genes]`, all control cells of the
/// cell type `[m, genes]`; in the order of `METRICS`. `mean_pred` replaces the predicted cells'
/// mean where the mean-change metrics read it (a model's mean over several control draws,
/// `Trainer::predict_condition_drawn`); `truth`, the planted change, gives the truth metrics.
pub fn condition_metrics(
    pred: &[f64],
    real: &[f64],
    controls: &[f64],
    genes: usize,
    pca: &Pca,
    opts: &EvalOptions,
    means: MeanInputs,
) -> Result<Vec<f64>> {
    let rule = opts.deg_rule;
    let degs = deg_mask(real, controls, genes, rule);
    let p = means.mean_pred.map_or_else(|| mean_rows(pred, genes), <[f64]>::to_vec);
    let (ctrl, r) = (mean_rows(controls, genes), mean_rows(real, genes));
    let pick = |m: &[f64]| m.iter().zip(&ctrl).zip(&degs).filter(|(_, &d)| d).map(|((x, c), _)| x - c).collect::<Vec<f64>>();
    let (dp, dr) = (pick(&p), pick(&r));
    let (pp, rp) = (pca.project(pred), pca.project(real));
    let k = pca.n_components();
    let [w1, w2, energy, mmd] = if opts.per_component { per_component_distances(&pp, &rp, k)? } else { cloud_distances(&pp, &rp, k)? };
    let m = mse(&p, &r);
    let predicted_change: Vec<f64> = p.iter().zip(&ctrl).map(|(x, c)| x - c).collect();
    let (mse_truth, pearson_truth) = match means.truth {
        Some(t) => {
            let on_degs = |v: &[f64]| v.iter().zip(&degs).filter(|(_, &d)| d).map(|(x, _)| *x).collect::<Vec<f64>>();
            (mse(&predicted_change, t), pearson(&on_degs(&predicted_change), &on_degs(t)))
        }
        None => (f64::NAN, f64::NAN),
    };
    let value = |metric: &Metric| -> Result<f64> {
        Ok(match metric.name {
            "pearson_deg" => pearson(&dp, &dr),
            "spearman_deg" => spearman(&dp, &dr),
            "mse" => m,
            "rmse" => m.sqrt(),
            "mae" => mae(&p, &r),
            "mse_pca" => mse(&mean_rows(&pp, k), &mean_rows(&rp, k)),
            "w1" => w1,
            "w2" => w2,
            "energy" => energy,
            "mmd" => mmd,
            "mse_truth" => mse_truth,
            "pearson_deg_truth" => pearson_truth,
            "degs" => degs.iter().filter(|&&d| d).count() as f64,
            other => {
                return Err(crate::Error::invalid("metric", format!("`{other}` is in METRICS but condition_metrics does not compute it")))
            }
        })
    };
    METRICS.iter().map(value).collect()
}

/// What `condition_metrics` reads besides the cells: the predicted mean, when it is not the
/// predicted cells' own, and the planted change, on synthetic stores that have it.
#[derive(Clone, Copy, Default)]
pub struct MeanInputs<'a> {
    pub mean_pred: Option<&'a [f64]>,
    pub truth: Option<&'a [f64]>,
}

/// W1, W2, energy distance and MMD between two clouds `[n, k]`.
fn cloud_distances(x: &[f64], y: &[f64], k: usize) -> Result<[f64; 4]> {
    let (w1, w2) = wasserstein(x, y, k)?;
    Ok([w1, w2, energy_distance(x, y, k), mmd_rbf(x, y, k)])
}

/// The same four, each the mean over the `k` coordinates of its 1-D value.
pub fn per_component_distances(x: &[f64], y: &[f64], k: usize) -> Result<[f64; 4]> {
    let mut sum = [0.0; 4];
    for c in 0..k {
        let column = |v: &[f64]| v.chunks(k).map(|r| r[c]).collect::<Vec<f64>>();
        let d = cloud_distances(&column(x), &column(y), 1)?;
        sum.iter_mut().zip(d).for_each(|(s, d)| *s += d / k as f64);
    }
    Ok(sum)
}

fn rows_f64(store: &Store, cells: impl Iterator<Item = u32>) -> Vec<f64> {
    let g = store.n_genes();
    let mut row = vec![0.0f32; g];
    let mut out = Vec::new();
    for c in cells {
        store.expression_row(c as usize, &mut row);
        out.extend(row.iter().map(|&v| v as f64));
    }
    out
}
fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The PCA of a fold's evaluation: fitted on `pca_cells` training cells of the fold drawn with a
/// fixed seed (so `predict` can write the same one into `real.h5ad`).
pub fn fold_pca(store: &Store, fold: &crate::data::split::Fold, opts: &EvalOptions) -> Pca {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x9CA);
    let train = &fold.train;
    let sample = (0..opts.pca_cells).map(|_| {
        let c = &train[rng.gen_range(0..train.len())];
        c.cells[rng.gen_range(0..c.cells.len())]
    });
    Pca::fit(&rows_f64(store, sample), store.n_genes(), opts.pca_components)
}

/// The fold directories of all `run_dirs` (a run itself, or one per cell type for an `all` run).
pub fn all_folds(run_dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(run_dirs.iter().map(|d| fold_dirs(d)).collect::<Result<Vec<_>>>()?.concat())
}

/// The retrieval records of the PT-RAG runs among `folds` (fold directories, see `all_folds`).
pub fn pt_rag_records(folds: &[PathBuf]) -> Result<Vec<crate::score::retrieval::RetrievalRecord>> {
    let mut out = Vec::new();
    for dir in folds {
        let path = dir.join("retrieval-test.jsonl");
        // The paper's PT-RAG only: a variant's selection is another model's (its own rows are in the planted-truth table).
        if RunRecord::read(dir)?.train.model.variant_name() == crate::model::ModelKind::PtRag.name() && path.exists() {
            out.extend(crate::score::retrieval::read_records(&path)?);
        }
    }
    Ok(out)
}

/// Per-condition metrics of every model and the baselines (`baselines`: once per data, split,
/// target and seed), and on stores with planted means the oracles, over fold directories
/// (`all_folds`).
pub fn evaluate_runs(folds: &[PathBuf], opts: &EvalOptions, progress: bool) -> Result<Evaluation> {
    let mut rows = Vec::new();
    let mut choices = BTreeMap::new();
    let mut truth_notes = BTreeMap::new();
    let mut baselines_done: Vec<(PathBuf, PathBuf, String, u64)> = Vec::new();
    for dir in folds {
        let run = TrainedRun::open(dir)?;
        let (record, store) = (&run.record, &run.store);
        let trainer = run.trainer()?;
        let (g, target) = (store.n_genes(), trainer.cfg.target_cell_type.clone());
        let ct = trainer.fold.target;
        let model = trainer.cfg.model.variant_name();
        if progress {
            eprintln!("evaluating {model} on {target} ({} test conditions) from {}", trainer.fold.test.len(), run.checkpoint().display());
        }

        let pca = fold_pca(store, &trainer.fold, opts);
        let controls = rows_f64(store, trainer.fold.controls[ct].iter().copied());
        let key = (record.data.clone(), record.split.clone(), target.clone(), trainer.cfg.seed);
        let baselines = if baselines_done.contains(&key) {
            None
        } else {
            let fitted = Baselines::fit(store, &trainer.fold)?;
            choices.insert(target.clone(), fitted.choices.clone());
            Some(fitted)
        };
        baselines_done.push(key);

        let truth = StoreTruth::load(store)?;
        let (mut eval_rng, mut draws_rng) = (trainer.eval_rng(), trainer.draws_rng());
        let mut fallbacks = 0;
        for cond in &trainer.fold.test {
            let drawn = trainer.predict_condition_drawn(cond, opts.draws, &mut eval_rng, &mut draws_rng)?;
            let (pred, real, paired) = (to_f64(&drawn.pred), to_f64(&drawn.real), to_f64(&drawn.paired));
            let planted = truth.as_ref().map(|t| t.means.change(cond.perturbation, cond.cell_type));
            let exact = MeanInputs { mean_pred: None, truth: planted.as_deref() };
            let row = |model: &str, values: Vec<f64>| ConditionRow {
                model: model.to_string(),
                target: target.clone(),
                perturbation: store.manifest.perturbations[cond.perturbation as usize].clone(),
                cell_type: store.manifest.cell_types[ct].clone(),
                cells: cond.cells.len(),
                values,
            };
            let drawn_mean = MeanInputs { mean_pred: Some(&drawn.mean_pred), ..exact };
            rows.push(row(&model, condition_metrics(&pred, &real, &controls, g, &pca, opts, drawn_mean)?));
            if let Some(b) = &baselines {
                for baseline in b.available() {
                    let predicted = b.predict_cells(baseline, cond.perturbation, &paired);
                    rows.push(row(baseline.name(), condition_metrics(&predicted, &real, &controls, g, &pca, opts, exact)?));
                }
                for (t, oracle) in truth.iter().flat_map(|t| t.oracles().into_iter().map(move |o| (t, o))) {
                    let (shift, fell_back) = t.predict(oracle, store, b, cond.perturbation, cond.cell_type);
                    fallbacks += fell_back as usize;
                    let predicted = b.cells_with_shift(&shift, &paired);
                    rows.push(row(oracle.name(), condition_metrics(&predicted, &real, &controls, g, &pca, opts, exact)?));
                }
            }
        }
        if let (Some(t), Some(_)) = (&truth, &baselines) {
            let mc = t.means.change_mc_mse(ct);
            truth_notes.insert(
                target.clone(),
                TruthNote { selection_fallbacks: fallbacks, conditions: trainer.fold.test.len(), truth_mc_mse: mc },
            );
        }
    }
    Ok(Evaluation { rows, baseline_choices: choices, truth_notes })
}

/// Per target cell type of a store with planted means: what the oracle table needs beside the rows.
#[derive(Clone, Debug, Serialize)]
pub struct TruthNote {
    /// Test conditions on which `oracle-selection` had no relevant training perturbation.
    pub selection_fallbacks: usize,
    pub conditions: usize,
    /// The planted means' own Monte Carlo MSE in that cell type.
    pub truth_mc_mse: f64,
}

/// Per-condition metrics of every model and baseline, and what validation chose for the
/// baselines per target cell type.
pub struct Evaluation {
    pub rows: Vec<ConditionRow>,
    pub baseline_choices: BTreeMap<String, BaselineChoices>,
    /// Target cell type -> its truth note; empty without planted means.
    pub truth_notes: BTreeMap<String, TruthNote>,
}

/// metric -> (mean, standard deviation, conditions)
pub type MetricTable = BTreeMap<String, (f64, f64, usize)>;

/// Two models on one metric, paired by condition (target, perturbation, cell type).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PairedTest {
    pub metric: String,
    pub a: String,
    pub b: String,
    /// Conditions both have a finite value on.
    pub conditions: usize,
    /// Conditions on which `a` is better than `b`, and `b` than `a` (by the metric's direction).
    pub a_better: usize,
    pub b_better: usize,
    /// Wilcoxon signed-rank, two-sided, and its BH q-value.
    pub p: f64,
    pub q: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Over all conditions: model -> metrics.
    pub models: BTreeMap<String, MetricTable>,
    /// Per cell type: cell type -> model -> metrics.
    pub per_cell_type: BTreeMap<String, BTreeMap<String, MetricTable>>,
    /// (metric, model a, model b, Mann-Whitney U of a, p, BH q)
    pub tests: Vec<(String, String, String, f64, f64, f64)>,
    /// The same pairs on the conditions both have, condition by condition (Wilcoxon signed-rank),
    /// BH-corrected over all paired tests.
    #[serde(default)]
    pub paired: Vec<PairedTest>,
    /// Target cell type -> what validation chose for the baselines.
    pub baseline_choices: BTreeMap<String, BaselineChoices>,
    /// Model -> cell type -> retrieval and selection against the planted truth; absent on a store
    /// without one (real data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planted: Option<BTreeMap<String, BTreeMap<String, PlantedMetrics>>>,
    /// Model -> training steps of its runs (the largest, if its folds differ).
    pub steps: BTreeMap<String, usize>,
    /// Target cell type -> its truth note (synthetic stores with planted means; else empty).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub truth_notes: BTreeMap<String, TruthNote>,
    /// Control draws a model's predicted mean change is averaged over.
    pub draws: usize,
}

fn column(rs: &[&ConditionRow], m: usize) -> Vec<f64> {
    rs.iter().map(|r| r.values[m]).filter(|v| v.is_finite()).collect()
}

fn table(rs: &[&ConditionRow]) -> MetricTable {
    METRICS
        .iter()
        .enumerate()
        .map(|(m, metric)| {
            let v = column(rs, m);
            let (mean, var) = crate::score::stats::mean_var(&v);
            (metric.name.to_string(), (mean, var.sqrt(), v.len()))
        })
        .collect()
}

pub fn summarise(rows: &[ConditionRow]) -> Summary {
    let mut by_model: BTreeMap<String, Vec<&ConditionRow>> = BTreeMap::new();
    let mut by_cell_type: BTreeMap<String, BTreeMap<String, Vec<&ConditionRow>>> = BTreeMap::new();
    for r in rows {
        by_model.entry(r.model.clone()).or_default().push(r);
        by_cell_type.entry(r.cell_type.clone()).or_default().entry(r.model.clone()).or_default().push(r);
    }
    let models = by_model.iter().map(|(m, rs)| (m.clone(), table(rs))).collect();
    let per_cell_type =
        by_cell_type.iter().map(|(ct, by)| (ct.clone(), by.iter().map(|(m, rs)| (m.clone(), table(rs))).collect())).collect();
    let names: Vec<&String> = by_model.keys().collect();
    let mut tests = Vec::new();
    for (m, entry) in scores() {
        let metric = &entry.name;
        for i in 0..names.len() {
            for j in i + 1..names.len() {
                let (a, b) = (column(&by_model[names[i]], m), column(&by_model[names[j]], m));
                if a.is_empty() || b.is_empty() {
                    continue; // a truth metric on a store without truth
                }
                let r = mann_whitney_u(&a, &b);
                tests.push((metric.to_string(), names[i].clone(), names[j].clone(), r.u, r.p, 0.0));
            }
        }
    }
    let q = benjamini_hochberg(&tests.iter().map(|t| t.4).collect::<Vec<_>>());
    tests.iter_mut().zip(q).for_each(|(t, q)| t.5 = q);
    let paired = paired_tests(&by_model);
    Summary {
        models,
        per_cell_type,
        tests,
        paired,
        baseline_choices: BTreeMap::new(),
        planted: None,
        steps: BTreeMap::new(),
        truth_notes: BTreeMap::new(),
        draws: 1,
    }
}

/// Every pair of models on every metric (the DEG count aside), condition by condition.
fn paired_tests(by_model: &BTreeMap<String, Vec<&ConditionRow>>) -> Vec<PairedTest> {
    let names: Vec<&String> = by_model.keys().collect();
    let key = |r: &ConditionRow| (r.target.clone(), r.perturbation.clone(), r.cell_type.clone());
    let mut out = Vec::new();
    for (m, entry) in scores() {
        let metric = &entry.name;
        for i in 0..names.len() {
            let a: BTreeMap<_, f64> = by_model[names[i]].iter().map(|r| (key(r), r.values[m])).filter(|(_, v)| v.is_finite()).collect();
            for name_b in &names[i + 1..] {
                let (x, y): (Vec<f64>, Vec<f64>) = by_model[*name_b]
                    .iter()
                    .filter(|r| r.values[m].is_finite())
                    .filter_map(|r| Some((*a.get(&key(r))?, r.values[m])))
                    .unzip();
                if x.is_empty() {
                    continue;
                }
                let better = |u: f64, v: f64| if entry.higher_is_better { u > v } else { u < v };
                let a_better = x.iter().zip(&y).filter(|(u, v)| better(**u, **v)).count();
                let b_better = x.iter().zip(&y).filter(|(u, v)| better(**v, **u)).count();
                let p = wilcoxon_signed_rank(&x, &y).p;
                let (a, b) = (names[i].clone(), (*name_b).clone());
                out.push(PairedTest { metric: metric.to_string(), a, b, conditions: x.len(), a_better, b_better, p, q: 0.0 });
            }
        }
    }
    let q = benjamini_hochberg(&out.iter().map(|t| t.p).collect::<Vec<_>>());
    out.iter_mut().zip(q).for_each(|(t, q)| t.q = q);
    out
}

/// The paired test of `a` against `b` on `metric`, whichever order it was run in: (q, conditions
/// on which `a` is better, conditions).
fn paired(summary: &Summary, metric: &str, a: &str, b: &str) -> Option<(f64, usize, usize)> {
    let t = summary.paired.iter().find(|t| t.metric == metric && ((t.a == a && t.b == b) || (t.a == b && t.b == a)))?;
    Some((t.q, if t.a == a { t.a_better } else { t.b_better }, t.conditions))
}

/// A Markdown table like the paper's Table 1 (mean +- sd per metric and model), then every test.
pub fn markdown(summary: &Summary, opts: &EvalOptions) -> String {
    let mut s = format!(
        "# Evaluation\n\nDEGs: {:?} rule. Distributional metrics in a {}-component PCA fitted on {}: {}.\n\n| metric |",
        opts.deg_rule,
        opts.pca_components,
        opts.pca_fitted_on,
        if opts.per_component {
            "COMPATIBILITY MODE, each the mean over components of 1-D distances (the paper's evaluator)"
        } else {
            "between the clouds (W1/W2 by exact optimal transport)"
        }
    );
    s += &metric_table(&summary.models);
    s += &against_baselines(summary);
    s += &floor_and_oracles(summary);
    if summary.per_cell_type.len() > 1 {
        for (ct, models) in &summary.per_cell_type {
            s += &format!("\n## {ct}\n\n| metric |");
            s += &metric_table(models);
        }
    }
    s += "\n## Mann-Whitney U between models (two-sided), Benjamini-Hochberg over all tests\n\n| metric | a | b | U | p | q | |\n|---|---|---|---|---|---|---|\n";
    for (metric, a, b, u, p, q) in &summary.tests {
        s += &format!("| {metric} | {a} | {b} | {u} | {p:.3e} | {q:.3e} | {} |\n", significance_mark(*q));
    }
    s += "\n## Wilcoxon signed-rank between models, condition by condition (two-sided), Benjamini-Hochberg over all paired tests\n\n| metric | a | b | conditions | a better | b better | p | q | |\n|---|---|---|---|---|---|---|---|---|\n";
    for t in &summary.paired {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.3e} | {:.3e} | {} |\n",
            t.metric,
            t.a,
            t.b,
            t.conditions,
            t.a_better,
            t.b_better,
            t.p,
            t.q,
            significance_mark(t.q)
        );
    }
    s
}

/// The test of `a` against `b` on `metric`, whichever order it was run in: (q, a's mean - b's).
fn compared(summary: &Summary, metric: &str, a: &str, b: &str) -> Option<(f64, f64)> {
    let t = summary.tests.iter().find(|t| t.0 == metric && ((t.1 == a && t.2 == b) || (t.1 == b && t.2 == a)))?;
    Some((t.5, summary.models[a][metric].0 - summary.models[b][metric].0))
}

/// Per metric, the baseline with the best mean and every model against it: the difference of means,
/// the BH q-value of their Mann-Whitney test, and whether the model is better.
fn against_baselines(summary: &Summary) -> String {
    let models: Vec<&String> = summary.models.keys().filter(|m| is_method(m)).collect();
    if models.is_empty() || !summary.models.keys().any(|m| Baseline::is_baseline(m)) {
        return String::new();
    }
    let mut s = "\n## Each model against the strongest baseline\n\nPer metric, the baseline with the best mean; `+`: the model is better, `-`: worse; q: Mann-Whitney, Benjamini-Hochberg over all tests; then the conditions on which the model is better and the paired test (Wilcoxon signed-rank by condition, Benjamini-Hochberg over all paired tests); marks `***` q < 0.01, `**` < 0.05, `*` < 0.1.\n\n| metric | strongest baseline |".to_string();
    models.iter().for_each(|m| s += &format!(" {m} |"));
    s += "\n|---|---|";
    models.iter().for_each(|_| s += "---|");
    s += "\n";
    for (_, entry) in scores() {
        let metric = &entry.name;
        let better = |a: f64, b: f64| if entry.higher_is_better { a > b } else { a < b };
        let strongest = summary.models.iter().filter(|(name, t)| Baseline::is_baseline(name) && t[*metric].0.is_finite()).reduce(|a, b| {
            if better(b.1[*metric].0, a.1[*metric].0) {
                b
            } else {
                a
            }
        });
        let Some((base, table)) = strongest else { continue };
        s += &format!("| {metric} | {base} ({:.4}) |", table[*metric].0);
        for model in &models {
            match (compared(summary, metric, model, base), paired(summary, metric, model, base)) {
                (Some((q, diff)), paired) => {
                    let sign = if better(diff, 0.0) { "+" } else { "-" };
                    let paired = paired.map_or(String::new(), |(pq, wins, n)| {
                        format!("; better on {wins} of {n}, paired q {pq:.2e} {}", significance_mark(pq))
                    });
                    s += &format!(" {sign} {diff:+.4}, q {q:.2e} {}{paired} |", significance_mark(q));
                }
                (None, _) => s += " |",
            }
        }
        s += "\n";
    }
    for (target, c) in &summary.baseline_choices {
        s += &format!(
            "\nBaselines on {target}, chosen on its validation perturbations: neighbours k = {}, linear ridge penalty {} x n (components {} GenePT + {} cross-cell-type); linear-pcs {} components per block, penalty {} x n; linear-neighbours weight {} on linear.\n",
            c.neighbours_k, c.ridge_penalty, c.linear_components.0, c.linear_components.1, c.pcs_components, c.pcs_penalty, c.blend_weight
        );
    }
    s
}

/// Whether a report row is a method: neither a baseline nor an oracle.
fn is_method(name: &str) -> bool {
    !Baseline::is_baseline(name) && !Oracle::is_oracle(name)
}

/// Per target cell type of a store with planted means: the noise floor, the oracles, the strongest
/// baseline and each model, by their mean-change MSE against the observed and the planted change.
fn floor_and_oracles(summary: &Summary) -> String {
    if summary.truth_notes.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\n## Against the planted truth: noise floor and oracles\n\nMSE of the mean change per target cell type (test conditions), against the observed change / against the planted one. The floor is `oracle-truth` against the observed: the error of the observed means themselves, below which no method can go but by chance. Oracles read the planted truth: they are bounds, not methods. Models' predicted means are averaged over {} control draws.\n\n| target | floor | oracle-selection | linear | headroom above linear | models (best) | selection fell back | planted means' own MSE |\n|---|---|---|---|---|---|---|---|\n",
        summary.draws
    );
    for (target, note) in &summary.truth_notes {
        let Some(models) = summary.per_cell_type.get(target) else { continue };
        let pair = |name: &str| models.get(name).map(|t| (t["mse"].0, t["mse_truth"].0));
        let show = |v: Option<(f64, f64)>| v.map_or("-".to_string(), |(o, t)| format!("{o:.4} / {t:.4}"));
        let floor = pair(Oracle::Truth.name()).map(|(o, _)| o).unwrap_or(f64::NAN);
        let linear = pair(Baseline::Linear.name());
        let best = models
            .iter()
            .filter(|(m, _)| is_method(m))
            .min_by(|a, b| a.1["mse"].0.total_cmp(&b.1["mse"].0))
            .map_or("-".to_string(), |(m, t)| format!("{m} {:.4} / {:.4}", t["mse"].0, t["mse_truth"].0));
        s += &format!(
            "| {target} | {floor:.4} | {} | {} | {} | {best} | {} of {} | {:.1e} |\n",
            show(pair(Oracle::Selection.name())),
            show(linear),
            linear.map_or("-".to_string(), |(o, _)| format!("{:.4}", o - floor)),
            note.selection_fallbacks,
            note.conditions,
            note.truth_mc_mse
        );
    }
    s
}

/// The rest of a Markdown table after its `| metric |` opening: mean +- sd per metric and model.
fn metric_table(models: &BTreeMap<String, MetricTable>) -> String {
    let names: Vec<&String> = models.keys().collect();
    let mut s = String::new();
    names.iter().for_each(|m| s += &format!(" {m} |"));
    s += "\n|---|";
    names.iter().for_each(|_| s += "---|");
    s += "\n";
    for m in &METRICS {
        let metric = m.name;
        if models.values().all(|t| t[metric].2 == 0) {
            continue; // absent: a truth metric on a store without truth
        }
        let label = match (m.is_count, m.higher_is_better) {
            (true, _) => format!("{metric} (count in the real cells)"),
            (false, true) => format!("{metric} (higher is better)"),
            (false, false) => format!("{metric} (lower is better)"),
        };
        s += &format!("| {label} |");
        for model in &names {
            let (mean, sd, _) = models[*model][metric];
            s += &format!(" {mean:.4} ± {sd:.4} |");
        }
        s += "\n";
    }
    s
}

/// Per retrieving model, its test records scored against the planted truth of its store (each
/// fold against its own store's; a model evaluated on several stores is named with the store);
/// None when no fold's store has a truth.
pub fn planted_by_model(folds: &[PathBuf]) -> Result<Option<BTreeMap<String, BTreeMap<String, PlantedMetrics>>>> {
    let mut records: BTreeMap<(String, PathBuf), Vec<crate::score::retrieval::RetrievalRecord>> = BTreeMap::new();
    let mut truths: BTreeMap<PathBuf, PlantedTruth> = BTreeMap::new();
    for dir in folds {
        let path = dir.join("retrieval-test.jsonl");
        if !path.exists() {
            continue;
        }
        let run = TrainedRun::open(dir)?;
        let Some(truth) = PlantedTruth::load(&run.store)? else { continue };
        truths.insert(run.record.data.clone(), truth);
        let key = (run.record.train.model.variant_name(), run.record.data.clone());
        records.entry(key).or_default().extend(crate::score::retrieval::read_records(&path)?);
    }
    if truths.is_empty() {
        return Ok(None);
    }
    let name = |model: &str, data: &Path| match truths.len() {
        1 => model.to_string(),
        _ => format!("{model} ({})", data.file_name().unwrap_or_default().to_string_lossy()),
    };
    Ok(Some(records.iter().map(|((model, data), r)| (name(model, data), planted_metrics(r, &truths[data]))).collect()))
}

/// `evaluate` end to end: metrics of every run, summary, retrieval analysis (with PT-RAG runs),
/// report files in `out`; returns the overall Markdown table and the models against the strongest
/// baseline.
pub fn evaluate_into(run_dirs: &[PathBuf], opts: &EvalOptions, out: &Path, progress: bool) -> Result<String> {
    // locked first: a second evaluate into the same directory fails at once, not after its work
    let set = OutputSet::begin(out, "report directory")?;
    let folds = all_folds(run_dirs)?;
    let Evaluation { rows, baseline_choices, truth_notes } = evaluate_runs(&folds, opts, progress)?;
    let planted = planted_by_model(&folds)?;
    let summary = Summary { baseline_choices, planted, truth_notes, draws: opts.draws, ..summarise(&rows) };
    let records = pt_rag_records(&folds)?;
    let retrieval = (!records.is_empty()).then(|| crate::score::retrieval::analyse(&records));
    let (mut curves, mut steps) = (Vec::new(), BTreeMap::new());
    for dir in &folds {
        let train = RunRecord::read(dir)?.train;
        curves.push(read_curve(dir, &format!("{} {}", train.model.variant_name(), train.target_cell_type))?);
        let s = steps.entry(train.model.variant_name()).or_insert(0);
        *s = train.steps.max(*s);
    }
    let summary = Summary { steps, ..summary };
    write_report(&rows, &summary, retrieval.as_ref(), &curves, opts, &set)?;
    set.commit()?;
    let table = markdown(&summary, opts).split("\n## ").next().unwrap_or_default().to_string();
    Ok(table + &against_baselines(&summary) + &floor_and_oracles(&summary))
}

/// Writes `per_condition.csv`, `summary.json` and `summary.csv` (mean, sd per model, cell type and
/// metric), `report.md`, (with PT-RAG records) `retrieval.json`
/// and the SVG figures (curves, metric distributions, with two or more cell types the Jaccard
/// heatmap) into `out`, which the caller commits.
pub fn write_report(
    rows: &[ConditionRow],
    summary: &Summary,
    retrieval: Option<&crate::score::retrieval::RetrievalAnalysis>,
    curves: &[Curve],
    opts: &EvalOptions,
    out: &OutputSet,
) -> Result<()> {
    let header =
        ["model", "target", "perturbation", "cell_type", "cells"].into_iter().chain(METRICS.map(|m| m.name)).map(String::from).collect();
    let lines = rows.iter().map(|r| {
        // A metric without a value (a truth metric on real data) is an empty field, not `NaN`.
        let values = r.values.iter().map(|v| if v.is_nan() { String::new() } else { format!("{v}") });
        [r.model.clone(), r.target.clone(), r.perturbation.clone(), r.cell_type.clone(), r.cells.to_string()]
            .into_iter()
            .chain(values)
            .collect()
    });
    let csv: Vec<Vec<String>> = std::iter::once(header).chain(lines).collect();
    crate::data::write_atomic(&out.path("per_condition.csv"), &super::csv_bytes(csv)?)?;
    crate::data::write_atomic(&out.path("summary.json"), serde_json::to_string_pretty(summary).expect("summary serialises").as_bytes())?;
    let mut agg = vec![["model", "cell_type", "metric", "mean", "sd", "conditions"].map(String::from).to_vec()];
    let tables = summary.models.iter().map(|(m, t)| ("all", m, t));
    let per_type = summary.per_cell_type.iter().flat_map(|(ct, models)| models.iter().map(move |(m, t)| (ct.as_str(), m, t)));
    for (cell_type, model, table) in tables.chain(per_type) {
        for (metric, (mean, sd, n)) in table {
            agg.push(vec![model.clone(), cell_type.to_string(), metric.clone(), mean.to_string(), sd.to_string(), n.to_string()]);
        }
    }
    crate::data::write_atomic(&out.path("summary.csv"), &super::csv_bytes(agg)?)?;
    let mut md = markdown(summary, opts);
    crate::data::write_atomic(&out.path("distributions.svg"), distributions_svg(rows)?.as_bytes())?;
    md += "\n## Figures\n\n- `distributions.svg`: every metric's distribution over test conditions, per model\n";
    if !curves.is_empty() {
        crate::data::write_atomic(&out.path("curves.svg"), curves_svg(curves)?.as_bytes())?;
        md += "- `curves.svg`: training and validation energy distance per step, per run\n";
    }
    if curves.iter().any(|c| !c.val_retrieval_precision.is_empty()) {
        crate::data::write_atomic(&out.path("planted.svg"), planted_svg(curves)?.as_bytes())?;
        md += "- `planted.svg`: validation retrieval and selection precision against the planted truth per step\n";
    }
    if let Some(a) = retrieval {
        crate::data::write_atomic(&out.path("retrieval.json"), serde_json::to_string_pretty(a).expect("analysis serialises").as_bytes())?;
        // one cell type's overlap with itself is 1 by definition: a heatmap needs two
        if a.cell_types.len() > 1 {
            crate::data::write_atomic(&out.path("jaccard.svg"), jaccard_svg(a)?.as_bytes())?;
            md += "- `jaccard.svg`: the retrieval analysis' Jaccard matrix between cell types\n";
        }
        md += &crate::score::retrieval::markdown(a);
    }
    if let Some(p) = &summary.planted {
        md += &crate::score::planted::markdown(p);
    }
    crate::data::write_atomic(&out.path("report.md"), md.as_bytes())
}
