//! Training checkpoints: one safetensors file holding every adapter stack's factors and AdamW
//! moments (f32, exactly as on the GPU) and, in its metadata, the run's config, progress and
//! data fingerprint. Written atomically, so a crash mid-write leaves the previous one intact.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::params::{Named, NamedMap};
use crate::train::config::TrainConfig;

const KEY: &str = "lorafuse_checkpoint";

/// Where a run stood when the checkpoint was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub config: TrainConfig,
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// Fingerprint of the tokenized training and held-out data.
    pub data: u64,
}

/// A checkpoint's tensors by name: shape and values.
pub type Tensors = NamedMap;

pub fn save(path: &Path, meta: &Meta, tensors: &[Named]) -> Result<()> {
    let json = serde_json::to_string(meta).map_err(|e| Error::Invalid(e.to_string()))?;
    let refs: Vec<(String, Vec<usize>, &[u8])> =
        tensors.iter().map(|(n, shape, v)| (n.clone(), shape.clone(), bytemuck::cast_slice(v))).collect();
    crate::atomic::write_safetensors(path, safetensors::Dtype::F32, &refs, HashMap::from([(KEY.to_string(), json)]))
}

/// Reads a checkpoint: its metadata and tensors by name.
pub fn load(path: &Path) -> Result<(Meta, Tensors)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::file(path, format!("not a safetensors checkpoint: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(KEY))
        .ok_or_else(|| Error::file(path, "not a lorafuse checkpoint (no run metadata)"))?;
    let meta: Meta =
        serde_json::from_str(json).map_err(|e| Error::file(path, format!("unreadable run metadata: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::file(path, e.to_string()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::file(path, format!("tensor {name} is {:?}, expected F32", view.dtype())));
        }
        let v: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        out.insert(name, (view.shape().to_vec(), v));
    }
    Ok((meta, out))
}
