//! `bench`: whole training steps (forward, backward, clipping, Adam) of one model at the paper's
//! shapes on synthetic inputs, through the same `optimise_step` that `train` runs. Reports seconds
//! per step, cells per second and model FLOP/s (three times the forward FLOPs that `profile`
//! counts for this engine: forward plus a backward of twice the work; the energy loss is not
//! counted), and that rate as a fraction of the device's measured peak (`peak_gflops`); with
//! `breakdown`, where the time went by op family.

use crate::cuda::{tensor::RowTable, Gpu};
use crate::data::responses::ObservedResponses;
use crate::data::sampler::{Batch, CellValues};
use crate::model::knowledge::Knowledge;
use crate::model::{BeyondPaper, CandidateContext, Model, ModelConfig, ModelKind, OutputAnchor};
use crate::profile::{profile, Shapes};
use crate::tape::params::Params;
use crate::train::optim::{Adam, AdamConfig};
use crate::train::{device::GpuState, optimise_step, StepBreakdown};
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub kind: ModelKind,
    pub sets: usize,
    pub cells: usize,
    /// Timed steps (after `warmup` untimed ones).
    pub steps: usize,
    pub warmup: usize,
    pub shapes: Shapes,
    pub seed: u64,
    /// Where the steps run: None for the CPU engine.
    pub gpu: Option<Arc<Gpu>>,
    /// Options beyond the paper (`model::beyond`), as `train` takes them.
    pub beyond: BeyondPaper,
}

/// Cell types of the synthetic inputs: the paper's four, so that observed responses exist in
/// cell types other than the set's.
const CELL_TYPES: usize = 4;

