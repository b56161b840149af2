//! Retrieval and selection scored against the planted truth of a synthetic store
//! (`synth_truth.json`): for a query in a cell type, a candidate is *relevant* when the two act
//! through a common pathway in that cell type (a pathway of both, active there, and not switched
//! off for either; `data::synth`). On real data there is no truth, and none of this is reported.

use super::retrieval::{analyse, jaccard};
use crate::data::store::Store;
use crate::data::truth::{TruthFile, TRUTH_FILE};
use crate::score::retrieval::RetrievalRecord;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub struct PlantedTruth {
    /// `[cell type][perturbation]` -> acting pathways.
    acting: Vec<Vec<Vec<usize>>>,
    index: HashMap<String, usize>,
    cell_types: HashMap<String, usize>,
}

impl PlantedTruth {
    /// The store's planted truth, or None when it has none (real data).
    pub fn load(store: &Store) -> Result<Option<PlantedTruth>> {
        let path = store.dir.join(TRUTH_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let t: TruthFile = serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, "json", format!("a synthetic truth ({e})")))?;
        PlantedTruth::new(t, &store.manifest.perturbations, &store.manifest.cell_types)
            .map(Some)
            .map_err(|expected| Error::bad_file(&path, "acting", expected))
    }

    /// The truth of a store with these perturbations and cell types (in store order).
    pub fn new(t: TruthFile, perturbations: &[String], cell_types: &[String]) -> Result<PlantedTruth, String> {
        let (n_ct, n_p) = (cell_types.len(), perturbations.len());
        let acting = t.acting.clone().unwrap_or_else(|| {
            t.activity
                .iter()
                .map(|act| {
                    t.pathways_of
                        .iter()
                        .map(|pws| pws.iter().copied().filter(|&pw| act.get(pw).is_some_and(|&a| a > 0.0)).collect())
                        .collect()
                })
                .collect()
        });
        if acting.len() != n_ct || acting.iter().any(|a| a.len() != n_p) {
            return Err(format!("{n_ct} cell types x {n_p} perturbations, as the store"));
        }
        let index = perturbations.iter().enumerate().map(|(i, p)| (p.clone(), i)).collect();
        let cell_types = cell_types.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect();
        Ok(PlantedTruth { acting, index, cell_types })
    }

    /// Whether `candidate` is relevant to `query` in `cell_type` (names as in the store).
    pub fn relevant(&self, cell_type: &str, query: &str, candidate: &str) -> bool {
        let (Some(&ct), Some(&q), Some(&c)) = (self.cell_types.get(cell_type), self.index.get(query), self.index.get(candidate)) else {
            return false;
        };
        self.acting[ct][q].iter().any(|pw| self.acting[ct][c].contains(pw))
    }
}

/// One model's retrieval and selection in one cell type, against the planted truth.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PlantedMetrics {
    /// Evaluated sets (records).
    pub sets: usize,
    /// Relevant share of the top K, over cells.
    pub retrieval_precision: f64,
    /// Relevant share of the inclusion weight (models that select).
    pub selection_precision: Option<f64>,
    /// Share of the relevant candidates' possible weight that was given (cells x relevant in top K).
    pub selection_recall: Option<f64>,
    /// Mean inclusion weight per cell (candidates selected).
    pub mean_selected: Option<f64>,
    /// Mean Jaccard, against the other cell types, of the relevant sets among the top K (the ideal
    /// selection), over queries evaluated in every cell type; None with one cell type.
    pub ideal_jaccard: Option<f64>,
    /// The same for the top-10 most selected (the paper's analysis); for a model that does not
    /// select, the top 10 retrieved.
    pub measured_jaccard: Option<f64>,
}

