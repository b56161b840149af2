//! A run's training state resident on a GPU: every parameter's value (shared with each step's
//! tape), Adam's moments, the dataset's expression matrix and the model's GenePT table, uploaded
//! once. A step uploads its cells' row numbers (a few KB), gathers the cells and draws PT-RAG's
//! noise on the GPU, keeps its gradients there, clips and updates there, and leaves its loss and
//! norm there until the run loop reads them (`PendingStats::finish`), after it has queued the next
//! step; the host `Params` and `Adam` are brought up to date only when asked (`download`:
//! checkpoints, the end of a run).

use super::optim::Adam;
use crate::cuda::{self, tensor::RowTable, Buffer, Gpu};
use crate::data::store::{Store, StoredExpression};
use crate::model::knowledge::Knowledge;
use crate::tape::{DeviceGradients, Params, Tape};
use crate::{Error, Result};
use std::sync::Arc;

/// The most host memory the expression upload stages at once: the matrix goes from the mapped file
/// to the GPU a chunk of rows at a time, never whole (2.6 GB at `replogle` size).
pub const UPLOAD_CHUNK_BYTES: usize = 64 << 20;

/// The store's expression matrix on `gpu` as it is stored, copied from the mapped file in chunks of
/// at most `chunk_bytes` (or one row, when a row is larger); with the largest chunk staged, in bytes.
pub fn upload_expression(gpu: &Gpu, store: &Store, chunk_bytes: usize) -> Result<(RowTable, usize)> {
    let (cells, cols) = (store.n_cells(), store.n_genes());
    let rows_per_chunk = (chunk_bytes / (cols * store.manifest.expression_dtype.size()).max(1)).max(1);
    let mut table = match store.manifest.expression_dtype {
        crate::data::store::ExprDtype::F16 => RowTable::F16 { bits: gpu.zeros(cells * cols)?, cols },
        crate::data::store::ExprDtype::F32 => RowTable::F32 { values: gpu.zeros(cells * cols)?, cols },
    };
    let mut staged = 0;
    for start in (0..cells).step_by(rows_per_chunk) {
        let rows = start..(start + rows_per_chunk).min(cells);
        let at = start * cols;
        match (&mut table, store.stored_rows(rows)) {
            (RowTable::F16 { bits, .. }, StoredExpression::F16(chunk)) => {
                staged = staged.max(std::mem::size_of_val(chunk.as_slice()));
                gpu.copy_into(bits, at, &chunk)?;
            }
            (RowTable::F32 { values, .. }, StoredExpression::F32(chunk)) => {
                staged = staged.max(std::mem::size_of_val(chunk.as_slice()));
                gpu.copy_into(values, at, &chunk)?;
            }
            _ => return Err(Error::Shape { op: "upload_expression", why: "the store's rows are not in its dtype".into() }),
        }
    }
    Ok((table, staged))
}

pub struct GpuState {
    pub gpu: Arc<Gpu>,
    /// The dataset's expression matrix (`upload_expression`), from which batches are gathered on
    /// the GPU; without it, batches are read on the host and uploaded.
    pub expression: Option<RowTable>,
    /// The model's GenePT table (`upload_genept`), from which perturbations are encoded on the GPU.
    pub genept: Option<RowTable>,
    /// By `ParamId`.
    values: Vec<Arc<Buffer<f32>>>,
    /// Adam's first and second moments of the trainable parameters (None for frozen ones).
    moments: Vec<Option<(Buffer<f32>, Buffer<f32>)>>,
}

impl GpuState {
    pub fn upload(gpu: Arc<Gpu>, params: &Params<f32>, adam: &Adam) -> Result<Self> {
        let mut state = GpuState { gpu, expression: None, genept: None, values: Vec::new(), moments: Vec::new() };
        state.upload_weights(params, adam)?;
        Ok(state)
    }

