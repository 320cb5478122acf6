//! PEFT adapters as llama.cpp's LoRA GGUF, the file `llama-cli --lora`, `--lora-scaled`,
//! llama-server's per-request `lora` list and Ollama's ADAPTER line take (read by llama.cpp's
//! src/llama-adapter.cpp, the layout its convert_lora_to_gguf.py writes):
//! - metadata: general.architecture (the base's), general.type "adapter", adapter.type "lora",
//!   adapter.lora.alpha (F32: llama.cpp aborts on any other type);
//! - per target, `<base tensor>.lora_a` of dims [in, r] (PEFT's A [r, in] as is) and
//!   `<base tensor>.lora_b` of dims [r, out] (B [out, r]), f32, e.g. `blk.3.attn_q.weight.lora_a`;
//! - llama.cpp scales by alpha / r with r read off each lora_b, so alpha is written as PEFT's
//!   scale × r (rsLoRA's α/√r included); an alpha of 0 would mean "no scaling" there, not zero;
//! - q and k of llama-architecture files hold their rows in llama.cpp's rotary order, so B's rows
//!   are permuted as the converter permutes the base weights (A's columns are the input, untouched).
//!
//! `load_gguf_lora` reads such a file back (any that llama.cpp loads, not only ours) as an adapter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::lora::attach::misfit;
use crate::lora::peft::{Adapter, Factors, LoraConfig, TARGETS, module_path};
use crate::model::config::{Arch, LlamaConfig};
use crate::model::gguf::{Gguf, Value};
use crate::model::gguf_write::{Metadata, TensorOut, write_gguf};
use crate::model::source::{ModelSource, gguf_name, permute_rows, permuted_heads, unpermute_rows};

/// The Hugging Face weight name a PEFT target of `layer` adapts.
fn hf_weight(layer: usize, target: &str) -> String {
    module_path(layer, target).trim_start_matches("base_model.model.").to_string() + ".weight"
}