/// Per cell type, the planted metrics of one model's records.
pub fn planted_metrics(records: &[RetrievalRecord], truth: &PlantedTruth) -> BTreeMap<String, PlantedMetrics> {
    #[derive(Default)]
    struct Sums {
        sets: usize,
        cells: f64,
        slots: f64,
        relevant_slots: f64,
        weight: f64,
        relevant_weight: f64,
        possible: f64,
    }
    let mut sums: BTreeMap<String, Sums> = BTreeMap::new();
    let mut ideal: BTreeMap<String, BTreeMap<String, BTreeSet<&str>>> = BTreeMap::new();
    let selects = records.iter().all(|r| r.selected.is_some()) && !records.is_empty();
    for r in records {
        let rel: Vec<bool> = r.retrieved.iter().map(|c| truth.relevant(&r.cell_type, &r.perturbation, c)).collect();
        let n_rel = rel.iter().filter(|&&x| x).count() as f64;
        let s = sums.entry(r.cell_type.clone()).or_default();
        let cells = r.cells as f64;
        s.sets += 1;
        s.cells += cells;
        s.slots += cells * rel.len() as f64;
        s.relevant_slots += cells * n_rel;
        if let Some(w) = &r.selected {
            s.weight += w.iter().sum::<f64>();
            s.relevant_weight += w.iter().zip(&rel).filter(|(_, &x)| x).map(|(w, _)| w).sum::<f64>();
            s.possible += cells * n_rel;
        }
        let set = ideal.entry(r.perturbation.clone()).or_default().entry(r.cell_type.clone()).or_default();
        set.extend(r.retrieved.iter().zip(&rel).filter(|(_, &x)| x).map(|(c, _)| c.as_str()));
    }
    // The paper's top-10 analysis; a model that does not select counts its first 10 retrieved.
    let as_selected: Vec<RetrievalRecord> = records
        .iter()
        .map(|r| match &r.selected {
            Some(_) => r.clone(),
            None => RetrievalRecord {
                selected: Some((0..r.retrieved.len()).map(|i| if i < 10 { r.cells as f64 } else { 0.0 }).collect()),
                ..r.clone()
            },
        })
        .collect();
    let measured = analyse(&as_selected);
    let cell_types: Vec<String> = sums.keys().cloned().collect();
    let shared: Vec<&BTreeMap<String, BTreeSet<&str>>> =
        ideal.values().filter(|by| cell_types.iter().all(|c| by.contains_key(c))).collect();
    let off_diagonal_mean = |row: usize, value: &dyn Fn(usize, usize) -> f64| -> Option<f64> {
        let n = cell_types.len();
        (n > 1).then(|| (0..n).filter(|&j| j != row).map(|j| value(row, j)).sum::<f64>() / (n - 1) as f64)
    };
    let ideal_pair = |i: usize, j: usize| -> f64 {
        shared.iter().map(|by| jaccard(&by[&cell_types[i]], &by[&cell_types[j]])).sum::<f64>() / shared.len().max(1) as f64
    };
    let measured_pair = |i: usize, j: usize| -> f64 {
        let (a, b) = (&cell_types[i], &cell_types[j]);
        match (measured.cell_types.iter().position(|c| c == a), measured.cell_types.iter().position(|c| c == b)) {
            (Some(x), Some(y)) => measured.jaccard[x][y],
            _ => f64::NAN,
        }
    };
    sums.into_iter()
        .enumerate()
        .map(|(i, (ct, s))| {
            let m = PlantedMetrics {
                sets: s.sets,
                retrieval_precision: s.relevant_slots / s.slots.max(1e-300),
                selection_precision: selects.then(|| s.relevant_weight / s.weight.max(1e-300)),
                selection_recall: selects.then(|| s.relevant_weight / s.possible.max(1e-300)),
                mean_selected: selects.then(|| s.weight / s.cells.max(1e-300)),
                ideal_jaccard: if shared.is_empty() { None } else { off_diagonal_mean(i, &ideal_pair) },
                measured_jaccard: if measured.shared_genes.is_empty() { None } else { off_diagonal_mean(i, &measured_pair) },
            };
            (ct, m)
        })
        .collect()
}

/// A Markdown section: per model and cell type, the planted metrics.
pub fn markdown(planted: &BTreeMap<String, BTreeMap<String, PlantedMetrics>>) -> String {
    let mut s = "\n## Planted-truth retrieval (synthetic data)\n\nA candidate is relevant when it acts through a pathway of the query's that is active in the cell type (`synth_truth.json`). Retrieval precision: relevant share of the top K; selection precision / recall: relevant share of the inclusion weight / of the relevant candidates' possible weight; Jaccard: against the other cell types, of the ideal (relevant) sets and of the measured top-10.\n\n| model | cell type | sets | retrieval precision | selection precision | selection recall | selected per cell | ideal Jaccard | measured Jaccard |\n|---|---|---|---|---|---|---|---|---|\n".to_string();
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for (model, by_ct) in planted {
        for (ct, m) in by_ct {
            s += &format!(
                "| {model} | {ct} | {} | {:.3} | {} | {} | {} | {} | {} |\n",
                m.sets,
                m.retrieval_precision,
                f(m.selection_precision),
                f(m.selection_recall),
                f(m.mean_selected),
                f(m.ideal_jaccard),
                f(m.measured_jaccard)
            );
        }
    }
    s
}
