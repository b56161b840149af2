//! One optimisation step (forward, loss, backward, clipping, Adam) on the CPU or the GPU, shared
//! by `train` and `bench`, and its statistics.

use super::*;
use crate::model::Noise;
use crate::tape::{Gradients, Var};

pub struct StepStats {
    /// The full loss (energy plus the sparsity term).
    pub loss: f64,
    pub energy: f64,
    /// PT-RAG: mean number of candidates selected per cell.
    pub selected: Option<f64>,
    pub grad_norm: f64,
    /// PT-RAG on the CPU: the gradient norm reaching the scorer MLP (`select.score_*`), the signal
    /// that would teach the selection (not read back from a GPU).
    pub scorer_grad_norm: Option<f64>,
}

/// Seconds by part of a training step: forward and backward per op family, and the rest.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepBreakdown {
    pub forward: std::collections::BTreeMap<String, f64>,
    pub backward: std::collections::BTreeMap<String, f64>,
    pub other: std::collections::BTreeMap<String, f64>,
}

impl StepBreakdown {
    fn add(map: &mut std::collections::BTreeMap<String, f64>, times: &[(&str, f64)]) {
        times.iter().for_each(|(name, t)| *map.entry(name.to_string()).or_default() += t);
    }
}

/// One optimisation step on `batch`: forward (noise keys from `rng`), loss (energy plus the
/// sparsity term), backward, gradient norm, Adam with clipping; on the GPU when `gpu` holds the
/// training state (then `params` and `adam` on the host are not updated, see `GpuState::download`,
/// and the statistics are read by `PendingStats::finish`).
/// `breakdown` collects where the time went.
/// The selection of training step `step`: the expected one during `soft_selection_steps`, else the
/// straight-through sample of `noise` (the noise is drawn either way, so later steps see the same).
fn training_selection<'a>(model: &Model, step: usize, noise: Option<&'a Noise>) -> Selection<'a> {
    if step < model.cfg.soft_selection_steps {
        Selection::Expected
    } else {
        Selection::from_noise(noise)
    }
}

#[allow(clippy::too_many_arguments)]
pub fn optimise_step(
    model: &Model,
    params: &mut Params<f32>,
    adam: &mut Adam,
    mut gpu: Option<&mut GpuState>,
    sparsity: f64,
    batch: &Batch,
    rng: &mut ChaCha8Rng,
    step: usize,
    mut breakdown: Option<&mut StepBreakdown>,
) -> Result<PendingStats> {
    let clock = std::time::Instant::now();
    let noise = model.sample_noise(true, rng);
    if gpu.is_none() {
        params.zero_grad();
    }
    let prepare = clock.elapsed().as_secs_f64();
    let mut tape = GpuState::tape_for(gpu.as_deref()).timed_if(breakdown.is_some());
    // The cells' expression: gathered on the GPU from the resident dataset, or the batch's values.
    let (control, target) = match GpuState::resident_expression(gpu.as_deref()) {
        Some(table) => (Cells::Rows { table, rows: &batch.control_rows }, Cells::Rows { table, rows: &batch.target_rows }),
        None => {
            let values = batch.values()?;
            (Cells::Values(&values.control), Cells::Values(&values.target))
        }
    };
    let input = ModelInput {
        genept: gpu.as_deref().and_then(|state| state.genept.as_ref()),
        ..ModelInput::of_batch(batch, control, true, training_selection(model, step, noise.as_ref()))
    };
    let out = model.forward(&mut tape, params, &input);
    let target = target.on_tape(&mut tape, batch.sets * batch.cells, batch.genes);
    let energy = energy_loss(&mut tape, out.pred, target, batch.sets, batch.cells, batch.genes);
    let (mut loss, mut mean_w) = (energy, None);
    if let Some(w) = out.selection {
        let mean = tape.mean(w);
        mean_w = Some(mean);
        if sparsity > 0.0 {
            let term = tape.scale(mean, sparsity);
            loss = tape.add(energy, term);
        }
    }
    let grads = match breakdown.as_deref_mut() {
        Some(b) => {
            StepBreakdown::add(&mut b.forward, &tape.forward_timings());
            let (grads, times) = tape.backward_timed(loss);
            StepBreakdown::add(&mut b.backward, &times);
            grads
        }
        None => tape.backward(loss),
    };
    let mark = std::time::Instant::now();
    let scalars = StepScalars { energy, loss, mean_w };
    let (stats, accumulate) = match gpu.as_deref_mut() {
        Some(state) => update_on_gpu(state, model, params, adam, tape, grads, scalars, step, mark)?,
        None => update_on_cpu(model, params, adam, tape, grads, scalars, step, mark)?,
    };
    if let Some(b) = breakdown {
        if let Some(state) = gpu {
            state.gpu.synchronize()?;
        }
        let parts = [
            ("noise sampling, zeroing gradients", prepare),
            ("gradient accumulation", accumulate),
            ("norm, clipping and adam", mark.elapsed().as_secs_f64() - accumulate),
        ];
        StepBreakdown::add(&mut b.other, &parts);
    }
    Ok(PendingStats(stats))
}

