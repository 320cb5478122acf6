//! Where a model's weights come from: a GGUF file or a Hugging Face directory. Either way the
//! rest of lorafuse sees Hugging Face tensor names and layouts, as f32 on the host (llama.cpp's
//! rotary row permutation of q and k undone).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::gpu::q4::Q4Block;
use crate::gpu::q8::Q8Block;
use crate::model::chat::ChatTemplate;
use crate::model::config::{Arch, LlamaConfig};
use crate::model::gguf::Gguf;
use crate::model::quant::{to_q4_blocks, to_q8_blocks};
use crate::model::tokenizer::Tokenizer;

/// A weight's quantized blocks as the GPU holds them.
pub enum Blocks {
    Q4(Vec<Q4Block>),
    Q8(Vec<Q8Block>),
}

pub enum ModelSource {
    Gguf(Gguf),
    Hf(HfDir),
}

/// A Hugging Face model directory: config.json, model.safetensors or shards listed in
/// model.safetensors.index.json, and the tokenizer files.
pub struct HfDir {
    dir: PathBuf,
    /// tensor name → shard file
    map: BTreeMap<String, PathBuf>,
    /// The last shard read, kept while tensors are taken from it in order.
    shard: RefCell<Option<(PathBuf, Vec<u8>)>>,
}

/// The GGUF name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let mapped = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}

/// Undoes llama.cpp's q/k row permutation: its converter viewed each head's rows as
/// [2, d/2] and swapped the axes, so GGUF row h·d + 2j + t is Hugging Face row h·d + t·d/2 + j.
/// `cols` is the row length in elements of `data` (values, or quantized blocks).
pub fn unpermute_rows<T: Copy>(data: &[T], rows: usize, cols: usize, heads: usize) -> Result<Vec<T>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) || data.len() != rows * cols {
        return Err(Error::Invalid(format!("cannot unpermute {rows} rows of {cols} over {heads} heads")));
    }
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = Vec::with_capacity(data.len());
    for dst in 0..rows {
        let (h, t, j) = (dst / hd, (dst % hd) / half, dst % half);
        let src = h * hd + 2 * j + t;
        out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    Ok(out)
}

/// llama.cpp's q/k row permutation, the inverse of `unpermute_rows`: Hugging Face rows in, GGUF
/// rows out (its converter's `permute`, applied to adapters' B rows on export).
pub fn permute_rows<T: Copy>(data: &[T], rows: usize, cols: usize, heads: usize) -> Result<Vec<T>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) || data.len() != rows * cols {
        return Err(Error::Invalid(format!("cannot permute {rows} rows of {cols} over {heads} heads")));
    }
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = Vec::with_capacity(data.len());
    for dst in 0..rows {
        let (h, j, t) = (dst / hd, (dst % hd) / 2, dst % 2);
        let src = h * hd + t * half + j;
        out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    Ok(out)
}

/// Heads to unpermute a Hugging Face tensor's rows over, for a GGUF of this architecture.
pub fn permuted_heads(cfg: &LlamaConfig, hf_name: &str) -> Option<usize> {
    match (cfg.arch, hf_name.rsplit('.').nth(1)) {
        (Arch::Llama, Some("q_proj")) => Some(cfg.heads),
        (Arch::Llama, Some("k_proj")) => Some(cfg.kv_heads),
        _ => None,
    }
}

