//! Which cells `prepare` keeps, and their labels: the obs columns read and checked, the
//! perturbations with a GenePT vector, the conditions of `--min-cells`, the cell types (each with
//! controls) and the batches.

use super::PrepareOptions;
use crate::data::genept::GenePt;
use crate::data::h5ad::H5ad;
use crate::{Error, Result};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

/// The obs columns `prepare` reads, one value per cell.
pub(super) struct Obs {
    pub names: Vec<String>,
    pub perts: Vec<String>,
    pub types: Vec<String>,
    pub batches: Vec<String>,
    /// Every perturbation label, the control included.
    pub labels: BTreeSet<String>,
}

impl Obs {
    /// Reads the columns, and checks the labels: the control is there, labels are unique up to
    /// case, and every `--drop` label exists.
    pub fn read(f: &H5ad, path: &Path, opts: &PrepareOptions) -> Result<Obs> {
        let names = f.index("obs")?;
        let n = names.len();
        let column = |name: &str| -> Result<Vec<String>> {
            let v = f.column("obs", name)?;
            if v.len() != n {
                return Err(Error::bad_file(path, format!("obs/{name}"), format!("{n} values, one per cell, found {}", v.len())));
            }
            Ok(v)
        };
        let perts = column(&opts.pert_col)?;
        let types = column(&opts.cell_type_col)?;
        let batches = match &opts.batch_col {
            Some(c) => column(c)?,
            None => vec!["0".to_string(); n],
        };
        let labels: BTreeSet<String> = perts.iter().cloned().collect();
        let obs = Obs { names, perts, types, batches, labels };
        obs.check_labels(path, opts)?;
        Ok(obs)
    }

