//! `predict --screen`: an in-silico screen. A trained run predicts perturbations in one cell type,
//! whether or not they were ever measured there, from the same control cells for every
//! perturbation (so effects compare on identical basal cells), and ranks them by the size of the
//! predicted mean change (predicted mean, the cells clamped at 0 as written, minus the mean of
//! those control cells).
//!
//! Writes `pred.h5ad` (the control cells, then every perturbation's predicted cells; obs: the
//! perturbation, the cell type, `measured_in_target` yes/no) and `screen.csv` (one row per
//! perturbation, largest effect first, whether it was measured in the cell type and whether the
//! run trained on it there, with the genes moved most up and down).
//!
//! Perturbations are those of the run's store and, with `--genept FILE` for the GenePT-based models,
//! every gene of that file with no cells in the store: appended to the model's GenePT table (never
//! retrieved as candidates), predicted like the others, `measured_in_target` no.

use crate::data::h5ad::{write_h5ad, AnnData};
use crate::data::sampler::control_sets;
use crate::train::run::{fold_dirs, TrainedRun};
use crate::train::Trainer;
use crate::{Error, Result};
use rand::seq::index::sample;
use rand::Rng;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct ScreenOptions {
    /// A file with one perturbation per line (`#` comments, blank lines ignored); `None`: all.
    pub perturbations: Option<PathBuf>,
    /// A GenePT file: its genes without cells in the store join the screen (GenePT-based models).
    pub genept: Option<PathBuf>,
    /// The cell type to screen in; `None`: the run's target cell type.
    pub cell_type: Option<String>,
    /// Control cells (the same for every perturbation), predicted once per perturbation.
    pub cells: usize,
    /// A gene counts as moved when its predicted mean change exceeds this (log1p units).
    pub threshold: f64,
    /// Genes listed per direction in `screen.csv`.
    pub top_genes: usize,
    pub pert_col: String,
    pub cell_type_col: String,
}

impl Default for ScreenOptions {
    fn default() -> Self {
        ScreenOptions {
            perturbations: None,
            genept: None,
            cell_type: None,
            cells: 64,
            threshold: 0.1,
            top_genes: 5,
            pert_col: "gene".into(),
            cell_type_col: "cell_line".into(),
        }
    }
}

/// One perturbation's predicted effect.
#[derive(Clone, Debug)]
pub struct ScreenRow {
    pub perturbation: String,
    pub measured_in_target: bool,
    /// Whether the run trained on this perturbation in the target cell type (not held out there).
    pub trained_in_target: bool,
    /// Euclidean norm of the predicted mean change over all genes.
    pub effect_norm: f64,
    /// Genes whose |predicted mean change| exceeds the threshold.
    pub genes_moved: usize,
    pub top_up: Vec<(String, f64)>,
    pub top_down: Vec<(String, f64)>,
}

pub struct Screen {
    pub cell_type: String,
    pub model: String,
    pub rows: Vec<ScreenRow>,
    pub pred: PathBuf,
    pub csv: PathBuf,
    pub seconds: f64,
}

/// The perturbations named in `path`, as store indices.
fn read_list(path: &Path, names: &[String], control: &str) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.split('#').next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        let field = format!("line {}", i + 1);
        if name == control {
            return Err(Error::bad_file(path, field, format!("perturbations, not the control `{control}`")));
        }
        let p = names.iter().position(|n| n.eq_ignore_ascii_case(name)).ok_or_else(|| {
            Error::bad_file(path, &field, format!("a perturbation of the run's store; `{name}` is not one ({} there)", names.len() - 1))
        })?;
        if seen.insert(p) {
            out.push(p as u32);
        }
    }
    if out.is_empty() {
        return Err(Error::bad_file(path, "perturbations", "at least one perturbation name"));
    }
    Ok(out)
}

/// The fold of `run_dir` to screen with: the one whose target is `cell_type`, else the first.
fn choose_fold(run_dir: &Path, cell_type: Option<&str>) -> Result<TrainedRun> {
    let folds = fold_dirs(run_dir)?;
    let mut first = None;
    for dir in &folds {
        let run = TrainedRun::open(dir)?;
        if cell_type.is_none_or(|t| run.record.train.target_cell_type.eq_ignore_ascii_case(t)) {
            return Ok(run);
        }
        first.get_or_insert(run);
    }
    first.ok_or_else(|| Error::invalid("predict --screen", format!("{} holds no trained fold", run_dir.display())))
}