impl ModelSource {
    /// A `.gguf` file or a Hugging Face directory.
    pub fn open(path: &Path) -> Result<ModelSource> {
        if path.is_dir() {
            return Ok(ModelSource::Hf(HfDir::open(path)?));
        }
        if !path.exists() {
            return Err(Error::file(
                path,
                "no such model file or directory (scripts/fetch-model.sh fetches the default)",
            ));
        }
        Ok(ModelSource::Gguf(Gguf::open(path)?))
    }

    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf(g) => g.path(),
            ModelSource::Hf(h) => &h.dir,
        }
    }

    pub fn config(&self) -> Result<LlamaConfig> {
        match self {
            ModelSource::Gguf(g) => LlamaConfig::from_gguf(g),
            ModelSource::Hf(h) => LlamaConfig::from_hf_json(&h.dir.join("config.json")),
        }
    }

    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match self {
            ModelSource::Gguf(g) => Tokenizer::from_gguf(g),
            ModelSource::Hf(h) => Tokenizer::from_hf_dir(&h.dir),
        }
    }

    /// The model's own chat template, if it has one.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        let source = match self {
            ModelSource::Gguf(g) => g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string),
            ModelSource::Hf(h) => {
                let p = h.dir.join("tokenizer_config.json");
                match std::fs::read_to_string(&p) {
                    Ok(t) => {
                        let j: serde_json::Value =
                            serde_json::from_str(&t).map_err(|e| Error::file(&p, format!("invalid JSON: {e}")))?;
                        hf_chat_template(&j).map_err(|e| Error::file(&p, e))?
                    }
                    Err(_) => None,
                }
            }
        };
        source.map(|s| ChatTemplate::new(&s).map_err(|e| Error::file(self.path(), e))).transpose()
    }

    pub fn has(&self, hf_name: &str) -> bool {
        match self {
            ModelSource::Gguf(g) => gguf_name(hf_name).is_some_and(|n| g.tensor(&n).is_ok()),
            ModelSource::Hf(h) => h.map.contains_key(hf_name),
        }
    }

    /// A 2-D weight as GPU blocks, when the file stores it in a type the GPU holds as is (Q4_0,
    /// Q4_1, Q4_K as 4-bit, Q8_0 as 8-bit); None otherwise (other types, Hugging Face files).
    pub fn tensor_blocks(&self, hf_name: &str, shape: &[usize], cfg: &LlamaConfig) -> Result<Option<Blocks>> {
        let ModelSource::Gguf(g) = self else { return Ok(None) };
        let Some(name) = gguf_name(hf_name) else { return Ok(None) };
        let t = g.tensor(&name)?;
        if t.shape() != shape || shape.len() != 2 {
            return Err(Error::file(
                g.path(),
                format!("tensor '{hf_name}' has shape {:?}, the config implies {shape:?}", t.shape()),
            ));
        }
        let bytes = g.tensor_bytes(t)?;
        let bad = |e: Error| Error::file(g.path(), format!("tensor '{name}': {e}"));
        // rows in Hugging Face order: llama.cpp's rotary permutation of q and k undone
        fn hf_rows<T: Copy>(blocks: Vec<T>, shape: &[usize], heads: Option<usize>) -> Result<Vec<T>> {
            match heads {
                Some(h) => unpermute_rows(&blocks, shape[0], shape[1] / 32, h),
                None => Ok(blocks),
            }
        }
        let (n, heads) = (t.numel() as usize, permuted_heads(cfg, hf_name));
        let scales = |i: Option<usize>| match i {
            Some(i) => Err(g.tensor_err(&name, format!("block {i} has a scale or offset that is not finite"))),
            None => Ok(()),
        };
        if let Some(blocks) = to_q4_blocks(t.ty, &bytes, n) {
            let blocks = blocks.map_err(bad)?;
            scales(blocks.iter().position(|b| !(b.d.is_finite() && b.m.is_finite())))?;
            return Ok(Some(Blocks::Q4(hf_rows(blocks, shape, heads).map_err(bad)?)));
        }
        if let Some(blocks) = to_q8_blocks(t.ty, &bytes, n) {
            let blocks = blocks.map_err(bad)?;
            scales(blocks.iter().position(|b| !b.d.is_finite()))?;
            return Ok(Some(Blocks::Q8(hf_rows(blocks, shape, heads).map_err(bad)?)));
        }
        Ok(None)
    }

    /// A tensor by Hugging Face name, f32, row-major, with its shape checked against `shape`.
    pub fn tensor(&self, hf_name: &str, shape: &[usize], cfg: &LlamaConfig) -> Result<Vec<f32>> {
        let (got_shape, data) = match self {
            ModelSource::Gguf(g) => {
                let name = gguf_name(hf_name)
                    .ok_or_else(|| Error::file(g.path(), format!("no GGUF name for tensor '{hf_name}'")))?;
                let (s, d) = g.tensor_f32(&name)?;
                // NaN or inf here (a norm, a bias, a scale of a quantized block) would make
                // every logit NaN without a word
                crate::validate::finite_tensor(g.path(), &name, &d)?;
                let d = match permuted_heads(cfg, hf_name) {
                    Some(h) => {
                        let cols = if s.len() == 2 { s[1] } else { 1 };
                        unpermute_rows(&d, s[0], cols, h)
                            .map_err(|e| Error::file(g.path(), format!("tensor '{name}': {e}")))?
                    }
                    None => d,
                };
                (s, d)
            }
            ModelSource::Hf(h) => h.tensor(hf_name)?,
        };
        if got_shape != shape {
            return Err(Error::file(
                self.path(),
                format!("tensor '{hf_name}' has shape {got_shape:?}, the config implies {shape:?}"),
            ));
        }
        Ok(data)
    }
}

