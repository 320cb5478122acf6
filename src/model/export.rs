//! A model written as a Hugging Face directory, optionally with a LoRA adapter merged into its
//! weights (W' = W + s·B·A): model.safetensors (or shards with their index) in f32, f16 or bf16,
//! config.json, and the tokenizer files, so lorafuse, transformers and vLLM load it alike. A GGUF
//! source is written dequantized, with q/k rows in Hugging Face order, its config and tokenizer
//! (with the chat template) rebuilt from the metadata.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lora::peft::Adapter;
use crate::model::config::{Arch, LlamaConfig, RopeScaling};
use crate::model::source::ModelSource;

/// Shards stay below this many bytes (as `save_pretrained` splits large models).
const SHARD_BYTES: usize = 2 << 30;

/// What was written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Exported {
    pub dir: PathBuf,
    pub dtype: String,
    pub shards: usize,
    pub tensors: usize,
    pub bytes: u64,
    /// Linear weights an adapter was merged into.
    pub merged: usize,
    /// Tokenizer and config files written beside the weights.
    pub files: Vec<String>,
}

/// Every tensor of the model in Hugging Face names, with its shape; biases and an untied head
/// only where the source has them.
pub fn tensor_list(src: &ModelSource, cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, f, hd) = (cfg.hidden, cfg.intermediate, cfg.head_dim);
    let (nq, nkv) = (cfg.heads * hd, cfg.kv_heads * hd);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab, h])];
    for i in 0..cfg.layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        for (m, o, inp) in [("q_proj", nq, h), ("k_proj", nkv, h), ("v_proj", nkv, h), ("o_proj", h, nq)] {
            out.push((format!("{p}.self_attn.{m}.weight"), vec![o, inp]));
            let bias = format!("{p}.self_attn.{m}.bias");
            if src.has(&bias) {
                out.push((bias, vec![o]));
            }
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        for (m, o, inp) in [("gate_proj", f, h), ("up_proj", f, h), ("down_proj", h, f)] {
            out.push((format!("{p}.mlp.{m}.weight"), vec![o, inp]));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_embeddings && src.has("lm_head.weight") {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab, h]));
    }
    out
}

/// (layer, target) of a linear weight's name.
fn linear_of(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("self_attn.").or_else(|| rest.strip_prefix("mlp."))?;
    Some((layer.parse().ok()?, rest.strip_suffix(".weight")?))
}

/// The dtype a source stores its floating-point weights in (a GGUF's quantized weights count
/// as f16, its own float type).
pub fn source_dtype(src: &ModelSource) -> safetensors::Dtype {
    match src {
        ModelSource::Gguf(_) => safetensors::Dtype::F16,
        ModelSource::Hf(h) => h.dtype_of("model.embed_tokens.weight").unwrap_or(safetensors::Dtype::F32),
    }
}