    /// Replaces the resident parameter values and moments with `params` and `adam` (a loaded
    /// checkpoint); the dataset stays.
    pub fn upload_weights(&mut self, params: &Params<f32>, adam: &Adam) -> Result<()> {
        let gpu = &self.gpu;
        let mut values = Vec::with_capacity(params.entries.len());
        let mut moments = Vec::with_capacity(params.entries.len());
        for (i, p) in params.entries.iter().enumerate() {
            values.push(Arc::new(gpu.upload(&p.value)?));
            moments.push(if p.trainable { Some((gpu.upload(&adam.m[i])?, gpu.upload(&adam.v[i])?)) } else { None });
        }
        (self.values, self.moments) = (values, moments);
        Ok(())
    }

    /// Where a step's cells come from, decided here for the trainer (which reads values on the host
    /// only when needed) and the step (which builds its inputs from them) alike: gathered by row on
    /// the GPU from the resident matrix (`Some`), or the values the batch was read with on the host
    /// (`None`: `Batch::with_values`).
    pub fn resident_expression(state: Option<&GpuState>) -> Option<&RowTable> {
        state.and_then(|s| s.expression.as_ref())
    }

    /// Uploads the store's expression matrix as it is stored (f16 or f32: the values the host path
    /// reads), once for the whole run, in chunks of `UPLOAD_CHUNK_BYTES`.
    pub fn upload_expression(&mut self, store: &Store) -> Result<()> {
        self.expression = Some(upload_expression(&self.gpu, store, UPLOAD_CHUNK_BYTES)?.0);
        Ok(())
    }

    /// Uploads the GenePT vectors of `knowledge` (when the model has them), once for the whole run.
    pub fn upload_genept(&mut self, knowledge: Option<&Knowledge>) -> Result<()> {
        self.genept = match knowledge {
            Some(k) => Some(RowTable::F32 { values: self.gpu.upload(&k.vectors)?, cols: k.dim }),
            None => None,
        };
        Ok(())
    }

    /// A tape for one forward (and backward) pass: over the resident parameters with a GPU state,
    /// else the CPU engine's.
    pub fn tape_for(state: Option<&GpuState>) -> Tape<f32> {
        match state {
            Some(s) => Tape::on_gpu_with_params(s.gpu.clone(), s.values.clone()),
            None => Tape::new(),
        }
    }

    /// Queues the clipping and Adam's update of every trainable parameter, from `grads` and the
    /// step's `loss` (the step's tape must be dropped by now). Nothing waits for the GPU: the
    /// returned `{norm, scale, apply}` (`Clip::from_values` reads it) stays there, and when the norm or
    /// the loss is not finite the kernels leave every weight and moment untouched.
    pub fn update(&mut self, params: &Params<f32>, adam: &mut Adam, grads: DeviceGradients, loss: &Buffer<f32>) -> Result<Buffer<f64>> {
        let gpu = &*self.gpu;
        let trainable = |i: usize| params.entries[i].trainable;
        let with_grad: Vec<&Buffer<f32>> =
            grads.iter().enumerate().filter(|(i, _)| trainable(*i)).filter_map(|(_, g)| g.as_deref()).collect();
        let clip = cuda::optim::clip(gpu, &with_grad, loss, adam.cfg.clip_norm)?;
        let update = adam.next_step();
        for (i, (value, moments)) in self.values.iter_mut().zip(&mut self.moments).enumerate() {
            let Some((m, v)) = moments else { continue };
            // A trainable parameter the step did not use still decays its moments, as on the host.
            let zeros;
            let grad = match grads.get(i).and_then(|g| g.as_deref()) {
                Some(g) => g,
                None => {
                    zeros = gpu.zeros(value.len())?;
                    &zeros
                }
            };
            let name = &params.entries[i].name;
            let value = Arc::get_mut(value).ok_or_else(|| Error::Device(format!("parameter {name} is still in use by a tape")))?;
            cuda::optim::adam_update(gpu, value, grad, m, v, &update, &clip)?;
        }
        Ok(clip)
    }

    /// Copies the resident values and moments into `params` and `adam`.
    pub fn download(&self, params: &mut Params<f32>, adam: &mut Adam) -> Result<()> {
        for (i, p) in params.entries.iter_mut().enumerate() {
            p.value = Arc::new(self.gpu.download(&self.values[i])?);
            if let Some((m, v)) = &self.moments[i] {
                adam.m[i] = self.gpu.download(m)?;
                adam.v[i] = self.gpu.download(v)?;
            }
        }
        Ok(())
    }
}
