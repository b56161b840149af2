//! The `ptrag-engine` command line. Every error becomes one line on stderr and exit code 1.

use clap::{Parser, Subcommand};
use ptrag_engine::cuda::DeviceChoice;
use ptrag_engine::data::split::SplitFile;
use ptrag_engine::data::store::Store;
use ptrag_engine::data::synth::{self, SynthConfig};
use ptrag_engine::train::options::TrainOptions;
use ptrag_engine::train::run::{self, RunControl, RunRecord};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

// A caching allocator: a training step allocates and frees many multi-megabyte buffers, which
// glibc serves with fresh mmap pages (page faults, zeroing) every time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (index 15 in both its v2 and v3 option lists).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells the allocator to keep freed memory for reuse instead of returning it to the OS after
/// 10 ms: each training step frees and reallocates the same multi-megabyte tensors, and returning
/// them made every step fault its pages in again (measured with `bench --model state --steps 3`:
/// 7.2 s -> 3.8 s per step; docs/benchmarks.md). `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a global allocator option; mimalloc reads options atomically and the value
        // -1 ("never purge") is documented for this option.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser)]
#[command(name = "ptrag-engine", version, about = "Predict perturbed cell populations with STATE and PT-RAG")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
}

// (parsed once; the size of the options struct does not matter)
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Generate the built-in synthetic Perturb-seq benchmark as a dataset store.
    Synth {
        /// tiny (tests), small (default for `train`), or replogle (Replogle-Nadig sized, ~650k cells).
        #[arg(long, default_value = "small")]
        preset: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// How cell-type-specific the planted biology is, in [0, 1): the share of pathways silent
        /// per cell type; above 0.25 (the default data) more perturbations belong to two pathways
        /// and act through only one of them, chosen per cell type (docs/design.md, "Context specificity").
        #[arg(long, default_value_t = 0.25)]
        context_specificity: f64,
        /// Output directory (default: data/synth-<preset>, or data/synth-<preset>-cs<X> at another
        /// context specificity).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Train STATE, STATE+GenePT, Vanilla RAG or PT-RAG on a dataset store (default: the built-in
    /// `small` data, generated and cached).
    Train(TrainOptions),
    /// The paper's experiment in one command: train STATE, STATE+GenePT, Vanilla RAG and PT-RAG on
    /// one target cell type (the `train` defaults, or the options given), then evaluate them into
    /// `<run-dir>/report` (default run-dir: runs/reproduce-<target>-<seed>). Finished models are kept
    /// and unfinished ones resumed when run again.
    Reproduce(TrainOptions),
    /// Evaluate trained runs on their test conditions with the paper's metrics, the control and
    /// training-mean baselines, and Mann-Whitney U / Benjamini-Hochberg between models.
    Evaluate {
        /// Run directories (one per model; an `all` run counts every fold).
        #[arg(required_unless_present = "pred", conflicts_with = "pred")]
        runs: Vec<PathBuf>,
        /// Score a prediction file of any tool instead (cell-eval's convention): with --real.
        #[arg(long, requires = "real")]
        pred: Option<PathBuf>,
        /// The real cells for --pred, control cells included.
        #[arg(long, requires = "pred")]
        real: Option<PathBuf>,
        /// With --pred: the obs column of the perturbation.
        #[arg(long, default_value = "gene")]
        pert_col: String,
        /// With --pred: the obs column of the cell type [default: every cell one cell type].
        #[arg(long)]
        celltype_col: Option<String>,
        /// With --pred: the control label.
        #[arg(long, default_value = "non-targeting")]
        control_pert: String,
        /// Report directory.
        #[arg(long, default_value = "runs/evaluation")]
        out: PathBuf,
        /// DEG rule: paper (Welch p < 0.05) or reference (p <= 0.1 and |log2 FC| >= 0.05).
        #[arg(long, value_enum, default_value = "paper")]
        deg_rule: ptrag_engine::eval::metrics::DegRule,
        #[arg(long, default_value_t = 50)]
        pca_components: usize,
        /// Compatibility: W1/W2/energy/MMD as means of 1-D distances per principal component, as the
        /// paper's evaluator computed them (labelled in the report).
        #[arg(long)]
        per_component: bool,
    },
    /// Draw the `evaluate` reports of one experiment at several run lengths as test metrics against
    /// training steps, the baselines as horizontal lines; prints the table with q-values.
    LearningCurve {
        /// Report directories (each holding an `evaluate` summary.json).
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// The SVG to write.
        #[arg(long, default_value = "learning-curve.svg")]
        out: PathBuf,
    },
    /// How this binary was built (which CUDA kernel families) and which GPU and driver it can use.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Turn a Replogle-Nadig-style .h5ad, a GenePT file and a cell-load split into a dataset store.
    Prepare(PrepareArgs),
    /// Summarise an .h5ad or a dataset store: cells, genes, matrices, perturbations and controls
    /// per cell type, cells per perturbation, zeros.
    Inspect {
        /// An .h5ad file or a store directory.
        path: PathBuf,
        #[arg(long, default_value = "gene")]
        pert_col: String,
        #[arg(long, default_value = "cell_line")]
        cell_type_col: String,
        #[arg(long, default_value = "non-targeting")]
        control: String,
    },
    /// Write a dataset store (e.g. the built-in data) as data.h5ad, genept.safetensors and
    /// split.toml, for other tools or for `prepare`.
    Export {
        /// A store directory.
        store: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Time whole training steps (forward, backward, clipping, Adam) at the paper's shapes on
    /// synthetic inputs: seconds per step, cells/s, model FLOP/s, and with --breakdown per op family.
    Bench {
        #[arg(long, value_enum, default_value = "pt-rag")]
        model: ptrag_engine::model::ModelKind,
        /// cpu, cuda, or auto (a GPU when one is usable, else the CPU).
        #[arg(long, value_enum, default_value = "cpu")]
        device: ptrag_engine::cuda::DeviceChoice,
        #[arg(long, default_value_t = 64)]
        sets: usize,
        #[arg(long, default_value_t = 64)]
        cells: usize,
        /// Timed steps, after one untimed warm-up step.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long)]
        breakdown: bool,
        #[arg(long)]
        json: bool,
    },
    /// Parameters and FLOPs per cell of the four models beside the paper's Table 7: as this engine
    /// computes them and in the reference's accounting.
    Profile {
        /// One model (default: all four).
        #[arg(long, value_enum)]
        model: Option<ptrag_engine::model::ModelKind>,
        /// Cells per set (S).
        #[arg(long, default_value_t = 64)]
        cells: usize,
        #[arg(long)]
        json: bool,
    },
    /// Write a trained run's predictions and the real cells of its test perturbations as
    /// `pred.h5ad` and `real.h5ad` (with the real controls in both) for cell-eval or scanpy; with
    /// --screen, an in-silico screen: perturbations predicted in one cell type, measured there or
    /// not, ranked by predicted effect (`pred.h5ad`, `screen.csv`).
    Predict {
        /// A run directory (an `all` run writes one pair per cell type).
        run: PathBuf,
        /// Output directory [default: RUN/predictions].
        #[arg(long)]
        out: Option<PathBuf>,
        /// obs column for the perturbation.
        #[arg(long, default_value = "gene")]
        pert_col: String,
        /// obs column for the cell type.
        #[arg(long, default_value = "cell_line")]
        cell_type_col: String,
        /// Write a baseline's predictions instead of the model's [default out: RUN/predictions-BASELINE].
        #[arg(long, value_enum, conflicts_with = "screen")]
        baseline: Option<ptrag_engine::eval::baselines::Baseline>,
        /// Write predictions as computed, negative values included (default: clamped at 0, as
        /// cell-eval expects); `evaluate --pred/--real` then reproduces the run's `evaluate`.
        #[arg(long, conflicts_with = "screen")]
        unclamped: bool,
        /// An in-silico screen [default out: RUN/screen-<cell type>].
        #[arg(long)]
        screen: bool,
        /// With --screen: `all` (every perturbation of the store) or a file with one name per line.
        #[arg(long, default_value = "all", requires = "screen")]
        perturbations: String,
        /// With --screen: the cell type to screen in [default: the run's target].
        #[arg(long, requires = "screen")]
        cell_type: Option<String>,
        /// With --screen, for the GenePT-based models: a GenePT file whose genes without cells in
        /// the store are screened too.
        #[arg(long, requires = "screen")]
        genept: Option<PathBuf>,
        /// With --screen: control cells predicted per perturbation (the same cells for each).
        #[arg(long, default_value_t = 64, requires = "screen")]
        cells: usize,
        /// With --screen: |predicted mean change| above which a gene counts as moved.
        #[arg(long, default_value_t = 0.1, requires = "screen")]
        threshold: f64,
    },
}

#[derive(clap::Args)]
struct PrepareArgs {
    /// The AnnData file.
    #[arg(long)]
    h5ad: PathBuf,
    /// GenePT vectors: .pickle/.pkl (dict symbol -> vector), .npz, .safetensors or .tsv; `none`
    /// for a store without them (STATE only).
    #[arg(long)]
    genept: PathBuf,
    /// cell-load few-shot split TOML; without it, a seeded split with the real files' proportions.
    #[arg(long)]
    split: Option<PathBuf>,
    /// The store directory to create (must not exist).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "gene")]
    pert_col: String,
    #[arg(long, default_value = "cell_line")]
    cell_type_col: String,
    /// Batch column (gem group); `none` puts every cell in one batch.
    #[arg(long, default_value = "gem_group")]
    batch_col: String,
    #[arg(long, default_value = "non-targeting")]
    control: String,
    /// auto (obsm X_hvg if present, else X), X, obsm:KEY or layers:KEY.
    #[arg(long, default_value = "auto")]
    expression: String,
    /// var column of gene symbols [default: gene_name if present, else the var index].
    #[arg(long)]
    var_names: Option<String>,
    /// Expression storage in the store: f16 (half the size) or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// Seed of a generated split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// none (store the values as found) or total-log1p (scanpy's normalize_total + log1p); required
    /// when the values are integer counts.
    #[arg(long)]
    normalize: Option<String>,
    /// The per-cell total of `--normalize total-log1p`.
    #[arg(long, default_value_t = ptrag_engine::data::prepare::DEFAULT_TARGET_SUM)]
    target_sum: f32,
    /// Keep only the N most variable genes (scanpy's highly_variable_genes, flavor "seurat").
    #[arg(long, value_name = "N")]
    hvg: Option<usize>,
    /// Perturbation labels whose cells are left out (e.g. --drop unassigned multiple).
    #[arg(long, num_args = 1.., value_name = "LABEL")]
    drop: Vec<String>,
    /// Leave out conditions (perturbation, cell type) with fewer cells; controls are kept.
    #[arg(long, default_value_t = 0, value_name = "N")]
    min_cells: usize,
}

fn prepare_command(a: PrepareArgs, progress: bool) -> ptrag_engine::Result<()> {
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

fn open_data(data: Option<&PathBuf>, preset: &str, progress: bool) -> ptrag_engine::Result<Store> {
    match data {
        Some(dir) => Store::open(dir),
        None => synth::ensure(&SynthConfig::preset(preset, 42)?, &PathBuf::from(format!("data/synth-{preset}")), progress),
    }
}

/// Ctrl-C sets `STOP`; training checkpoints after the current step and exits. A second Ctrl-C exits at once.
static STOP: AtomicBool = AtomicBool::new(false);

fn train_command(opts: TrainOptions, progress: bool) -> ptrag_engine::Result<Vec<run::RunSummary>> {
    let opts = opts.with_config_file()?;
    let (record, run_dir, resume) = match &opts.resume {
        Some(dir) => {
            let extra: Vec<String> = opts.set_names().into_iter().filter(|n| n != "--steps").collect();
            if !extra.is_empty() {
                return Err(ptrag_engine::Error::invalid(
                    "--resume",
                    format!(
                        "continues the configuration recorded in {}; only --steps may change (got {})",
                        dir.join(run::CONFIG).display(),
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
            let store = open_data(opts.data.as_ref(), opts.preset.as_deref().unwrap_or("small"), progress)?;
            let target = opts.target_cell_type.clone().unwrap_or_else(|| store.manifest.cell_types[0].clone());
            let train = opts.resolve(&store, &target)?;
            let data = std::fs::canonicalize(&store.dir).map_err(|e| ptrag_engine::Error::io(&store.dir, e))?;
            let split = match &opts.split {
                Some(p) => std::fs::canonicalize(p).map_err(|e| ptrag_engine::Error::io(p, e))?,
                None => data.join("split.toml"),
            };
            let run_dir = opts.run_dir(&train);
            let data_fingerprint = store.manifest.fingerprint.clone();
            (RunRecord { data, split, train, data_fingerprint }, run_dir, false)
        }
    };
    let store = Store::open(&record.data)?;
    let split = SplitFile::read(&record.split)?;
    let gpu = opts.device.unwrap_or(DeviceChoice::Cpu).open(|m| eprintln!("{m}"))?;
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
        println!("    MSE of mean expression change, model     {:.5}", t.mse_change);
        println!("    MSE of mean expression change, control   {:.5}  (baseline: predict the control mean)", t.mse_change_control_baseline);
        let strongest = s.baselines_mse_change.iter().min_by(|a, b| a.1.total_cmp(b.1));
        if let Some((name, value)) = strongest {
            println!("    MSE of mean expression change, {name:<9} {value:.5}  (the strongest baseline; `evaluate` compares them all)");
        }
        if let Some(k) = t.mean_selected {
            println!("    candidates selected per cell (of {})    {k:.2}", record.train.model.top_k);
        }
        println!("  run directory: {}", s.run_dir.display());
    }
    Ok(summaries)
}

/// Ctrl-C sets `STOP` (training checkpoints after the current step); a second Ctrl-C exits at once.
fn install_ctrl_c() -> ptrag_engine::Result<()> {
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
/// With `--candidate-context`, `--response-readout`, `--logit-norm`, `--anchor-output` or
/// `--similarity-features` (options beyond the paper),
/// the four stay the paper's and the retrieval models are trained once more with those options
/// (`vanilla-rag+both`, `pt-rag+both+readout`, ...), beside them in the same report.
fn reproduce_command(opts: TrainOptions, progress: bool) -> ptrag_engine::Result<()> {
    use ptrag_engine::eval::report::{evaluate_into, EvalOptions};
    use ptrag_engine::model::ModelKind;
    let opts = opts.with_config_file()?;
    if opts.model.is_some() || opts.resume.is_some() {
        return Err(ptrag_engine::Error::invalid("reproduce", "trains all four models itself; --model and --resume do not apply"));
    }
    let store = open_data(opts.data.as_ref(), opts.preset.as_deref().unwrap_or("small"), progress)?;
    let target = opts.target_cell_type.clone().unwrap_or_else(|| store.manifest.cell_types[0].clone());
    let root = opts
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/reproduce-{}-{}", target.to_lowercase(), opts.seed.unwrap_or(42))));
    // The paper's four without the options beyond the paper; then the variants that have them.
    let paper = TrainOptions {
        candidate_context: None,
        response_readout: None,
        logit_norm: None,
        anchor_output: None,
        similarity_features: None,
        ..opts.clone()
    };
    let mut runs: Vec<(ModelKind, TrainOptions)> = ModelKind::ALL.iter().map(|&k| (k, paper.clone())).collect();
    let beyond = [
        opts.candidate_context.is_some(),
        opts.response_readout.is_some(),
        opts.logit_norm.is_some(),
        opts.anchor_output.is_some(),
        opts.similarity_features.is_some(),
    ];
    if beyond.contains(&true) {
        let vanilla = TrainOptions { response_readout: None, logit_norm: None, ..opts.clone() };
        if vanilla.candidate_context.is_some() || vanilla.similarity_features.is_some() {
            runs.push((ModelKind::VanillaRag, vanilla));
        }
        runs.push((ModelKind::PtRag, opts.clone()));
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
        if dir.join(run::METRICS).exists() {
            eprintln!("{name}: finished run kept in {}", dir.display());
            continue;
        }
        o.run_dir = Some(dir.clone());
        if dir.join(run::CONFIG).exists() {
            o = TrainOptions { resume: Some(dir), steps: opts.steps, ..TrainOptions::default() };
        }
        train_command(o, progress)?;
    }
    let runs = dirs;
    let out = root.join("report");
    println!("{}", evaluate_into(&runs, &EvalOptions::default(), &out, progress)?);
    println!("report in {}", out.display());
    Ok(())
}

fn run(cli: Cli) -> ptrag_engine::Result<()> {
    match cli.command {
        Command::Synth { preset, seed, context_specificity, out } => {
            let cfg = SynthConfig::preset(&preset, seed)?.with_context_specificity(context_specificity)?;
            let out = out.unwrap_or_else(|| match cfg.context_specificity {
                None => PathBuf::from(format!("data/synth-{preset}")),
                Some(x) => PathBuf::from(format!("data/synth-{preset}-cs{x}")),
            });
            let report = synth::generate(&cfg, &out, !cli.quiet)?;
            println!(
                "wrote {} cells x {} genes to {} ({:.1} MB) in {:.1} s",
                report.cells,
                cfg.genes,
                report.dir.display(),
                report.bytes as f64 / 1e6,
                report.seconds
            );
        }
        Command::Train(args) => {
            install_ctrl_c()?;
            train_command(args, !cli.quiet)?;
        }
        Command::Reproduce(args) => {
            install_ctrl_c()?;
            reproduce_command(args, !cli.quiet)?;
        }
        Command::Evaluate { runs, pred, real, pert_col, celltype_col, control_pert, out, deg_rule, pca_components, per_component } => {
            use ptrag_engine::eval::files::{evaluate_files_into, FilesOptions};
            use ptrag_engine::eval::report::{evaluate_into, EvalOptions};
            let opts = EvalOptions { deg_rule, pca_components, per_component, ..EvalOptions::default() };
            match (pred, real) {
                (Some(pred), Some(real)) => {
                    let name = pred.file_stem().map_or("prediction".into(), |s| s.to_string_lossy().into_owned());
                    let files = FilesOptions { pred, real, pert_col, cell_type_col: celltype_col, control: control_pert, name };
                    println!("{}", evaluate_files_into(&files, &opts, &out)?);
                }
                _ => println!("{}", evaluate_into(&runs, &opts, &out, !cli.quiet)?),
            }
            println!("per-condition values, summary and report in {}", out.display());
        }
        Command::LearningCurve { reports, out } => {
            print!("{}", ptrag_engine::eval::learning_curve::learning_curve(&reports, &out)?);
            println!("figure in {}", out.display());
        }
        Command::Bench { model, device, sets, cells, steps, breakdown, json } => {
            use ptrag_engine::bench::{bench, report, BenchOptions};
            let gpu = device.open(|m| eprintln!("{m}"))?;
            let r = bench(&BenchOptions { sets, cells, steps, gpu, ..BenchOptions::paper(model) }, breakdown)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("result serialises"));
            } else {
                print!("{}", report(&r));
            }
        }
        Command::Profile { model, cells, json } => {
            use ptrag_engine::model::ModelKind;
            use ptrag_engine::profile::{markdown, profile, Shapes};
            let shapes = Shapes { cells, ..Shapes::paper() };
            let kinds = model.map(|m| vec![m]).unwrap_or_else(|| ModelKind::ALL.to_vec());
            let profiles = kinds.into_iter().map(|k| profile(k, &shapes)).collect::<ptrag_engine::Result<Vec<_>>>()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&profiles).expect("profiles serialise"));
            } else {
                print!("{}", markdown(&profiles, &shapes));
            }
        }
        Command::Info { json } => {
            let info = ptrag_engine::cuda::engine_info();
            if json {
                println!("{}", serde_json::to_string_pretty(&info).expect("engine info serialises"));
            } else {
                print!("{info}");
            }
        }
        Command::Prepare(args) => prepare_command(args, !cli.quiet)?,
        Command::Inspect { path, pert_col, cell_type_col, control } => {
            print!("{}", ptrag_engine::data::inspect::inspect(&path, &pert_col, &cell_type_col, &control)?);
        }
        Command::Export { store, out } => {
            for p in ptrag_engine::data::prepare::export(&Store::open(&store)?, &out)? {
                println!("wrote {}", p.display());
            }
        }
        Command::Predict {
            run,
            out,
            pert_col,
            cell_type_col,
            baseline: None,
            screen: true,
            perturbations,
            cell_type,
            cells,
            threshold,
            genept,
            ..
        } => {
            use ptrag_engine::eval::screen::{screen, ScreenOptions};
            let opts = ScreenOptions {
                perturbations: (perturbations != "all").then(|| PathBuf::from(perturbations)),
                genept,
                cell_type: cell_type.clone(),
                cells,
                threshold,
                pert_col,
                cell_type_col,
                ..ScreenOptions::default()
            };
            let s = screen(&run, out.as_deref(), &opts, !cli.quiet)?;
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
            print!("{}", ptrag_engine::eval::screen::csv(&s.rows[..s.rows.len().min(10)], &s.cell_type));
            println!("wrote {} and {}", s.pred.display(), s.csv.display());
        }
        Command::Predict { run, out, pert_col, cell_type_col, baseline, unclamped, .. } => {
            use ptrag_engine::eval::predict::{predict_run, PredictOptions};
            let out = out.unwrap_or_else(|| match baseline {
                Some(b) => run.join(format!("predictions-{}", b.name())),
                None => run.join("predictions"),
            });
            for (pred, real) in predict_run(&run, &out, &PredictOptions { pert_col, cell_type_col, baseline, unclamped }, !cli.quiet)? {
                println!("wrote {} and {}", pred.display(), real.display());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ ptrag_engine::Error::Interrupted { .. }) => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
