//! Checkpoints: one safetensors file with every parameter (`param.<name>`), Adam's moments
//! (`adam_m.<name>`, `adam_v.<name>`) and metadata (format, step, Adam step, the run config as JSON,
//! and the run's own state, e.g. the best validation so far, as JSON).
//! Written atomically; loading checks every name, shape and dtype and names what is wrong.

use super::optim::Adam;
use crate::data::write_atomic;
use crate::tape::Params;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub const FORMAT: &str = "ptrag-checkpoint-v2";

pub struct CheckpointMeta {
    pub step: usize,
    pub config_json: String,
    pub run_state: String,
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn save(path: &Path, params: &Params<f32>, adam: &Adam, step: usize, config_json: &str, run_state: &str) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, p) in params.entries.iter().enumerate() {
        owned.push((format!("param.{}", p.name), p.shape.clone(), le_bytes(&p.value)));
        owned.push((format!("adam_m.{}", p.name), p.shape.clone(), le_bytes(&adam.m[i])));
        owned.push((format!("adam_v.{}", p.name), p.shape.clone(), le_bytes(&adam.v[i])));
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("sizes match by construction")))
        .collect();
    let meta: HashMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), step.to_string()),
        ("adam_step".to_string(), adam.step.to_string()),
        ("config".to_string(), config_json.to_string()),
        ("run_state".to_string(), run_state.to_string()),
    ]
    .into();
    let bytes = safetensors::tensor::serialize(views, &Some(meta))
        .map_err(|e| Error::bad_file(path, "safetensors", format!("serialisable tensors: {e}")))?;
    write_atomic(path, &bytes)
}

/// Reads the metadata only (to rebuild the model before loading weights).
pub fn read_meta(path: &Path) -> Result<CheckpointMeta> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    meta_of(path, &bytes).map(|(m, _)| m)
}

fn meta_of(path: &Path, bytes: &[u8]) -> Result<(CheckpointMeta, u64)> {
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| Error::bad_file(path, "header", format!("a safetensors file ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get =
        |k: &str| meta.get(k).ok_or_else(|| Error::bad_file(path, format!("metadata.{k}"), "present (is this a ptrag-engine checkpoint?)"));
    if get("format")? != FORMAT {
        return Err(Error::bad_file(path, "metadata.format", format!("{FORMAT}, found {}", get("format")?)));
    }
    let num = |k: &str| get(k)?.parse::<u64>().map_err(|_| Error::bad_file(path, format!("metadata.{k}"), "a non-negative integer"));
    let run_state = meta.get("run_state").cloned().unwrap_or_else(|| "{}".to_string());
    Ok((CheckpointMeta { step: num("step")? as usize, config_json: get("config")?.clone(), run_state }, num("adam_step")?))
}

/// Loads weights and optimiser state into already-built `params` / `adam` (same architecture).
pub fn load(path: &Path, params: &mut Params<f32>, adam: &mut Adam) -> Result<CheckpointMeta> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (meta, adam_step) = meta_of(path, &bytes)?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| Error::bad_file(path, "tensors", format!("a complete safetensors file ({e})")))?;
    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|_| Error::bad_file(path, name, "present (checkpoint from another model or configuration?)"))?;
        if t.dtype() != Dtype::F32 || t.shape() != shape {
            return Err(Error::bad_file(path, name, format!("F32 of shape {shape:?}, found {:?} of shape {:?}", t.dtype(), t.shape())));
        }
        Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    for (i, p) in params.entries.iter_mut().enumerate() {
        p.value = Arc::new(read(&format!("param.{}", p.name), &p.shape)?);
        adam.m[i] = read(&format!("adam_m.{}", p.name), &p.shape)?;
        adam.v[i] = read(&format!("adam_v.{}", p.name), &p.shape)?;
    }
    adam.step = adam_step;
    Ok(meta)
}
