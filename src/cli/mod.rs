//! What each `ptrag-engine` command does beyond parsing (`main.rs` parses and dispatches).

use crate::PrepareArgs;
use ptrag_engine::cuda::DeviceChoice;
use ptrag_engine::data::split::SplitFile;
use ptrag_engine::data::store::Store;
use ptrag_engine::data::synth::{self, SynthConfig};
use ptrag_engine::eval::predict::{predict_run, PredictOptions};
use ptrag_engine::eval::screen::{screen, ScreenOptions};
use ptrag_engine::model::{BeyondPaper, ModelKind};
use ptrag_engine::train::options::TrainOptions;
use ptrag_engine::train::run;
use ptrag_engine::train::run_dir::{self, RunControl, RunRecord, RunSummary};
use ptrag_engine::Result;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub fn prepare_command(a: PrepareArgs, progress: bool) -> Result<()> {
    use ptrag_engine::data::prepare::{prepare, Normalize, PrepareOptions};
    use ptrag_engine::data::store::ExprDtype;
    let dtype = match a.dtype.as_str() {
        "f16" => ExprDtype::F16,
        "f32" => ExprDtype::F32,
        other => return Err(ptrag_engine::Error::invalid("--dtype", format!("f16 or f32, found `{other}`"))),
    };
    let opts = PrepareOptions {
        split: a.split,
        pert_col: a.pert_col,
        cell_type_col: a.cell_type_col,
        batch_col: (a.batch_col != "none").then_some(a.batch_col),
        control: a.control,
        expression: a.expression,
        var_names: a.var_names,
        dtype,
        seed: a.seed,
        normalize: a.normalize.map(|n| Normalize::parse(&n, a.target_sum)).transpose()?,
        hvg: a.hvg,
        drop: a.drop,
        min_cells: a.min_cells,
        genept: (a.genept.as_os_str() != "none").then_some(a.genept),
        ..PrepareOptions::new(a.h5ad, PathBuf::new(), a.out)
    };
    let r = prepare(&opts, progress)?;
    println!("values: {}; normalization: {}", r.values_found, r.normalization);
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "wrote {}: {} cells x {} genes from {}, {} perturbations ({}), cell types {}, {} batches, in {:.1} s",
        r.store.display(),
        r.cells,
        r.genes,
        r.expression,
        r.perturbations,
        match r.embed_dim {
            0 => "no GenePT vectors: STATE only".to_string(),
            _ => format!("GenePT covers {} of {}", r.genept_coverage.0, r.genept_coverage.1),
        },
        r.cell_types.iter().map(|(t, n)| format!("{t} ({n})")).collect::<Vec<_>>().join(", "),
        r.batches,
        r.seconds
    );
    if !r.dropped_perturbations.is_empty() {
        println!(
            "dropped {} perturbations without a GenePT vector ({} cells): {}",
            r.dropped_perturbations.len(),
            r.dropped_cells,
            r.dropped_perturbations.join(", ")
        );
    }
    for (label, cells) in &r.dropped_labels {
        println!("dropped label `{label}` ({cells} cells)");
    }
    if !r.dropped_conditions.is_empty() {
        let list: Vec<String> = r.dropped_conditions.iter().map(|(p, t, c)| format!("{p} in {t} ({c})")).collect();
        println!("dropped {} conditions with fewer than {} cells: {}", list.len(), opts.min_cells, list.join(", "));
    }
    if !r.perturbations_without_cells.is_empty() {
        println!("perturbations left without cells, not in the store: {}", r.perturbations_without_cells.join(", "));
    }
    println!("split: {}", r.split);
    Ok(())
}

pub fn open_data(data: Option<&PathBuf>, preset: &str, progress: bool) -> Result<Store> {
    match data {
        Some(dir) => Store::open(dir),
        None => synth::ensure(&SynthConfig::preset(preset, 42)?, &PathBuf::from(format!("data/synth-{preset}")), progress),
    }
}

