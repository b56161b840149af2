//! The `ptrag-engine` command line. Every error becomes one line on stderr and exit code 1.

mod cli;

use clap::{Parser, Subcommand};
use ptrag_engine::data::store::Store;
use ptrag_engine::train::options::TrainOptions;
use std::path::PathBuf;
use std::process::ExitCode;

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
        /// tiny (tests), small (the original benchmark), calibrated (its biology calibrated to real
        /// cross-cell-line statistics), or replogle (Replogle-Nadig sized, ~650k cells).
        #[arg(long, default_value = ptrag_engine::data::synth::DEFAULT_PRESET)]
        preset: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// How cell-type-specific the planted biology is, in [0, 1). On tiny, small and replogle:
        /// the share of pathways silent per cell type (default 0.25); above 0.25 more perturbations
        /// belong to two pathways and act through only one of them, chosen per cell type. On
        /// calibrated: the rewired share of each pathway's program per cell type (its default is
        /// the calibrated one). docs/design.md, "Context specificity".
        #[arg(long)]
        context_specificity: Option<f64>,
        /// Calibration only: the calibrated preset's mechanism strengths as JSON, every field of
        /// `Biology` (docs/design.md, "The calibrated preset"); recorded in the store's source.
        #[arg(long)]
        biology: Option<String>,
        /// Output directory (default: data/synth-<preset>, or data/synth-<preset>-cs<X> at another
        /// context specificity).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write the planted means (each condition's expected change and each control pool's
        /// expected mean: the truth the noise floor and oracles are measured with). Always on for
        /// tiny and small; opt-in for replogle (some 40 minutes on 2 cores, scaled from small).
        #[arg(long)]
        truth: bool,
    },
    /// Train STATE, STATE+GenePT, Vanilla RAG or PT-RAG on a dataset store (default: the built-in
    /// `calibrated` data, generated and cached).
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
        deg_rule: ptrag_engine::score::metrics::DegRule,
        /// Principal components of the distributional metrics.
        #[arg(long, default_value_t = 50, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10000))]
        pca_components: usize,
        /// Compatibility: W1/W2/energy/MMD as means of 1-D distances per principal component, as the
        /// paper's evaluator computed them (labelled in the report).
        #[arg(long)]
        per_component: bool,
        /// Draws of paired control cells a model's predicted mean change is averaged over (the
        /// distributional metrics keep the first draw's cells; baselines and oracles need none).
        #[arg(long, default_value_t = ptrag_engine::train::DEFAULT_EVAL_DRAWS,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=ptrag_engine::train::MAX_EVAL_DRAWS as u64))]
        eval_draws: usize,
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
        /// Timed steps, after one untimed warm-up step (at most 10,000: a median needs no more).
        #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
        steps: usize,
        #[arg(long)]
        breakdown: bool,
        #[command(flatten)]
        beyond: ptrag_engine::model::BeyondPaper,
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
        #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
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
        baseline: Option<ptrag_engine::score::baselines::Baseline>,
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
        #[arg(long, default_value_t = 0.1, requires = "screen", value_parser = non_negative_finite)]
        threshold: f64,
    },
}

/// A finite number of at least 0 (a threshold): NaN, infinities and negative values are refused.
fn non_negative_finite(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("a number: {e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("a finite number of at least 0, got {s}"))
    }
}

