//! Retrieval analysis (paper §4.6, Appendix E.1) over PT-RAG's `retrieval-test.jsonl` records: per
//! query gene and cell type the most often selected perturbations, how much those choices overlap
//! between cell types (mean pairwise Jaccard of the top-10 sets over genes tested in every cell
//! type), and the mean number selected per cell.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Which candidates one evaluated set retrieved and (PT-RAG) how many of its cells selected each.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetrievalRecord {
    pub perturbation: String,
    pub cell_type: String,
    /// Index of the set within its condition.
    pub set: usize,
    pub cells: usize,
    /// Candidate perturbations, most similar first.
    pub retrieved: Vec<String>,
    pub similarity: Vec<f32>,
    /// PT-RAG: per candidate, the number of the set's cells that selected it (under `expected`
    /// selection, the expected number).
    pub selected: Option<Vec<f64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RetrievalAnalysis {
    pub cell_types: Vec<String>,
    /// (gene, cell type) -> the 10 most selected perturbations with their selection counts.
    pub top10: BTreeMap<String, BTreeMap<String, Vec<(String, f64)>>>,
    /// Genes whose condition was tested in every cell type.
    pub shared_genes: Vec<String>,
    /// `[cell types x cell types]` mean Jaccard of the top-10 sets over `shared_genes`.
    pub jaccard: Vec<Vec<f64>>,
    /// cell type -> mean candidates selected per cell.
    pub mean_selected: BTreeMap<String, f64>,
}

pub fn read_records(path: &Path) -> Result<Vec<RetrievalRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::bad_file(path, format!("line {}", i + 1), format!("a retrieval record ({e})")))
        })
        .collect()
}

pub fn jaccard(a: &BTreeSet<&str>, b: &BTreeSet<&str>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        1.0
    } else {
        a.intersection(b).count() as f64 / union as f64
    }
}

pub fn analyse(records: &[RetrievalRecord]) -> RetrievalAnalysis {
    let mut counts: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>> = BTreeMap::new();
    let mut selected: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for r in records {
        let Some(sel) = &r.selected else { continue };
        let by_candidate = counts.entry(r.perturbation.clone()).or_default().entry(r.cell_type.clone()).or_default();
        for (name, &w) in r.retrieved.iter().zip(sel) {
            *by_candidate.entry(name.clone()).or_default() += w;
        }
        let e = selected.entry(r.cell_type.clone()).or_default();
        e.0 += sel.iter().sum::<f64>();
        e.1 += r.cells;
    }
    let cell_types: Vec<String> = selected.keys().cloned().collect();
    let top10: BTreeMap<String, BTreeMap<String, Vec<(String, f64)>>> = counts
        .into_iter()
        .map(|(gene, by_ct)| {
            let tops = by_ct
                .into_iter()
                .map(|(ct, c)| {
                    // never selected is not "selected": only positive counts compete for the top 10
                    let mut v: Vec<(String, f64)> = c.into_iter().filter(|(_, w)| *w > 0.0).collect();
                    // most selected first, ties by name for a stable result
                    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    v.truncate(10);
                    (ct, v)
                })
                .collect();
            (gene, tops)
        })
        .collect();
    let shared_genes: Vec<String> =
        top10.iter().filter(|(_, by)| cell_types.iter().all(|c| by.contains_key(c))).map(|(g, _)| g.clone()).collect();
    let n = cell_types.len();
    let mut jac = vec![vec![0.0; n]; n];
    for gene in &shared_genes {
        let sets: Vec<BTreeSet<&str>> = cell_types.iter().map(|c| top10[gene][c].iter().map(|(p, _)| p.as_str()).collect()).collect();
        for i in 0..n {
            for j in 0..n {
                jac[i][j] += jaccard(&sets[i], &sets[j]) / shared_genes.len() as f64;
            }
        }
    }
    let mean_selected = selected.into_iter().map(|(ct, (s, cells))| (ct, s / cells.max(1) as f64)).collect();
    RetrievalAnalysis { cell_types, top10, shared_genes, jaccard: jac, mean_selected }
}

/// A Markdown section: the Jaccard matrix, mean selections and the top-5 of the first few genes.
pub fn markdown(a: &RetrievalAnalysis) -> String {
    let mut s = format!("\n## Retrieval analysis (PT-RAG)\n\nMean pairwise Jaccard of the top-10 selected perturbations over {} genes tested in every cell type:\n\n|", a.shared_genes.len());
    a.cell_types.iter().for_each(|c| s += &format!(" | {c}"));
    s += " |\n|---|";
    a.cell_types.iter().for_each(|_| s += "---|");
    s += "\n";
    for (i, c) in a.cell_types.iter().enumerate() {
        s += &format!("| {c} |");
        a.jaccard[i].iter().for_each(|v| s += &format!(" {v:.3} |"));
        s += "\n";
    }
    s += "\nMean candidates selected per cell: ";
    s += &a.mean_selected.iter().map(|(c, v)| format!("{c} {v:.2}")).collect::<Vec<_>>().join(", ");
    s += "\n\nTop-5 selected per cell type (first genes):\n\n";
    for (gene, by) in a.top10.iter().take(5) {
        for (ct, v) in by {
            let names: Vec<String> = v.iter().take(5).map(|(p, c)| format!("{p} ({c:.1})")).collect();
            s += &format!("- {gene} in {ct}: {}\n", names.join(", "));
        }
    }
    s
}