/// Ctrl-C sets `STOP`; training checkpoints after the current step and exits. A second Ctrl-C exits at once.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn train_command(opts: TrainOptions, progress: bool) -> Result<Vec<RunSummary>> {
    let opts = opts.with_config_file()?;
    let (record, run_dir, resume) = run_record(&opts, progress)?;
    let store = Store::open(&record.data)?;
    let split = SplitFile::read(&record.split)?;
    let gpu = opts.device.unwrap_or(DeviceChoice::Cpu).open(|m| eprintln!("{m}"))?;
    // A directory another process is training fails here, before the banner, as one line; `execute`
    // then holds the lock for the whole run.
    drop(ptrag_engine::data::lock::DirLock::acquire(&run_dir, "run directory")?);
    let t = &record.train;
    eprintln!(
        "{} {} on {} ({} cells, {} genes), target cell type {}, {} steps of {} sets x {} cells -> {}",
        if resume { "resuming" } else { "training" },
        t.model.kind.label(),
        store.dir.display(),
        store.n_cells(),
        store.n_genes(),
        t.target_cell_type,
        t.steps,
        t.sets_per_batch,
        t.cells_per_set,
        run_dir.display()
    );
    let ctl = RunControl { progress, stop: Some(&STOP), gpu };
    let summaries = run::execute(&record, &store, &split, &run_dir, resume, &ctl)?;
    for s in &summaries {
        print_summary(s, record.train.model.top_k);
    }
    Ok(summaries)
}

/// The run `train` is asked for: a new one from the options (`resume` false), or the one recorded
/// in `--resume DIR`, whose configuration only `--steps` may change.
fn run_record(opts: &TrainOptions, progress: bool) -> Result<(RunRecord, PathBuf, bool)> {
    Ok(match &opts.resume {
        Some(dir) => {
            let extra: Vec<String> = opts.set_names().into_iter().filter(|n| n != "--steps").collect();
            if !extra.is_empty() {
                return Err(ptrag_engine::Error::invalid(
                    "--resume",
                    format!(
                        "continues the configuration recorded in {}; only --steps may change (got {})",
                        dir.join(run_dir::CONFIG_FILE).display(),
                        extra.join(", ")
                    ),
                ));
            }
            let mut record = RunRecord::read(dir)?;
            if let Some(steps) = opts.steps {
                record.train.steps = steps;
            }
            (record, dir.clone(), true)
        }
        None => {
            let store = open_data(opts.data.as_ref(), opts.preset.as_deref().unwrap_or(synth::DEFAULT_PRESET), progress)?;
            let target = opts.target_cell_type.clone().unwrap_or_else(|| store.manifest.cell_types[0].clone());
            let train = opts.resolve(&store, &target)?;
            let data = std::fs::canonicalize(&store.dir).map_err(|e| ptrag_engine::Error::io(&store.dir, e))?;
            let split = match &opts.split {
                Some(p) => std::fs::canonicalize(p).map_err(|e| ptrag_engine::Error::io(p, e))?,
                None => data.join("split.toml"),
            };
            let run_dir = opts.run_dir(&train)?;
            let data_fingerprint = store.manifest.fingerprint.clone();
            (RunRecord { data, split, train, data_fingerprint }, run_dir, false)
        }
    })
}

/// What `train` prints of one fold's run.
fn print_summary(s: &RunSummary, top_k: usize) {
    let t = &s.test;
    println!(
        "{} on {}: {} steps at {:.0} cells/s; best validation energy {} at step {}; {} of {} parameters trained",
        s.model,
        s.target_cell_type,
        s.steps,
        s.cells_per_second,
        s.best_val_energy.map_or("-".to_string(), |v| format!("{v:.4}")),
        s.best_step,
        s.trainable_parameters,
        s.parameters
    );
    println!("  test split ({} conditions):", t.conditions);
    println!("    energy distance (half, as the loss)      {:.4}", t.energy);
    println!("    MSE of mean expression change, model     {:.5}  (mean over {} control draws)", t.mse_change, t.draws);
    println!("    MSE of mean expression change, control   {:.5}  (baseline: predict the control mean)", t.mse_change_control_baseline);
    let strongest = s.baselines_mse_change.iter().min_by(|a, b| a.1.total_cmp(b.1));
    if let Some((name, value)) = strongest {
        println!("    MSE of mean expression change, {name:<9} {value:.5}  (the strongest baseline; `evaluate` compares them all)");
    }
    if let Some(k) = t.mean_selected {
        println!("    candidates selected per cell (of {})    {k:.2}", top_k);
    }
    if let (Some(truth), Some(model)) = (&s.truth, t.mse_change_truth) {
        println!("  against the planted truth (synthetic data; MSE of the mean change):");
        println!(
            "    noise floor (observed vs planted)        {:.5}  (the planted means' own error: {:.1e})",
            truth.floor, truth.truth_mc_mse
        );
        println!("    {:<40} {:.5}", format!("{} vs planted", s.model), model);
        for (name, v) in &truth.baselines_mse_truth {
            println!("    {:<40} {v:.5}", format!("{name} vs planted"));
        }
        for (name, (observed, planted)) in &truth.oracles {
            println!("    {:<40} {observed:.5} vs observed, {planted:.5} vs planted  (not a method)", name);
        }
        println!("    oracle-selection fell back to the training mean on {} of {} conditions", truth.selection_fallbacks, truth.conditions);
    }
    println!("  run directory: {}", s.run_dir.display());
}