/// A finite number above 0 (a per-cell total): 0, NaN, infinities and negative values are refused.
fn positive_finite(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("a number: {e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("a finite number above 0, got {s}"))
    }
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
    #[arg(long, default_value_t = ptrag_engine::data::prepare::DEFAULT_TARGET_SUM, value_parser = positive_finite)]
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

/// Each named obs column (flag, name) is a different one: one column read or written as two
/// (`--pert-col x --cell-type-col x`) would be nonsense in, and duplicate HDF5 links out.
fn distinct_columns(columns: &[(&str, &str)]) -> ptrag_engine::Result<()> {
    for (i, (flag, name)) in columns.iter().enumerate() {
        if let Some((other, _)) = columns[..i].iter().find(|(_, n)| n == name) {
            return Err(ptrag_engine::Error::invalid(
                format!("{other} and {flag}"),
                format!("two different obs columns; both are `{name}`"),
            ));
        }
    }
    Ok(())
}

fn run(cli: Cli) -> ptrag_engine::Result<()> {
    let progress = !cli.quiet;
    match cli.command {
        Command::Synth { preset, seed, context_specificity, biology, out, truth } => {
            cli::synth_command(&preset, seed, context_specificity, biology.as_deref(), out, truth, progress)?
        }
        Command::Train(args) => {
            cli::install_ctrl_c()?;
            cli::train_command(args, progress)?;
        }
        Command::Reproduce(args) => {
            cli::install_ctrl_c()?;
            cli::reproduce_command(args, progress)?;
        }
        Command::Evaluate {
            runs,
            pred,
            real,
            pert_col,
            celltype_col,
            control_pert,
            out,
            deg_rule,
            pca_components,
            per_component,
            eval_draws,
        } => {
            use ptrag_engine::eval::files::{evaluate_files_into, FilesOptions};
            use ptrag_engine::eval::report::{evaluate_into, EvalOptions};
            let opts = EvalOptions { deg_rule, pca_components, per_component, draws: eval_draws, ..EvalOptions::default() };
            match (pred, real) {
                (Some(pred), Some(real)) => {
                    if let Some(c) = &celltype_col {
                        distinct_columns(&[("--pert-col", &pert_col), ("--celltype-col", c)])?;
                    }
                    let name = pred.file_stem().map_or("prediction".into(), |s| s.to_string_lossy().into_owned());
                    let files = FilesOptions { pred, real, pert_col, cell_type_col: celltype_col, control: control_pert, name };
                    println!("{}", evaluate_files_into(&files, &opts, &out)?);
                }
                _ => println!("{}", evaluate_into(&runs, &opts, &out, progress)?),
            }
            println!("per-condition values, summary and report in {}", out.display());
        }
        Command::LearningCurve { reports, out } => {
            print!("{}", ptrag_engine::eval::learning_curve::learning_curve(&reports, &out)?);
            println!("figure in {}", out.display());
        }
        Command::Bench { model, device, sets, cells, steps, breakdown, beyond, json } => {
            cli::bench_command(model, device, [sets, cells, steps], beyond, breakdown, json)?
        }
        Command::Profile { model, cells, json } => cli::profile_command(model, cells, json)?,
        Command::Info { json } => cli::print(&ptrag_engine::cuda::engine_info(), json),
        Command::Prepare(args) => {
            let mut columns = vec![("--pert-col", args.pert_col.as_str()), ("--cell-type-col", args.cell_type_col.as_str())];
            if args.batch_col != "none" {
                columns.push(("--batch-col", args.batch_col.as_str()));
            }
            distinct_columns(&columns)?;
            cli::prepare_command(args, progress)?
        }
        Command::Inspect { path, pert_col, cell_type_col, control } => {
            distinct_columns(&[("--pert-col", &pert_col), ("--cell-type-col", &cell_type_col)])?;
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
            use ptrag_engine::eval::screen::ScreenOptions;
            distinct_columns(&[("--pert-col", &pert_col), ("--cell-type-col", &cell_type_col)])?;
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
            cli::screen_command(&run, out.as_deref(), &opts, cells, progress)?;
        }
        Command::Predict { run, out, pert_col, cell_type_col, baseline, unclamped, .. } => {
            use ptrag_engine::eval::predict::PredictOptions;
            distinct_columns(&[("--pert-col", &pert_col), ("--cell-type-col", &cell_type_col)])?;
            cli::predict_command(&run, out, &PredictOptions { pert_col, cell_type_col, baseline, unclamped }, progress)?
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

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;
    use std::any::TypeId;

    include!("../tests/common/numeric_options.rs");

    /// The hostile-value table of `tests/cli.rs` lists exactly the numeric options the parser has.
    #[test]
    fn the_hostile_value_table_lists_every_numeric_option() {
        let numeric = [
            TypeId::of::<usize>(),
            TypeId::of::<u64>(),
            TypeId::of::<u32>(),
            TypeId::of::<i64>(),
            TypeId::of::<f64>(),
            TypeId::of::<f32>(),
        ];
        let mut parsed: Vec<(String, String)> = Vec::new();
        for command in Cli::command().get_subcommands() {
            for arg in command.get_arguments() {
                let parser = arg.get_value_parser();
                if numeric.iter().any(|t| parser.type_id() == *t) {
                    let long = arg.get_long().expect("numeric options are long options");
                    parsed.push((command.get_name().to_string(), format!("--{long}")));
                }
            }
        }
        let mut table: Vec<(String, String)> = NUMERIC_OPTIONS.iter().map(|(c, o)| (c.to_string(), o.to_string())).collect();
        parsed.sort();
        table.sort();
        assert_eq!(parsed, table);
        assert_eq!(HOSTILE_VALUES.len(), 6);
    }
}