    fn check_labels(&self, path: &Path, opts: &PrepareOptions) -> Result<()> {
        let pert_field = format!("obs/{}", opts.pert_col);
        let have = || first_few(&self.labels.iter().cloned().collect::<Vec<_>>());
        if !self.labels.contains(&opts.control) {
            return Err(Error::bad_file(path, &pert_field, format!("the control label `{}` (labels: {})", opts.control, have())));
        }
        let mut by_upper: HashMap<String, &String> = HashMap::new();
        for l in &self.labels {
            if let Some(other) = by_upper.insert(l.to_uppercase(), l) {
                return Err(Error::bad_file(path, &pert_field, format!("perturbations unique up to case; `{other}` and `{l}`")));
            }
        }
        // Each cell type names a fold directory and a screen's: refused here, not after training.
        let types: BTreeSet<&String> = self.types.iter().collect();
        if let Some(t) = types.iter().find(|t| crate::data::path_component(t).is_err()) {
            let field = format!("obs/{}", opts.cell_type_col);
            let why = format!("cell type labels of 1 to about 200 characters (each names a directory), found one of {}", t.len());
            return Err(Error::bad_file(path, field, why));
        }
        for d in &opts.drop {
            if *d == opts.control {
                return Err(Error::invalid("--drop", format!("labels other than the control `{d}`")));
            }
            if !self.labels.contains(d) {
                return Err(Error::bad_file(path, &pert_field, format!("the --drop label `{d}` (labels: {})", have())));
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// What is kept: the store's perturbations and cell types, which cells, and what was left out.
pub(super) struct Kept {
    /// The control first, then the kept perturbations by name.
    pub perturbations: Vec<String>,
    pub pert_index: HashMap<String, u32>,
    /// Per cell: kept (a kept perturbation, in a condition not below `--min-cells`).
    pub keep: Vec<bool>,
    /// In order of first appearance among the kept cells; each with its kept cells and controls.
    pub cell_types: Vec<String>,
    pub type_index: HashMap<String, u32>,
    pub type_counts: Vec<(usize, usize)>,
    pub batch_labels: Vec<String>,
    pub batch_index: HashMap<String, u32>,
    /// Perturbations without a GenePT vector.
    pub without_genept: BTreeSet<String>,
    /// (with a GenePT vector, all non-control labels not dropped).
    pub coverage: (usize, usize),
    pub dropped_conditions: Vec<(String, String, usize)>,
    pub perturbations_without_cells: Vec<String>,
    /// The (perturbation, cell type) conditions with kept cells.
    measured: HashSet<(String, String)>,
}

impl Kept {
    pub fn choose(obs: &Obs, genept: Option<&GenePt>, opts: &PrepareOptions, path: &Path) -> Result<Kept> {
        let drop: BTreeSet<&str> = opts.drop.iter().map(String::as_str).collect();
        let (mut kept, mut without_genept) = (Vec::new(), BTreeSet::new());
        for l in obs.labels.iter().filter(|l| **l != opts.control && !drop.contains(l.as_str())) {
            if genept.is_none_or(|g| g.get(l).is_some()) {
                kept.push(l.clone());
            } else {
                without_genept.insert(l.clone());
            }
        }
        if let (Some(file), true) = (&opts.genept, kept.is_empty()) {
            return Err(Error::bad_file(file, "genes", format!("a vector for at least one perturbation of {}", path.display())));
        }
        let coverage = (kept.len(), obs.labels.len() - 1 - drop.len());
        let (small, dropped_conditions, perturbations_without_cells) = small_conditions(obs, &mut kept, opts)?;
        let mut perturbations = vec![opts.control.clone()];
        perturbations.extend(kept);
        let pert_index = index_of(&perturbations);
        let keep: Vec<bool> =
            obs.perts.iter().zip(&obs.types).map(|(p, t)| pert_index.contains_key(p) && !is_small(&small, p, t)).collect();
        let (cell_types, type_counts) = cell_types_with_controls(obs, &keep, opts, path)?;
        let measured: HashSet<(&str, &str)> =
            obs.perts.iter().zip(&obs.types).zip(&keep).filter(|(_, &k)| k).map(|((p, t), _)| (p.as_str(), t.as_str())).collect();
        let measured = measured.into_iter().map(|(p, t)| (p.to_string(), t.to_string())).collect();
        let batch_labels = sorted_labels(obs.batches.iter().zip(&keep).filter(|(_, &k)| k).map(|(b, _)| b.clone()));
        Ok(Kept {
            type_index: index_of(&cell_types),
            batch_index: index_of(&batch_labels),
            perturbations,
            pert_index,
            keep,
            cell_types,
            type_counts,
            batch_labels,
            without_genept,
            coverage,
            dropped_conditions,
            perturbations_without_cells,
            measured,
        })
    }

    /// Whether a (perturbation, cell type) condition has cells in the store.
    pub fn present(&self, pert: &str, cell_type: &str) -> bool {
        self.measured.contains(&(pert.to_string(), cell_type.to_string()))
    }
}

fn is_small(small: &HashMap<String, BTreeSet<String>>, pert: &str, cell_type: &str) -> bool {
    small.get(pert).is_some_and(|types| types.contains(cell_type))
}

type SmallConditions = (HashMap<String, BTreeSet<String>>, Vec<(String, String, usize)>, Vec<String>);

/// Conditions below `--min-cells` (controls excepted): their set, their counts, and the
/// perturbations they leave with no cells (removed from `kept`).
fn small_conditions(obs: &Obs, kept: &mut Vec<String>, opts: &PrepareOptions) -> Result<SmallConditions> {
    let mut condition_cells: HashMap<(&str, &str), usize> = HashMap::new();
    for (p, t) in obs.perts.iter().zip(&obs.types) {
        *condition_cells.entry((p.as_str(), t.as_str())).or_default() += 1;
    }
    let mut dropped: Vec<(String, String, usize)> = condition_cells
        .iter()
        .filter(|((p, _), &c)| *p != opts.control && c < opts.min_cells && kept.binary_search_by(|k| k.as_str().cmp(p)).is_ok())
        .map(|((p, t), &c)| (p.to_string(), t.to_string(), c))
        .collect();
    dropped.sort();
    let mut small: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (p, t, _) in &dropped {
        small.entry(p.clone()).or_default().insert(t.clone());
    }
    let with_cells: BTreeSet<&str> = condition_cells.keys().filter(|(p, t)| !is_small(&small, p, t)).map(|(p, _)| *p).collect();
    let without_cells: Vec<String> = kept.iter().filter(|p| !with_cells.contains(p.as_str())).cloned().collect();
    kept.retain(|p| with_cells.contains(p.as_str()));
    if kept.is_empty() {
        return Err(Error::invalid("--min-cells", format!("leaves no perturbation with {} or more cells", opts.min_cells)));
    }
    Ok((small, dropped, without_cells))
}

/// Cell types in order of first appearance, and (cells, controls) of each.
type CellTypes = (Vec<String>, Vec<(usize, usize)>);

/// The cell types in order of first appearance among the kept cells, with (cells, controls) each;
/// an error when one has no control cells.
fn cell_types_with_controls(obs: &Obs, keep: &[bool], opts: &PrepareOptions, path: &Path) -> Result<CellTypes> {
    let mut cell_types: Vec<String> = Vec::new();
    for (t, _) in obs.types.iter().zip(keep).filter(|(_, &k)| k) {
        if !cell_types.contains(t) {
            cell_types.push(t.clone());
        }
    }
    let type_index = index_of(&cell_types);
    let mut counts = vec![(0usize, 0usize); cell_types.len()];
    for ((p, t), _) in obs.perts.iter().zip(&obs.types).zip(keep).filter(|(_, &k)| k) {
        let c = &mut counts[type_index[t] as usize];
        c.0 += 1;
        c.1 += usize::from(*p == opts.control);
    }
    if let Some(i) = counts.iter().position(|c| c.1 == 0) {
        return Err(Error::bad_file(
            path,
            format!("obs/{}", opts.cell_type_col),
            format!("control cells (`{}`) in every cell type; `{}` has none", opts.control, cell_types[i]),
        ));
    }
    Ok((cell_types, counts))
}

fn index_of(labels: &[String]) -> HashMap<String, u32> {
    labels.iter().enumerate().map(|(i, l)| (l.clone(), i as u32)).collect()
}

/// Sorted labels, numerically when all are integers.
fn sorted_labels(labels: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = labels.collect::<BTreeSet<_>>().into_iter().collect();
    if v.iter().all(|s| s.parse::<i64>().is_ok()) {
        v.sort_by_key(|s| s.parse::<i64>().expect("checked above"));
    }
    v
}

pub(super) fn first_few(v: &[String]) -> String {
    let mut s = v.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 8 {
        s += &format!(", ... ({} in all)", v.len());
    }
    s
}