/// Ctrl-C sets `STOP` (training checkpoints after the current step); a second Ctrl-C exits at once.
pub fn install_ctrl_c() -> Result<()> {
    ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit at once)");
    })
    .map_err(|e| ptrag_engine::Error::invalid("Ctrl-C handler", e.to_string()))?;
    Ok(())
}

/// The paper's experiment in one command: the four models on one target cell type, then `evaluate`.
/// With options beyond the paper (`model::beyond::REGISTRY`), the four stay the paper's and every
/// model that one of them applies to is trained once more with those that apply to it
/// (`vanilla-rag+both`, `pt-rag+both+readout`, ...), beside them in the same report.
pub fn reproduce_command(opts: TrainOptions, progress: bool) -> Result<()> {
    use ptrag_engine::eval::report::{evaluate_into, EvalOptions};
    let opts = opts.with_config_file()?;
    if opts.model.is_some() || opts.resume.is_some() {
        return Err(ptrag_engine::Error::invalid("reproduce", "trains all four models itself; --model and --resume do not apply"));
    }
    let store = open_data(opts.data.as_ref(), opts.preset.as_deref().unwrap_or(synth::DEFAULT_PRESET), progress)?;
    let target = opts.target_cell_type.clone().unwrap_or_else(|| store.manifest.cell_types[0].clone());
    let root = opts
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/reproduce-{}-{}", target.to_lowercase(), opts.seed.unwrap_or(42))));
    // The paper's four without the options beyond the paper; then the variants that have them.
    let paper = TrainOptions { beyond: BeyondPaper::default(), ..opts.clone() };
    let mut runs: Vec<(ModelKind, TrainOptions)> = ModelKind::ALL.iter().map(|&k| (k, paper.clone())).collect();
    for kind in ModelKind::ALL {
        let beyond = opts.beyond.for_model(kind);
        if !beyond.set().is_empty() {
            runs.push((kind, TrainOptions { beyond, ..opts.clone() }));
        }
    }
    let mut dirs = Vec::new();
    for (kind, mut o) in runs {
        o.model = Some(kind);
        // Options of the retrieval models do not apply to the others.
        if !kind.retrieves() {
            (o.top_k, o.retrieval_db, o.self_retrieval_bug) = (None, None, None);
        }
        if kind != ModelKind::PtRag {
            (o.sparsity, o.tau, o.scorer_dropout, o.eval_selection) = (None, None, None, None);
        }
        let name = o.resolve(&store, &target)?.model.variant_name();
        let dir = root.join(&name);
        dirs.push(dir.clone());
        if dir.join(run_dir::METRICS_FILE).exists() {
            eprintln!("{name}: finished run kept in {}", dir.display());
            continue;
        }
        o.run_dir = Some(dir.clone());
        if dir.join(run_dir::CONFIG_FILE).exists() {
            o = TrainOptions { resume: Some(dir), steps: opts.steps, ..TrainOptions::default() };
        }
        train_command(o, progress)?;
    }
    let runs = dirs;
    let out = root.join("report");
    let eval = EvalOptions { draws: opts.eval_draws.unwrap_or(ptrag_engine::train::DEFAULT_EVAL_DRAWS), ..EvalOptions::default() };
    println!("{}", evaluate_into(&runs, &eval, &out, progress)?);
    println!("report in {}", out.display());
    Ok(())
}