impl BenchOptions {
    /// The paper's step: 64 sets of 64 cells at the Replogle-Nadig shapes.
    pub fn paper(kind: ModelKind) -> Self {
        BenchOptions {
            kind,
            sets: 64,
            cells: 64,
            steps: 5,
            warmup: 1,
            shapes: Shapes::paper(),
            seed: 42,
            gpu: None,
            beyond: BeyondPaper::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub device: String,
    /// On the CPU, the kernels' path (`cpu::cpu_path`: AVX-512, AVX2, scalar).
    pub cpu_path: String,
    pub threads: usize,
    pub sets: usize,
    pub cells: usize,
    pub steps: usize,
    /// Every timed step, in seconds.
    pub step_seconds: Vec<f64>,
    pub median_step_seconds: f64,
    pub cells_per_second: f64,
    pub model_flops_per_step: f64,
    pub achieved_gflops: f64,
    /// The device's measured f32 matrix-product peak (`peak_gflops`), and `achieved_gflops` over it.
    pub peak_gflops: f64,
    pub fraction_of_peak: f64,
    /// Summed over the timed steps, with `breakdown`.
    pub breakdown: Option<StepBreakdown>,
}

/// Random but plausible inputs: log-normalised-like expression, random perturbations and batches.
fn synthetic_batch(o: &BenchOptions, rng: &mut ChaCha8Rng) -> Batch {
    let (n, g) = (o.sets * o.cells, o.shapes.genes);
    let expression =
        |rng: &mut ChaCha8Rng| (0..n * g).map(|_| if rng.gen::<f32>() < 0.5 { 0.0 } else { rng.gen_range(0.0..4.0) }).collect();
    Batch {
        sets: o.sets,
        cells: o.cells,
        genes: g,
        values: Some(CellValues { control: expression(rng), target: expression(rng) }),
        // rows of the table `control ++ target` that a GPU bench keeps resident, as train does the dataset
        control_rows: (0..n as u32).collect(),
        target_rows: (n as u32..2 * n as u32).collect(),
        perturbation: (0..o.sets).map(|_| rng.gen_range(1..o.shapes.perturbations as u32)).collect(),
        cell_type: vec![0; o.sets],
        batch: (0..n).map(|_| rng.gen_range(0..o.shapes.batches as u32)).collect(),
    }
}

/// Observed mean changes of every database perturbation in each of `CELL_TYPES` cell types.
fn synthetic_responses(s: &Shapes, rng: &mut ChaCha8Rng) -> ObservedResponses {
    let mut vector = |scale: f64| -> Vec<f64> { (0..s.genes).map(|_| rng.gen_range(-scale..scale)).collect() };
    let control_mean = (0..CELL_TYPES).map(|_| vector(2.0).iter().map(|x| x.abs()).collect()).collect();
    let change = (1..=s.database as u32).flat_map(|p| (0..CELL_TYPES as u32).map(move |c| (p, c))).map(|key| (key, vector(0.3))).collect();
    ObservedResponses::from_parts(s.genes, control_mean, change)
}

pub fn bench(o: &BenchOptions, breakdown: bool) -> Result<BenchResult> {
    if o.sets == 0 || o.cells == 0 || o.steps == 0 {
        return Err(Error::invalid("bench", "sets, cells and steps must be at least 1"));
    }
    let s = &o.shapes;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut cfg = ModelConfig::paper(o.kind, s.genes, s.perturbations, s.batches, s.genept_dim);
    o.beyond.apply(&mut cfg);
    cfg.check_training_fits(o.sets, o.cells, &format!("--sets {}, --cells {}", o.sets, o.cells))?;
    let knowledge = if o.kind.uses_genept() {
        // the first `database` perturbations after the control have vectors, the rest none
        let mut vectors = vec![0.0f32; s.perturbations * s.genept_dim];
        for row in vectors.chunks_mut(s.genept_dim).skip(1).take(s.database) {
            row.iter_mut().for_each(|v| *v = rng.gen_range(-1.0..1.0));
        }
        let knowledge = Knowledge::new(vectors, s.genept_dim, vec![true; s.perturbations])?;
        Some(match cfg.candidate_context {
            CandidateContext::Genept => knowledge,
            _ => knowledge.with_responses(synthetic_responses(s, &mut rng)),
        })
    } else {
        None
    };
    let mut params = Params::<f32>::new();
    let mut model = Model::new(&cfg, knowledge, &mut params, &mut rng)?;
    if cfg.output_anchor != OutputAnchor::None {
        // One vector per cell type: the same work per step as per-condition anchors.
        let per_cell_type: Vec<Vec<f64>> = (0..CELL_TYPES).map(|_| (0..s.genes).map(|_| rng.gen_range(-0.5..0.5)).collect()).collect();
        model.set_output_anchor(&per_cell_type, Default::default());
    }
    let mut adam = Adam::new(AdamConfig::default(), &params);
    let batch = synthetic_batch(o, &mut rng);
    let mut on_gpu = match &o.gpu {
        Some(gpu) => {
            let mut state = GpuState::upload(gpu.clone(), &params, &adam)?;
            let cells = batch.values()?;
            let values = gpu.upload(&[&cells.control[..], &cells.target[..]].concat())?;
            state.expression = Some(RowTable::F32 { values, cols: batch.genes });
            state.upload_genept(model.knowledge())?;
            Some(state)
        }
        None => None,
    };
    let mut total = breakdown.then(StepBreakdown::default);
    let mut step_seconds = Vec::new();
    for step in 0..o.warmup + o.steps {
        let timed = step >= o.warmup;
        let start = std::time::Instant::now();
        let parts = if timed { total.as_mut() } else { None };
        optimise_step(&model, &mut params, &mut adam, on_gpu.as_mut(), 0.1, &batch, &mut rng, step, parts)?.finish()?;
        if let Some(state) = &on_gpu {
            state.gpu.synchronize()?;
        }
        if timed {
            step_seconds.push(start.elapsed().as_secs_f64());
        }
    }
    let mut sorted = step_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let shapes = Shapes { cells: o.cells, ..s.clone() };
    let forward_per_cell: f64 = profile(o.kind, &shapes)?.flops.iter().map(|x| x.1).sum();
    let model_flops_per_step = 3.0 * forward_per_cell * (o.sets * o.cells) as f64;
    let achieved_gflops = model_flops_per_step / median / 1e9;
    let peak = peak_gflops(o.gpu.as_deref())?;
    Ok(BenchResult {
        // the paper's label, or the variant's name with options beyond the paper
        model: if o.beyond.set().is_empty() { o.kind.label().to_string() } else { cfg.variant_name() },
        device: o.gpu.as_ref().map_or_else(|| "cpu".into(), |g| g.name()),
        cpu_path: crate::cpu::cpu_path().to_string(),
        threads: rayon::current_num_threads(),
        sets: o.sets,
        cells: o.cells,
        steps: o.steps,
        step_seconds,
        median_step_seconds: median,
        cells_per_second: (o.sets * o.cells) as f64 / median,
        model_flops_per_step,
        achieved_gflops,
        peak_gflops: peak,
        fraction_of_peak: achieved_gflops / peak,
        breakdown: total,
    })
}

/// The device's measured peak for the step's main work, in GFLOP/s: the best rate of a few square
/// f32 matrix products (cuBLAS at n = 4096 on a GPU; this engine's GEMM at n = 1024 on the CPU and
/// under the emulator, which runs the same GEMM). Measured, not a datasheet figure, so that a step's
/// fraction of it says how much of what the device really reaches the step uses.
pub fn peak_gflops(gpu: Option<&Gpu>) -> Result<f64> {
    let n = if matches!(gpu, Some(Gpu::Cuda(_))) { 4096 } else { 1024 };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (a, b): (Vec<f32>, Vec<f32>) =
        ((0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect(), (0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect());
    let mut best = f64::INFINITY;
    match gpu {
        Some(gpu) => {
            let (a, b, mut c) = (gpu.upload(&a)?, gpu.upload(&b)?, gpu.unfilled(n * n)?);
            for _ in 0..6 {
                let start = std::time::Instant::now();
                crate::cuda::gemm::matmul(gpu, &a, &b, &mut c, n, n, n, false, false, false)?;
                gpu.synchronize()?;
                best = best.min(start.elapsed().as_secs_f64());
            }
        }
        None => {
            let mut c = vec![0.0f32; n * n];
            for _ in 0..6 {
                let start = std::time::Instant::now();
                crate::cpu::gemm::matmul(&a, &b, &mut c, n, n, n, false, false, false);
                best = best.min(start.elapsed().as_secs_f64());
            }
        }
    }
    Ok(2.0 * (n * n * n) as f64 / best / 1e9)
}

/// A text report: the headline figures, then the breakdown sorted by time.
pub fn report(r: &BenchResult) -> String {
    let mut s = format!(
        "{} on {} ({}; {} threads), {} sets x {} cells: median {:.3} s per step over {} steps, {:.0} cells/s, {:.1} GFLOP/s (model FLOPs), \
         {:.0}% of the device's measured f32 GEMM peak ({:.0} GFLOP/s)\n",
        r.model,
        r.device,
        r.cpu_path,
        r.threads,
        r.sets,
        r.cells,
        r.median_step_seconds,
        r.steps,
        r.cells_per_second,
        r.achieved_gflops,
        100.0 * r.fraction_of_peak,
        r.peak_gflops
    );
    if let Some(b) = &r.breakdown {
        let total: f64 = b.forward.values().chain(b.backward.values()).chain(b.other.values()).sum();
        let mut rows: Vec<(String, f64)> = Vec::new();
        rows.extend(b.forward.iter().map(|(k, v)| (format!("forward  {k}"), *v)));
        rows.extend(b.backward.iter().map(|(k, v)| (format!("backward {k}"), *v)));
        rows.extend(b.other.iter().map(|(k, v)| (format!("step     {k}"), *v)));
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        s += &format!("breakdown over the {} timed steps ({:.3} s measured):\n", r.steps, total);
        for (name, t) in rows {
            s += &format!("  {name:<46} {:>8.3} s {:>5.1}%\n", t, 100.0 * t / total);
        }
    }
    s
}
