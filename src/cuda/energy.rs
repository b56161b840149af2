//! Launchers for `kernels/energy.cu`, the twin of `src/cpu/energy.rs`: the energy distance per set
//! and its gradient with respect to the predictions (accumulated).

use super::{check_int, check_len, kernels, Args, Buffer, Gpu, Launch};
use crate::cpu::energy::EnergyShape;
use crate::Result;

const THREADS: u32 = 256;

fn check(shape: EnergyShape, pred: &Buffer<f32>, obs: &Buffer<f32>) -> Result<()> {
    let EnergyShape { sets, cells_pred: n, cells_obs: m, genes } = shape;
    check_int("energy", &[sets * (n + m) * genes])?;
    check_len("energy", "pred", pred, sets * n * genes)?;
    check_len("energy", "obs", obs, sets * m * genes)
}

pub fn energy_forward(gpu: &Gpu, pred: &Buffer<f32>, obs: &Buffer<f32>, shape: EnergyShape, energy: &mut Buffer<f32>) -> Result<()> {
    check(shape, pred, obs)?;
    let EnergyShape { sets, cells_pred: n, cells_obs: m, genes } = shape;
    check_len("energy", "energy", energy, sets)?;
    let mut partial = gpu.zeros::<f32>(sets * (n + m))?;
    let rows = Launch::new([n + m, sets, 1], THREADS, genes + THREADS as usize / 32)?;
    gpu.launch(&kernels::ENERGY_FORWARD_ROWS_F32, rows, Args::new().input(pred).input(obs).int(n).int(m).int(genes).output(&mut partial))?;
    let reduce = Launch::new([sets.div_ceil(64), 1, 1], 64, 0)?;
    gpu.launch(&kernels::ENERGY_FORWARD_REDUCE_F32, reduce, Args::new().input(&partial).int(sets).int(n + m).output(energy))
}

/// `dpred += d_energy[s] * d energy_s / d pred`.
pub fn energy_backward(
    gpu: &Gpu,
    pred: &Buffer<f32>,
    obs: &Buffer<f32>,
    shape: EnergyShape,
    d_energy: &Buffer<f32>,
    dpred: &mut Buffer<f32>,
) -> Result<()> {
    check(shape, pred, obs)?;
    let EnergyShape { sets, cells_pred: n, cells_obs: m, genes } = shape;
    check_len("energy backward", "d_energy", d_energy, sets)?;
    check_len("energy backward", "dpred", dpred, sets * n * genes)?;
    let launch = Launch::new([n, sets, 1], THREADS, genes + n + m)?;
    gpu.launch(
        &kernels::ENERGY_BACKWARD_F32,
        launch,
        Args::new().input(pred).input(obs).input(d_energy).int(n).int(m).int(genes).output(dpred),
    )
}