/// The step's scalars on its tape: the energy, the full loss and (PT-RAG) the mean selection weight.
struct StepScalars {
    energy: Var,
    loss: Var,
    mean_w: Option<Var>,
}

/// The GPU side of the step's seam: the update runs there, and the scalars stay there, read by
/// `PendingStats::finish` after the caller has queued the next step if it wants to. Returns the
/// pending statistics and the seconds spent gathering the gradients.
#[allow(clippy::too_many_arguments)]
fn update_on_gpu(
    state: &mut GpuState,
    model: &Model,
    params: &Params<f32>,
    adam: &mut Adam,
    tape: Tape<f32>,
    grads: Gradients<f32>,
    StepScalars { energy, loss, mean_w }: StepScalars,
    step: usize,
    mark: std::time::Instant,
) -> Result<(Pending, f64)> {
    let [energy, loss] = [energy, loss].map(|v| tape.device_value(v));
    let (energy, loss, mean_w) = (energy?, loss?, mean_w.map(|v| tape.device_value(v)).transpose()?);
    let grads = grads.on_gpu(&tape, params.entries.len())?;
    drop(tape);
    let accumulate = mark.elapsed().as_secs_f64();
    let clip = state.update(params, adam, grads, &loss)?;
    // Copies queued now, behind this step's work only: reading them later does not wait for the
    // steps queued after this one.
    let scalars: Vec<&Buffer<f32>> = [&*energy, &*loss].into_iter().chain(mean_w.as_deref()).collect();
    let (scalars, clip) = (state.gpu.read_later(&scalars)?, state.gpu.read_later(&[&clip])?);
    Ok((Pending::OnGpu { step, top_k: model.cfg.top_k, scalars, clip }, accumulate))
}

/// The CPU side of the step's seam: gradients into `params`, the scorer's gradient norm, Adam.
#[allow(clippy::too_many_arguments)]
fn update_on_cpu(
    model: &Model,
    params: &mut Params<f32>,
    adam: &mut Adam,
    tape: Tape<f32>,
    grads: Gradients<f32>,
    StepScalars { energy, loss, mean_w }: StepScalars,
    step: usize,
    mark: std::time::Instant,
) -> Result<(Pending, f64)> {
    let scalar = |v| -> Result<f64> { Ok(tape.fetch(v)?[0] as f64) };
    let (energy, loss) = (scalar(energy)?, scalar(loss)?);
    let selected = mean_w.map(&scalar).transpose()?.map(|w| w * model.cfg.top_k as f64);
    grads.accumulate_into(&tape, params)?;
    let scorer = params.entries.iter().filter(|p| p.name.starts_with("select.score"));
    let scorer_grad_norm = scorer.flat_map(|p| p.grad.iter().map(|&g| (g as f64).powi(2))).sum::<f64>().sqrt();
    let scorer_grad_norm = (model.cfg.kind == crate::model::ModelKind::PtRag).then_some(scorer_grad_norm);
    drop(tape);
    let accumulate = mark.elapsed().as_secs_f64();
    let clip = adam.step(params, loss as f32);
    let stats = StepStats { scorer_grad_norm, ..step_stats(step, energy, loss, selected, clip)? };
    Ok((Pending::Ready(stats), accumulate))
}

/// A queued step's statistics: ready on the CPU; on a GPU still there, so that the caller can queue
/// the next step before waiting for this one (`finish`). A GPU step whose loss or gradient norm is
/// not finite has left the weights untouched; `finish` reports it.
pub struct PendingStats(Pending);

enum Pending {
    Ready(StepStats),
    OnGpu {
        step: usize,
        top_k: usize,
        /// energy, loss and (PT-RAG) the mean selection weight
        scalars: Readback<f32>,
        /// `{norm, scale, apply}` (`cuda::optim::clip`)
        clip: Readback<f64>,
    },
}

impl PendingStats {
    /// The step's statistics (on a GPU: waits for the step), or its numerical failure.
    pub fn finish(self) -> Result<StepStats> {
        let (step, top_k, scalars, clip) = match self.0 {
            Pending::Ready(stats) => return Ok(stats),
            Pending::OnGpu { step, top_k, scalars, clip } => (step, top_k, scalars, clip),
        };
        let clip = Clip::from_values(&clip.wait()?[0]);
        let scalars: Vec<f64> = scalars.wait()?.iter().map(|v| v[0] as f64).collect();
        let (energy, loss) = (scalars[0], scalars[1]);
        step_stats(step, energy, loss, scalars.get(2).map(|w| w * top_k as f64), clip)
    }
}

/// A step's statistics, or the numerical failure that stops the run when its update did not apply
/// (on either engine the weights are then untouched).
fn step_stats(step: usize, energy: f64, loss: f64, selected: Option<f64>, clip: Clip) -> Result<StepStats> {
    if !clip.apply {
        let why = if loss.is_finite() { format!("the gradient norm is {}", clip.norm) } else { format!("the loss is {loss}") };
        return Err(Error::Numerical { step, why });
    }
    Ok(StepStats { loss, energy, selected, grad_norm: clip.norm, scorer_grad_norm: None })
}