/// `synth`: the built-in data set as a store (default `data/synth-<preset>[-cs<X>]`).
pub fn synth_command(
    preset: &str,
    seed: u64,
    context_specificity: Option<f64>,
    biology: Option<&str>,
    out: Option<PathBuf>,
    truth: bool,
    progress: bool,
) -> Result<()> {
    let mut cfg = SynthConfig::preset(preset, seed)?;
    if let Some(json) = biology {
        if cfg.biology.is_none() {
            return Err(ptrag_engine::Error::invalid("--biology", format!("applies to the calibrated preset, not {preset}")));
        }
        cfg.biology = Some(serde_json::from_str(json).map_err(|e| {
            ptrag_engine::Error::invalid("--biology", format!("every field of the calibrated preset's Biology as JSON ({e})"))
        })?);
    }
    if let Some(x) = context_specificity {
        cfg = cfg.with_context_specificity(x)?;
    }
    let out = out.unwrap_or_else(|| match cfg.context_specificity_of() {
        (_, true) => PathBuf::from(format!("data/synth-{preset}")),
        (x, false) => PathBuf::from(format!("data/synth-{preset}-cs{x}")),
    });
    let report = synth::generate(&cfg, &out, truth || synth::truth_by_default(preset), progress)?;
    println!(
        "wrote {} cells x {} genes to {} ({:.1} MB) in {:.1} s",
        report.cells,
        cfg.genes,
        report.dir.display(),
        report.bytes as f64 / 1e6,
        report.seconds
    );
    Ok(())
}

/// `predict --screen`: runs the screen and prints its summary and top rows.
pub fn screen_command(run: &Path, out: Option<&Path>, opts: &ScreenOptions, cells: usize, progress: bool) -> Result<()> {
    let s = screen(run, out, opts, progress)?;
    let unmeasured = s.rows.iter().filter(|r| !r.measured_in_target).count();
    println!(
        "{} perturbations predicted in {} by {} ({} never measured there), {} cells each, in {:.1} s",
        s.rows.len(),
        s.cell_type,
        s.model,
        unmeasured,
        cells,
        s.seconds
    );
    println!("largest predicted effects:");
    let top = ptrag_engine::eval::screen::csv(&s.rows[..s.rows.len().min(10)], &s.cell_type)?;
    print!("{}", String::from_utf8_lossy(&top));
    println!("wrote {} and {}", s.pred.display(), s.csv.display());
    Ok(())
}

/// A result as pretty JSON, or as its text form.
pub fn print<R: serde::Serialize + std::fmt::Display>(r: &R, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).expect("a result serialises"));
    } else {
        print!("{r}");
    }
}

/// `bench`: timed training steps of `model` at `[sets, cells, steps]`.
pub fn bench_command(
    model: ModelKind,
    device: DeviceChoice,
    [sets, cells, steps]: [usize; 3],
    beyond: BeyondPaper,
    breakdown: bool,
    json: bool,
) -> Result<()> {
    use ptrag_engine::bench::{bench, report, BenchOptions};
    let gpu = device.open(|m| eprintln!("{m}"))?;
    let r = bench(&BenchOptions { sets, cells, steps, gpu, beyond, ..BenchOptions::paper(model) }, breakdown)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).expect("result serialises"));
    } else {
        print!("{}", report(&r));
    }
    Ok(())
}

/// `profile`: parameters and FLOPs of one model, or of all four.
pub fn profile_command(model: Option<ModelKind>, cells: usize, json: bool) -> Result<()> {
    use ptrag_engine::profile::{markdown, profile, Shapes};
    let shapes = Shapes { cells, ..Shapes::paper() };
    let kinds = model.map(|m| vec![m]).unwrap_or_else(|| ModelKind::ALL.to_vec());
    let profiles = kinds.into_iter().map(|k| profile(k, &shapes)).collect::<Result<Vec<_>>>()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&profiles).expect("profiles serialise"));
    } else {
        print!("{}", markdown(&profiles, &shapes));
    }
    Ok(())
}

/// `predict`: a run's (or a baseline's) predictions as `pred.h5ad` + `real.h5ad` per cell type.
pub fn predict_command(run: &Path, out: Option<PathBuf>, opts: &PredictOptions, progress: bool) -> Result<()> {
    let out = out.unwrap_or_else(|| match opts.baseline {
        Some(b) => run.join(format!("predictions-{}", b.name())),
        None => run.join("predictions"),
    });
    for (pred, real) in predict_run(run, &out, opts, progress)? {
        println!("wrote {} and {}", pred.display(), real.display());
    }
    Ok(())
}