/// tokenizer_config.json's chat_template: a string, or Hugging Face's list of named templates
/// (the one named "default"); absent or null: none.
fn hf_chat_template(cfg: &serde_json::Value) -> std::result::Result<Option<String>, String> {
    use serde_json::Value;
    match cfg.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Value::as_str))
            .map(|t| Some(t.to_string()))
            .ok_or_else(|| "chat_template is a list without a template named \"default\"".into()),
        Some(other) => Err(format!("chat_template is {other}, not a template string")),
    }
}

impl HfDir {
    pub fn open(dir: &Path) -> Result<HfDir> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut map = BTreeMap::new();
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::file(&index, e))?;
            let j: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::file(&index, format!("invalid JSON: {e}")))?;
            let wm = j
                .get("weight_map")
                .and_then(|w| w.as_object())
                .ok_or_else(|| Error::file(&index, "no weight_map object"))?;
            for (name, file) in wm {
                let f = file
                    .as_str()
                    .ok_or_else(|| Error::file(&index, format!("weight_map['{name}'] is not a file name")))?;
                map.insert(name.clone(), dir.join(f));
            }
        } else if single.exists() {
            let bytes = std::fs::read(&single).map_err(|e| Error::file(&single, e))?;
            let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::file(&single, e))?;
            for name in st.names() {
                map.insert(name.to_string(), single.clone());
            }
        } else {
            return Err(Error::file(dir, "neither model.safetensors nor model.safetensors.index.json"));
        }
        Ok(HfDir { dir: dir.to_path_buf(), map, shard: RefCell::new(None) })
    }

    /// The stored dtype of a tensor.
    pub fn dtype_of(&self, name: &str) -> Result<safetensors::Dtype> {
        let file = self.map.get(name).ok_or_else(|| Error::file(&self.dir, format!("tensor '{name}': missing")))?;
        let bytes = std::fs::read(file).map_err(|e| Error::file(file, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(file, e))?;
        let info = meta.info(name).ok_or_else(|| Error::file(file, format!("tensor '{name}': missing")))?;
        Ok(info.dtype)
    }

    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let file = self.map.get(name).ok_or_else(|| Error::file(&self.dir, format!("tensor '{name}': missing")))?;
        let mut cache = self.shard.borrow_mut();
        if cache.as_ref().is_none_or(|(p, _)| p != file) {
            let bytes = std::fs::read(file).map_err(|e| Error::file(file, e))?;
            *cache = Some((file.clone(), bytes));
        }
        let (_, bytes) = cache.as_ref().expect("shard loaded above");
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::file(file, e))?;
        let view = st.tensor(name).map_err(|e| Error::file(file, format!("tensor '{name}': {e}")))?;
        let data = to_f32(view.dtype(), view.data()).map_err(|e| Error::file(file, format!("tensor '{name}': {e}")))?;
        crate::validate::finite_tensor(file, name, &data)?;
        Ok((view.shape().to_vec(), data))
    }
}

/// Safetensors data of a floating-point dtype as f32.
pub fn to_f32(dtype: safetensors::Dtype, raw: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        safetensors::Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        safetensors::Dtype::F16 => raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        safetensors::Dtype::BF16 => raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(Error::Invalid(format!("dtype {other:?} (f32, f16 and bf16 are read)"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_is_llama_cpps_and_unpermute_undoes_it() {
        // llama.cpp's converter on 2 heads of 4 rows: GGUF row order of the Hugging Face rows
        let rows: Vec<usize> = (0..8).collect();
        assert_eq!(permute_rows(&rows, 8, 1, 2).unwrap(), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(permute_rows(&(0..8).collect::<Vec<_>>(), 8, 1, 1).unwrap(), vec![0, 4, 1, 5, 2, 6, 3, 7]);
        let data: Vec<u32> = (0..12 * 3).collect();
        let p = permute_rows(&data, 12, 3, 3).unwrap();
        assert_eq!(unpermute_rows(&p, 12, 3, 3).unwrap(), data);
        assert!(permute_rows(&data, 12, 3, 5).is_err());
    }
}