/// The architecture name llama.cpp knows the base as: the GGUF's own, else the config's.
fn arch_name(src: &ModelSource, cfg: &LlamaConfig) -> Result<String> {
    match src {
        ModelSource::Gguf(g) => Ok(g.str("general.architecture")?.to_string()),
        ModelSource::Hf(_) => Ok(match cfg.arch {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
        .to_string()),
    }
}

/// `adapter` for the base model `src` as a LoRA GGUF's metadata and tensors. Targets the base
/// lacks, shapes that differ from it, non-finite factors and a zero scale are errors naming the
/// adapter.
pub fn gguf_lora(adapter: &Adapter, src: &ModelSource) -> Result<(Metadata, Vec<TensorOut>)> {
    let cfg = src.config()?;
    let what = || adapter.source.as_ref().map_or("the adapter".to_string(), |p| p.display().to_string());
    let bad = |msg: String| match &adapter.source {
        Some(p) => Error::file(p, msg),
        None => Error::Invalid(msg),
    };
    let scale = adapter.scale();
    let r = adapter.config.r;
    let alpha = scale * r as f32;
    if !alpha.is_finite() || alpha == 0.0 {
        return Err(bad(format!(
            "scale {scale} (lora_alpha {}, r {r}): llama.cpp reads alpha 0 as no scaling at all, and takes finite ones only",
            adapter.config.lora_alpha
        )));
    }
    let mut tensors = Vec::new();
    for ((layer, target), f) in &adapter.factors {
        let module = module_path(*layer, target);
        if let Some(why) = misfit(&cfg, *layer, target, f) {
            return Err(bad(format!("{module}: {why}, in the base model {}", src.path().display())));
        }
        if f.a.len() != r * f.inp || f.b.len() != f.out * r {
            return Err(bad(format!("{module}: factors of {} and {} values for rank {r}", f.a.len(), f.b.len())));
        }
        if f.a.iter().chain(&f.b).any(|v| !v.is_finite()) {
            return Err(bad(format!("{module}: non-finite values in lora_A or lora_B")));
        }
        let hf = hf_weight(*layer, target);
        if !src.has(&hf) {
            return Err(bad(format!("{module}: the base model {} has no tensor {hf}", src.path().display())));
        }
        let base = gguf_name(&hf).ok_or_else(|| bad(format!("{module}: no GGUF name for {hf}")))?;
        // PEFT adapters are in Hugging Face row order (lorafuse unpermutes a GGUF's q and k as it
        // loads them, as transformers does), llama.cpp's q and k rows in its rotary order
        let b = match permuted_heads(&cfg, &hf) {
            Some(heads) => permute_rows(&f.b, f.out, r, heads).map_err(|e| bad(format!("{module}: {e}")))?,
            None => f.b.clone(),
        };
        tensors.push(TensorOut::f32(format!("{base}.lora_a"), &[r, f.inp], &f.a));
        tensors.push(TensorOut::f32(format!("{base}.lora_b"), &[f.out, r], &b));
    }
    if tensors.is_empty() {
        return Err(bad(format!("{} has no LoRA factors", what())));
    }
    let meta = vec![
        ("general.architecture".to_string(), Value::Str(arch_name(src, &cfg)?)),
        ("general.type".to_string(), Value::Str("adapter".into())),
        ("adapter.type".to_string(), Value::Str("lora".into())),
        ("adapter.lora.alpha".to_string(), Value::F32(alpha)),
        ("general.quantization_version".to_string(), Value::U32(2)),
    ];
    Ok((meta, tensors))
}

/// Writes `adapter` for the base `src` as a LoRA GGUF at `out`, atomically.
pub fn export_gguf_lora(adapter: &Adapter, src: &ModelSource, out: &Path) -> Result<()> {
    let (meta, tensors) = gguf_lora(adapter, src)?;
    write_gguf(out, &meta, &tensors)
}

/// A llama.cpp LoRA GGUF read as an adapter for a model of `cfg`: B's q/k rows back in Hugging Face
/// order, lora_alpha as llama.cpp applies it (alpha / r; an alpha of 0 or none means a scale of 1
/// there, so lora_alpha = r). Norm tensors are skipped as llama.cpp skips them; adapters on the
/// embedding or the LM head, ranks that differ between tensors, another architecture and
/// non-finite values are errors naming the file.
pub fn load_gguf_lora(path: &Path, cfg: &LlamaConfig) -> Result<Adapter> {
    let g = Gguf::open(path)?;
    let bad = |msg: String| Error::file(path, msg);
    for (key, want) in [("general.type", "adapter"), ("adapter.type", "lora")] {
        if g.get(key).and_then(Value::as_str) != Some(want) {
            return Err(bad(format!("not a LoRA GGUF: {key} is {:?}, not '{want}'", g.get(key))));
        }
    }
    let arch = g.str("general.architecture")?;
    let ours = match cfg.arch {
        Arch::Llama => ["llama", "mistral"].contains(&arch),
        Arch::Qwen2 => arch == "qwen2",
    };
    if !ours {
        return Err(bad(format!("an adapter for a '{arch}' model, the base is {:?}", cfg.arch)));
    }
    let alpha = g.get("adapter.lora.alpha").and_then(Value::as_f64).unwrap_or(0.0);
    let mut factors = BTreeMap::new();
    let mut ranks = BTreeSet::new();
    for t in &g.tensors {
        let Some(base) = t.name.strip_suffix(".lora_a") else {
            if t.name.ends_with(".lora_b") || t.name.ends_with("_norm.weight") {
                continue;
            }
            return Err(bad(format!("tensor '{}' is not a LoRA factor", t.name)));
        };
        let (layer, target) = gguf_target(base)
            .ok_or_else(|| bad(format!("'{}': lorafuse adapts the seven projections of a layer only", t.name)))?;
        let b_name = format!("{base}.lora_b");
        let (sa, a) = g.tensor_f32(&t.name)?;
        let (sb, b) = g.tensor_f32(&b_name).map_err(|_| bad(format!("'{}' has no {b_name}", t.name)))?;
        let (&[r, inp], &[out, rb]) = (sa.as_slice(), sb.as_slice()) else {
            return Err(bad(format!("'{base}': factors of shapes {sa:?} and {sb:?} (two dimensions each)")));
        };
        if r != rb {
            return Err(bad(format!("'{base}': lora_a has rank {r}, lora_b {rb}")));
        }
        if a.iter().chain(&b).any(|v| !v.is_finite()) {
            return Err(bad(format!("'{base}': non-finite values")));
        }
        let hf = hf_weight(layer, target);
        let b = match permuted_heads(cfg, &hf) {
            Some(heads) => unpermute_rows(&b, out, r, heads).map_err(|e| bad(format!("'{base}': {e}")))?,
            None => b,
        };
        ranks.insert(r);
        factors.insert((layer, target.to_string()), Factors { a, b, inp, out });
    }
    let r = match (ranks.len(), ranks.first()) {
        (1, Some(&r)) => r,
        (0, _) => return Err(bad("no LoRA tensors".into())),
        _ => return Err(bad(format!("ranks {ranks:?} differ between tensors (lorafuse takes one rank an adapter)"))),
    };
    let targets: Vec<String> =
        TARGETS.iter().filter(|t| factors.keys().any(|(_, ft)| ft == *t)).map(|t| t.to_string()).collect();
    let lora_alpha = if alpha == 0.0 { r as f64 } else { alpha };
    let config = LoraConfig::new(r, lora_alpha, 0.0, &targets, false, None);
    Ok(Adapter { config, factors, source: Some(path.to_path_buf()) })
}

/// (layer, PEFT target) of a GGUF base tensor name such as `blk.3.attn_q.weight`.
fn gguf_target(base: &str) -> Option<(usize, &'static str)> {
    let layer: usize = base.strip_prefix("blk.")?.split('.').next()?.parse().ok()?;
    TARGETS.iter().find(|t| gguf_name(&hf_weight(layer, t)).as_deref() == Some(base)).map(|&t| (layer, t))
}