fn encode(v: &[f32], dtype: safetensors::Dtype) -> Vec<u8> {
    match dtype {
        safetensors::Dtype::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        safetensors::Dtype::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

fn dtype_name(d: safetensors::Dtype) -> &'static str {
    match d {
        safetensors::Dtype::F16 => "float16",
        safetensors::Dtype::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Writes `src` (with `merge` = (adapter, weight) folded in) as a Hugging Face directory `dir`.
/// `progress(done, total)` follows the tensors.
pub fn export_hf(
    src: &ModelSource,
    merge: &[(&Adapter, f32)],
    dtype: safetensors::Dtype,
    dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Exported> {
    if !matches!(dtype, safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16) {
        return Err(Error::Invalid(format!("merged weights are written as f32, f16 or bf16, not {dtype:?}")));
    }
    let cfg = src.config()?;
    if matches!(cfg.rope_scaling, RopeScaling::Factors(_)) && matches!(src, ModelSource::Gguf(_)) {
        return Err(Error::file(
            src.path(),
            "its RoPE frequencies come as a rope_freqs tensor, which a Hugging Face config cannot hold; merge into the model's Hugging Face directory instead",
        ));
    }
    check_merge(&cfg, merge)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let list = tensor_list(src, &cfg);
    // per shard: (name, shape, encoded bytes) of its tensors
    type Encoded = (String, Vec<usize>, Vec<u8>);
    let mut shards: Vec<Vec<Encoded>> = vec![Vec::new()];
    let (mut shard_bytes, mut total, mut merged) = (0usize, 0u64, 0usize);
    for (n, (name, shape)) in list.iter().enumerate() {
        let mut w = src.tensor(name, shape, &cfg)?;
        merged += merge_into(&mut w, name, merge) as usize;
        let bytes = encode(&w, dtype);
        if shard_bytes + bytes.len() > SHARD_BYTES && shard_bytes > 0 {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shard_bytes += bytes.len();
        total += bytes.len() as u64;
        shards.last_mut().expect("one shard at least").push((name.clone(), shape.clone(), bytes));
        progress(n + 1, list.len());
    }
    let count = shards.len();
    let mut index = serde_json::Map::new();
    for (s, tensors) in shards.iter().enumerate() {
        let file = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", s + 1)
        };
        let refs: Vec<(String, Vec<usize>, &[u8])> =
            tensors.iter().map(|(n, shape, b)| (n.clone(), shape.clone(), b.as_slice())).collect();
        crate::atomic::write_safetensors(&dir.join(&file), dtype, &refs, crate::atomic::pt_metadata())?;
        for (n, ..) in tensors {
            index.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let mut files = Vec::new();
    if count > 1 {
        let j = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": index });
        write_json(dir, "model.safetensors.index.json", &j, &mut files)?;
    }
    write_side_files(src, &cfg, dtype, dir, &mut files)?;
    Ok(Exported {
        dir: dir.to_path_buf(),
        dtype: dtype_name(dtype).into(),
        shards: count,
        tensors: list.len(),
        bytes: total,
        merged,
        files,
    })
}

/// Every factor of the adapters to merge fits a linear layer of the model.
pub(crate) fn check_merge(cfg: &LlamaConfig, merge: &[(&Adapter, f32)]) -> Result<()> {
    for (a, _) in merge {
        for ((layer, target), f) in &a.factors {
            if let Some(why) = crate::lora::attach::misfit(cfg, *layer, target, f) {
                return Err(Error::Invalid(format!(
                    "{}: {why}",
                    a.source.as_ref().map_or("adapter".into(), |p| p.display().to_string())
                )));
            }
        }
    }
    Ok(())
}

/// Folds every adapter of `merge` that targets the linear weight `name` into `w` (W += w·s·B·A);
/// whether any did.
pub(crate) fn merge_into(w: &mut [f32], name: &str, merge: &[(&Adapter, f32)]) -> bool {
    let Some((layer, target)) = linear_of(name) else { return false };
    let mut touched = false;
    for (a, weight) in merge {
        if let Some(f) = a.get(layer, target) {
            add_delta(w, f, (*weight * a.scale()) as f64);
            touched = true;
        }
    }
    touched
}

/// W[out, in] += s·B·A, in f64.
fn add_delta(w: &mut [f32], f: &crate::lora::peft::Factors, s: f64) {
    let r = f.a.len() / f.inp;
    for o in 0..f.out {
        for i in 0..f.inp {
            let d: f64 = (0..r).map(|j| f.b[o * r + j] as f64 * f.a[j * f.inp + i] as f64).sum();
            w[o * f.inp + i] = (w[o * f.inp + i] as f64 + s * d) as f32;
        }
    }
}

fn write_json(dir: &Path, name: &str, v: &serde_json::Value, files: &mut Vec<String>) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::atomic::write_atomic(&dir.join(name), text)?;
    files.push(name.to_string());
    Ok(())
}

/// config.json and the tokenizer files: copied from a Hugging Face source (its config with the
/// new dtype), rebuilt from a GGUF's metadata.
fn write_side_files(
    src: &ModelSource,
    cfg: &LlamaConfig,
    dtype: safetensors::Dtype,
    dir: &Path,
    files: &mut Vec<String>,
) -> Result<()> {
    match src {
        ModelSource::Hf(_) => {
            let from = src.path();
            let cfg_path = from.join("config.json");
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?;
            let mut j: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::file(&cfg_path, format!("invalid JSON: {e}")))?;
            j["torch_dtype"] = dtype_name(dtype).into();
            write_json(dir, "config.json", &j, files)?;
            for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
            {
                let p = from.join(name);
                if p.exists() {
                    let bytes = std::fs::read(&p).map_err(|e| Error::file(&p, e))?;
                    crate::atomic::write_atomic(&dir.join(name), bytes)?;
                    files.push(name.to_string());
                }
            }
        }
        ModelSource::Gguf(g) => {
            let tok = src.tokenizer().ok();
            let id = |t: &Option<String>| -> serde_json::Value {
                t.as_deref().and_then(|t| tok.as_ref()?.token_to_id(t)).map_or(serde_json::Value::Null, |v| v.into())
            };
            let (model_type, arch) = match cfg.arch {
                Arch::Llama => ("llama", "LlamaForCausalLM"),
                Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            };
            let mut j = serde_json::json!({
                "architectures": [arch],
                "model_type": model_type,
                "hidden_size": cfg.hidden,
                "intermediate_size": cfg.intermediate,
                "num_hidden_layers": cfg.layers,
                "num_attention_heads": cfg.heads,
                "num_key_value_heads": cfg.kv_heads,
                "head_dim": cfg.head_dim,
                "vocab_size": cfg.vocab,
                "hidden_act": "silu",
                "rms_norm_eps": cfg.rms_eps,
                "rope_theta": cfg.rope_theta,
                "max_position_embeddings": cfg.max_positions,
                "tie_word_embeddings": cfg.tie_embeddings,
                "attention_bias": cfg.arch == Arch::Qwen2,
                "torch_dtype": dtype_name(dtype),
            });
            if let RopeScaling::Llama3(s) = &cfg.rope_scaling {
                j["rope_scaling"] = serde_json::json!({
                    "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_positions,
                });
            }
            if let Some(t) = &tok {
                j["bos_token_id"] = id(&t.bos_token);
                j["eos_token_id"] = id(&t.eos_token);
            }
            write_json(dir, "config.json", &j, files)?;
            if let Some(t) = &tok {
                crate::atomic::write_atomic(&dir.join("tokenizer.json"), t.to_json()?)?;
                files.push("tokenizer.json".into());
                let template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
                let mut tc = serde_json::json!({
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "add_bos_token": t.add_bos,
                    "model_max_length": cfg.max_positions,
                    "clean_up_tokenization_spaces": false,
                });
                // unknown and padding tokens by id, for a GGUF written back from this directory
                let token = |key: &str| {
                    let id = g.get(&format!("tokenizer.ggml.{key}"))?.as_u64()?;
                    g.str_array("tokenizer.ggml.tokens").ok()?.get(id as usize).map(|s| s.to_string())
                };
                let (unk, pad) = (token("unknown_token_id"), token("padding_token_id"));
                for (k, v) in
                    [("bos_token", &t.bos_token), ("eos_token", &t.eos_token), ("unk_token", &unk), ("pad_token", &pad)]
                {
                    if let Some(v) = v {
                        tc[k] = v.clone().into();
                    }
                }
                if let Some(tpl) = template {
                    tc["chat_template"] = tpl.into();
                }
                write_json(dir, "tokenizer_config.json", &tc, files)?;
                let eos: Vec<u32> = t.eos.clone();
                let gen_cfg = serde_json::json!({ "bos_token_id": id(&t.bos_token), "eos_token_id": eos });
                write_json(dir, "generation_config.json", &gen_cfg, files)?;
            }
        }
    }
    Ok(())
}
