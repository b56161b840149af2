//! The `ptrag-engine` command line. Every error becomes one line on stderr and exit code 1.

use clap::{Parser, Subcommand};
use ptrag_engine::data::split::SplitFile;
use ptrag_engine::data::store::Store;
use ptrag_engine::data::synth::{self, SynthConfig};
use ptrag_engine::model::ModelConfig;
use ptrag_engine::train::{self, optim::AdamConfig, TrainConfig};
use std::path::PathBuf;
use std::process::ExitCode;

// A caching allocator: a training step allocates and frees many multi-megabyte buffers, which
// glibc serves with fresh mmap pages (page faults, zeroing) every time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ptrag-engine", version, about = "Predict perturbed cell populations with STATE and PT-RAG")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the built-in synthetic Perturb-seq benchmark as a dataset store.
    Synth {
        /// tiny (tests), small (default for `train`), or replogle (Replogle-Nadig sized, ~650k cells).
        #[arg(long, default_value = "small")]
        preset: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output directory (default: data/synth-<preset>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Train STATE on a dataset store (default: the built-in `small` data, generated and cached).
    Train(TrainArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// A dataset store directory; without it the built-in data of `--preset` is used.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Built-in data preset when `--data` is not given.
    #[arg(long, default_value = "small")]
    preset: String,
    /// cell-load style split TOML (default: the store's split.toml).
    #[arg(long)]
    split: Option<PathBuf>,
    /// The held-out target cell type (default: the store's first cell type).
    #[arg(long)]
    target_cell_type: Option<String>,
    /// Optimisation steps. The defaults (400 steps of 16 sets x 16 cells) are a ~3-minute run on
    /// 2 cores on the `small` data; the paper ran 50,000 steps of 64 x 64.
    #[arg(long, default_value_t = 400)]
    steps: usize,
    #[arg(long, default_value_t = 16)]
    sets_per_batch: usize,
    #[arg(long, default_value_t = 16)]
    cells_per_set: usize,
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    #[arg(long, default_value_t = 8)]
    layers: usize,
    #[arg(long, default_value_t = 12)]
    heads: usize,
    #[arg(long, default_value_t = 58)]
    head_dim: usize,
    #[arg(long, default_value_t = 2784)]
    mlp: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Gradient-norm clipping threshold (0 = off).
    #[arg(long, default_value_t = 10.0)]
    clip_norm: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Validate every N steps (0 = only at the end).
    #[arg(long, default_value_t = 100)]
    val_every: usize,
    /// Initialise as the reference code does: PyTorch defaults for the output bias and the one-hot
    /// perturbation encoder (slower to train on short schedules).
    #[arg(long)]
    reference_init: bool,
    /// Keep PyTorch's default output-bias initialisation instead of the training mean expression.
    #[arg(long)]
    default_head_init: bool,
    /// Run directory (default: runs/state-<target>-<seed>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

fn train_command(args: TrainArgs, progress: bool) -> ptrag_engine::Result<()> {
    let store = match &args.data {
        Some(dir) => Store::open(dir)?,
        None => {
            let cfg = SynthConfig::preset(&args.preset, 42)?;
            synth::ensure(&cfg, &PathBuf::from(format!("data/synth-{}", args.preset)), progress)?
        }
    };
    let split_path = args.split.clone().unwrap_or_else(|| store.split_path.clone());
    let split = SplitFile::read(&split_path)?;
    let target = args.target_cell_type.clone().unwrap_or_else(|| store.manifest.cell_types[0].clone());
    let m = &store.manifest;
    let mut model = ModelConfig::paper(m.n_genes(), m.n_perturbations(), m.n_batches);
    model.reference_init = args.reference_init;
    (model.hidden, model.layers, model.heads, model.head_dim, model.mlp) = (args.hidden, args.layers, args.heads, args.head_dim, args.mlp);
    if model.hidden == 0 || model.layers == 0 || model.heads == 0 || model.head_dim == 0 || model.mlp == 0 {
        return Err(ptrag_engine::Error::invalid("model size", "hidden, layers, heads, head-dim and mlp must be at least 1"));
    }
    let adam = AdamConfig { lr: args.lr, weight_decay: args.weight_decay, clip_norm: args.clip_norm, ..AdamConfig::default() };
    let cfg = TrainConfig {
        model,
        adam,
        steps: args.steps,
        sets_per_batch: args.sets_per_batch,
        cells_per_set: args.cells_per_set,
        seed: args.seed,
        val_every: args.val_every,
        target_cell_type: target.clone(),
        head_bias_from_data: !(args.default_head_init || args.reference_init),
    };
    let run_dir = args.run_dir.unwrap_or_else(|| PathBuf::from(format!("runs/state-{}-{}", target.to_lowercase(), args.seed)));
    eprintln!(
        "training STATE on {} ({} cells, {} genes), target cell type {target}, {} steps of {} sets x {} cells -> {}",
        store.dir.display(),
        store.n_cells(),
        store.n_genes(),
        cfg.steps,
        cfg.sets_per_batch,
        cfg.cells_per_set,
        run_dir.display()
    );
    let s = train::run(cfg, &store, &split, &split_path, &run_dir, progress)?;
    let t = &s.test;
    println!(
        "trained {} steps at {:.0} cells/s; best validation energy {:.4} at step {}",
        s.steps, s.cells_per_second, s.best_val_energy, s.best_step
    );
    println!("test split ({} conditions of {target}):", t.conditions);
    println!("  energy distance (half, as the loss)      {:.4}", t.energy);
    println!("  MSE of mean expression change, STATE     {:.5}", t.mse_change);
    println!("  MSE of mean expression change, control   {:.5}  (baseline: predict the control mean)", t.mse_change_control_baseline);
    println!("run directory: {}", s.run_dir.display());
    Ok(())
}

fn run(cli: Cli) -> ptrag_engine::Result<()> {
    match cli.command {
        Command::Synth { preset, seed, out } => {
            let cfg = SynthConfig::preset(&preset, seed)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("data/synth-{preset}")));
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
        Command::Train(args) => train_command(args, !cli.quiet)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
