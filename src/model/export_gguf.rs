//! A model written as one GGUF file, optionally with adapters merged into its weights
//! (W' = W + Σ wᵢ·sᵢ·Bᵢ·Aᵢ), for llama.cpp, Ollama and LM Studio: every metadata pair of a
//! GGUF source carried over (architecture, hyperparameters, tokenizer, chat template), or a
//! Hugging Face directory's config and tokenizer converted (model/gguf_meta.rs), the file
//! type and quantization version set, the linear weights and embeddings written as f16, q8_0,
//! q4_0 or q4_1 by lorafuse's own block writers (model/quant.rs `quantize`, ggml's reference
//! rules), norms in f32 as llama.cpp's converter writes them, q/k rows in llama.cpp's rotary
//! order. Tensors lorafuse does not model (rope_freqs, …) are copied as they are.

use std::path::Path;

use crate::error::{Error, Result};
use crate::lora::peft::Adapter;
use crate::model::config::{LlamaConfig, RopeScaling};
use crate::model::export::{check_merge, merge_into, tensor_list};
use crate::model::gguf::{Gguf, Value};
use crate::model::gguf_meta::hf_metadata;
use crate::model::gguf_write::{Metadata, TensorOut, write_gguf};
use crate::model::quant::{GgmlType, quantize};
use crate::model::source::{ModelSource, gguf_name, permute_rows, permuted_heads};

/// What was written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportedGguf {
    pub tensors: usize,
    pub bytes: u64,
    /// Linear weights an adapter was merged into.
    pub merged: usize,
    /// 2-D weights written f16 because their rows are not whole 32-value blocks.
    pub f16_fallbacks: usize,
}

/// llama.cpp's `general.file_type` of a model mostly in `ty`.
fn file_type(ty: GgmlType) -> Result<u32> {
    Ok(match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        other => {
            return Err(Error::Invalid(format!("models are written as f16, q8_0, q4_0 or q4_1, not {}", other.name())));
        }
    })
}

/// Writes the GGUF model `src` with `merge` folded in as `out`, its matrices in `ty`, atomically.
/// `progress(done, total)` follows the tensors.
pub fn export_gguf(
    src: &ModelSource,
    merge: &[(&Adapter, f32)],
    ty: GgmlType,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ExportedGguf> {
    let cfg = src.config()?;
    let file_type = file_type(ty)?;
    check_merge(&cfg, merge)?;
    // the metadata first: a tokenizer GGUF cannot hold fails before any tensor is read
    let mut meta = match src {
        ModelSource::Gguf(g) => carried_metadata(g),
        ModelSource::Hf(_) => hf_metadata(src.path(), &cfg)?,
    };
    let list = tensor_list(src, &cfg);
    let (mut tensors, mut merged, mut fallbacks) = (Vec::new(), 0, 0);
    let mut covered = std::collections::BTreeSet::new();
    for (n, (name, shape)) in list.iter().enumerate() {
        let gname = gguf_name(name).ok_or_else(|| Error::file(src.path(), format!("no GGUF name for {name}")))?;
        let mut w = src.tensor(name, shape, &cfg)?;
        merged += merge_into(&mut w, name, merge) as usize;
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::file(src.path(), format!("{name}: value {i} is {} after the merge", w[i])));
        }
        let cols = if shape.len() == 2 { shape[1] } else { 1 };
        // back to llama.cpp's rotary row order (the source unpermuted q and k as it read them)
        if let Some(heads) = permuted_heads(&cfg, name) {
            w = permute_rows(&w, shape[0], cols, heads).map_err(|e| Error::file(src.path(), format!("{name}: {e}")))?;
        }
        let wty = match shape.len() {
            2 if ty.block().is_some_and(|(per, _)| cols.is_multiple_of(per)) => ty,
            2 => {
                fallbacks += 1;
                GgmlType::F16
            }
            _ => GgmlType::F32,
        };
        let data = quantize(wty, &w).map_err(|e| Error::file(src.path(), format!("{name}: {e}")))?;
        tensors.push(TensorOut {
            name: gname.clone(),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ty: wty,
            data,
        });
        covered.insert(gname);
        progress(n + 1, list.len());
    }
    match src {
        ModelSource::Gguf(g) => {
            for t in g.tensors.iter().filter(|t| !covered.contains(&t.name)) {
                tensors.push(TensorOut {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: t.ty,
                    data: g.tensor_bytes(t)?,
                });
            }
        }
        ModelSource::Hf(_) => tensors.extend(rope_freqs(&cfg)),
    }
    meta.push(("general.file_type".into(), Value::U32(file_type)));
    meta.push(("general.quantization_version".into(), Value::U32(2)));
    let bytes = tensors.iter().map(|t| t.data.len() as u64).sum();
    let count = tensors.len();
    write_gguf(out, &meta, &tensors)?;
    Ok(ExportedGguf { tensors: count, bytes, merged, f16_fallbacks: fallbacks })
}

/// Every metadata pair of the GGUF `g` but those the writer sets, general.architecture first as
/// llama.cpp's writers order it.
fn carried_metadata(g: &Gguf) -> Metadata {
    let mut meta: Metadata = g
        .metadata
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "general.file_type" | "general.quantization_version" | "general.alignment")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.sort_by_key(|(k, _)| k != "general.architecture");
    meta
}

/// Llama-3's frequency scaling as llama.cpp holds it: `rope_freqs.weight`, each frequency's
/// divisor (θ^(−2i/d) over the scaled frequency); none for unscaled RoPE.
fn rope_freqs(cfg: &LlamaConfig) -> Option<TensorOut> {
    if cfg.rope_scaling == RopeScaling::None {
        return None;
    }
    let d = cfg.head_dim;
    let factors: Vec<f32> = cfg
        .inv_freq()
        .iter()
        .enumerate()
        .map(|(i, f)| (cfg.rope_theta.powf(-(2.0 * i as f64) / d as f64) / f) as f32)
        .collect();
    Some(TensorOut {
        name: "rope_freqs.weight".into(),
        dims: vec![factors.len() as u64],
        ty: GgmlType::F32,
        data: bytemuck::cast_slice(&factors).to_vec(),
    })
}