/// Screens with the run in `run_dir` (an `all` run: the fold whose target is the cell type, else its
/// first) into `out` [default: `run_dir/screen-<cell type>`].
pub fn screen(run_dir: &Path, out: Option<&Path>, opts: &ScreenOptions, progress: bool) -> Result<Screen> {
    let start = std::time::Instant::now();
    if opts.cells == 0 {
        return Err(Error::invalid("--cells", "at least 1"));
    }
    let run = choose_fold(run_dir, opts.cell_type.as_deref())?;
    let mut trainer = run.trainer()?;
    let store = &run.store;
    let m = &store.manifest;
    // The store's perturbations, then those known only by a GenePT vector.
    let mut names = m.perturbations.clone();
    if let Some(path) = &opts.genept {
        if !run.record.train.model.kind.uses_genept() {
            return Err(Error::invalid("--genept", "STATE encodes perturbations without GenePT: it predicts only the store's"));
        }
        names.extend(add_genept_only(&mut trainer, path)?);
    }
    let trainer = trainer;
    let (target, cell_type) = cell_type_of(store, opts.cell_type.as_deref().unwrap_or(&run.record.train.target_cell_type))?;
    let perturbations: Vec<u32> = match &opts.perturbations {
        Some(path) => read_list(path, &names, &m.control)?,
        None => (0..names.len() as u32).filter(|&p| p != store.control_index).collect(),
    };
    let (measured, trained) = measured_and_trained(&trainer, target, names.len());
    // the whole screen is held in memory before it is written
    let model = &run.record.train.model;
    let screen_bytes = 4.0 * (perturbations.len() + 1) as f64 * opts.cells as f64 * store.n_genes() as f64;
    crate::machine::check_fits(screen_bytes + model.training_step_bytes_at_least(1, opts.cells), || {
        format!("--cells {} for {} perturbations of {} genes", opts.cells, perturbations.len(), store.n_genes())
    })?;
    let mut rng = trainer.eval_rng();
    let controls = screen_controls(&trainer.fold.controls[target], opts.cells, &mut rng);
    let g = store.n_genes();
    let basal = expression_rows(store, &controls);
    let basal_mean = crate::score::metrics::mean_rows(&basal.iter().map(|&v| v as f64).collect::<Vec<_>>(), g);

    let mut a = AnnData {
        x: Vec::with_capacity((perturbations.len() + 1) * controls.len() * g),
        obs_names: Vec::new(),
        var_names: m.genes.clone(),
        obs: vec![(opts.pert_col.clone(), vec![]), (opts.cell_type_col.clone(), vec![]), ("measured_in_target".into(), vec![])],
    };
    let push = |a: &mut AnnData, cells: &[f32], pert: &str, measured: bool, names: &mut dyn FnMut(usize) -> String| {
        a.x.extend_from_slice(cells);
        for i in 0..cells.len() / g {
            a.obs_names.push(names(i));
            a.obs[0].1.push(pert.to_string());
            a.obs[1].1.push(cell_type.clone());
            a.obs[2].1.push(if measured { "yes" } else { "no" }.to_string());
        }
    };
    push(&mut a, &basal, &m.control, true, &mut |i| format!("control-{}", controls[i]));

    let bar = crate::progress::bar(perturbations.len() as u64, "perturbations", progress);
    let mut rows = Vec::with_capacity(perturbations.len());
    for &p in &perturbations {
        let sets = control_sets(store, &controls, p, target as u32, trainer.cfg.cells_per_set);
        // clamped at 0 as in the file written (expression is never negative)
        let pred: Vec<f32> = trainer.predict_sets(&sets, &mut rng)?.into_iter().map(|v| v.max(0.0)).collect();
        let name = &names[p as usize];
        let mean = crate::score::metrics::mean_rows(&pred.iter().map(|&v| v as f64).collect::<Vec<_>>(), g);
        let change: Vec<f64> = mean.iter().zip(&basal_mean).map(|(a, b)| a - b).collect();
        let row = ScreenRow {
            measured_in_target: measured[p as usize],
            trained_in_target: trained[p as usize],
            ..effect(name, &change, &m.genes, opts)
        };
        rows.push(row);
        push(&mut a, &pred, name, measured[p as usize], &mut |i| format!("{name}-{i}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    rows.sort_by(|a, b| b.effect_norm.total_cmp(&a.effect_norm).then_with(|| a.perturbation.cmp(&b.perturbation)));

    let out = match out {
        Some(out) => out.to_path_buf(),
        None => run_dir.join(format!("screen-{}", crate::data::path_component(&cell_type)?)),
    };
    let (pred_path, csv_path) = write_outputs(&out, &a, &rows, &cell_type)?;
    Ok(Screen {
        cell_type,
        model: run.record.train.model.variant_name(),
        rows,
        pred: pred_path,
        csv: csv_path,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The store's index and spelling of the cell type named `name`.
fn cell_type_of(store: &crate::data::store::Store, name: &str) -> Result<(usize, String)> {
    let m = &store.manifest;
    let target = store.cell_type_index(name).ok_or_else(|| {
        Error::invalid("--cell-type", format!("`{name}` is not a cell type of the store (have: {})", m.cell_types.join(", ")))
    })?;
    Ok((target, m.cell_types[target].clone()))
}

/// The expression of `cells` of `store`, `[cells, genes]`.
fn expression_rows(store: &crate::data::store::Store, cells: &[u32]) -> Vec<f32> {
    let g = store.n_genes();
    let mut rows = vec![0.0f32; cells.len() * g];
    for (row, &cell) in rows.chunks_mut(g).zip(cells) {
        store.expression_row(cell as usize, row);
    }
    rows
}

/// Writes `pred.h5ad` and `screen.csv` into `out` (created); returns their paths.
fn write_outputs(out: &Path, a: &AnnData, rows: &[ScreenRow], cell_type: &str) -> Result<(PathBuf, PathBuf)> {
    let set = crate::data::output::OutputSet::begin(out, "screen directory")?;
    write_h5ad(&set.path("pred.h5ad"), a)?;
    crate::data::write_atomic(&set.path("screen.csv"), &csv(rows, cell_type)?)?;
    let paths = (set.final_path("pred.h5ad"), set.final_path("screen.csv"));
    set.commit()?;
    Ok(paths)
}

/// Appends to the trainer's model the perturbations of the GenePT file at `path` that the store
/// lacks (matched case-insensitively), sorted by name; returns their names.
fn add_genept_only(trainer: &mut Trainer, path: &Path) -> Result<Vec<String>> {
    let m = &trainer.store.manifest;
    let genept = crate::data::genept::GenePt::read(path)?;
    if genept.dim != m.embed_dim {
        return Err(Error::bad_file(
            path,
            "dimension",
            format!("{} values per gene, as in the run's store; found {}", m.embed_dim, genept.dim),
        ));
    }
    let known: HashSet<String> = m.perturbations.iter().map(|p| p.to_uppercase()).collect();
    let mut extra_names: Vec<&String> = genept.vectors.keys().filter(|g| !known.contains(&g.to_uppercase())).collect();
    extra_names.sort();
    let extra: Vec<f32> = extra_names.iter().flat_map(|g| genept.vectors[*g].iter().copied()).collect();
    trainer.extend_perturbations(&extra)?;
    Ok(extra_names.into_iter().cloned().collect())
}

/// Per perturbation index (of `n`): whether it has cells in the target cell type, and whether the
/// run trained on it there.
fn measured_and_trained(trainer: &Trainer, target: usize, n: usize) -> (Vec<bool>, Vec<bool>) {
    let store = trainer.store;
    let mut measured = vec![false; n];
    for (&p, &t) in store.cell_perturbation.iter().zip(&store.cell_type) {
        if t as usize == target {
            measured[p as usize] = true;
        }
    }
    let mut trained = vec![false; n];
    trainer.fold.train.iter().filter(|c| c.cell_type as usize == target).for_each(|c| trained[c.perturbation as usize] = true);
    (measured, trained)
}

/// The same control cells for every perturbation: `cells` of `pool`, without replacement when the
/// pool allows.
fn screen_controls(pool: &[u32], cells: usize, rng: &mut impl Rng) -> Vec<u32> {
    if pool.len() >= cells {
        let mut idx = sample(rng, pool.len(), cells).into_vec();
        idx.sort_unstable();
        idx.into_iter().map(|i| pool[i]).collect()
    } else {
        (0..cells).map(|_| pool[rng.gen_range(0..pool.len())]).collect()
    }
}

/// A screen row's effect figures for the predicted mean `change` (the measured and trained flags
/// left false).
fn effect(name: &str, change: &[f64], genes: &[String], opts: &ScreenOptions) -> ScreenRow {
    let mut order: Vec<usize> = (0..change.len()).collect();
    order.sort_by(|&i, &j| change[j].total_cmp(&change[i]).then(i.cmp(&j)));
    let named = |i: &usize| (genes[*i].clone(), change[*i]);
    ScreenRow {
        perturbation: name.to_string(),
        measured_in_target: false,
        trained_in_target: false,
        effect_norm: change.iter().map(|c| c * c).sum::<f64>().sqrt(),
        genes_moved: change.iter().filter(|c| c.abs() > opts.threshold).count(),
        top_up: order.iter().take(opts.top_genes).filter(|&&i| change[i] > 0.0).map(named).collect(),
        top_down: order.iter().rev().take(opts.top_genes).filter(|&&i| change[i] < 0.0).map(named).collect(),
    }
}

/// `screen.csv`: rank, perturbation, cell type, measured_in_target, trained_in_target, effect_norm,
/// genes_moved, top_up and top_down as `GENE:change` separated by `;`.
pub fn csv(rows: &[ScreenRow], cell_type: &str) -> Result<Vec<u8>> {
    let genes = |v: &[(String, f64)]| v.iter().map(|(g, c)| format!("{g}:{c:.4}")).collect::<Vec<_>>().join(";");
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let header = [
        "rank",
        "perturbation",
        "cell_type",
        "measured_in_target",
        "trained_in_target",
        "effect_norm",
        "genes_moved",
        "top_up",
        "top_down",
    ];
    let lines = rows.iter().enumerate().map(|(i, r)| {
        vec![
            (i + 1).to_string(),
            r.perturbation.clone(),
            cell_type.to_string(),
            yes_no(r.measured_in_target),
            yes_no(r.trained_in_target),
            format!("{:.6}", r.effect_norm),
            r.genes_moved.to_string(),
            genes(&r.top_up),
            genes(&r.top_down),
        ]
    });
    super::csv_bytes(std::iter::once(header.map(String::from).to_vec()).chain(lines))
}
