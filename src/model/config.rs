//! Llama-family hyper-parameters, from GGUF metadata or a Hugging Face config.json.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::gguf::Gguf;

/// Llama-3's frequency-dependent RoPE scaling (HF `rope_type: "llama3"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_positions: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Llama3(Llama3Scaling),
    /// Per-frequency divisors, as llama.cpp stores Llama-3 scaling in GGUF (`rope_freqs.weight`).
    Factors(Vec<f32>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    /// Llama with biases on the q, k and v projections.
    Qwen2,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub rms_eps: f64,
    pub max_positions: usize,
    /// Where max_positions came from (key and file), for the messages of prompts over it.
    pub context_source: String,
    pub tie_embeddings: bool,
}

/// The largest dimension, head or layer count taken: far above any Llama-family model, far
/// below what would overflow the size computations that follow.
pub const MAX_SIZE: usize = 1 << 24;

/// The name each hyper-parameter has in the file it is read from, for its errors.
struct Keys {
    hidden: String,
    intermediate: String,
    layers: String,
    heads: String,
    kv_heads: String,
    head_dim: String,
    vocab: String,
    rope_theta: String,
    rms_eps: String,
    context: String,
}

impl Keys {
    fn gguf(arch: &str) -> Keys {
        let k = |s: &str| format!("{arch}.{s}");
        Keys {
            hidden: k("embedding_length"),
            intermediate: k("feed_forward_length"),
            layers: k("block_count"),
            heads: k("attention.head_count"),
            kv_heads: k("attention.head_count_kv"),
            head_dim: k("rope.dimension_count"),
            vocab: k("vocab_size"),
            rope_theta: k("rope.freq_base"),
            rms_eps: k("attention.layer_norm_rms_epsilon"),
            context: k("context_length"),
        }
    }

    fn hf() -> Keys {
        let k = |s: &str| s.to_string();
        Keys {
            hidden: k("hidden_size"),
            intermediate: k("intermediate_size"),
            layers: k("num_hidden_layers"),
            heads: k("num_attention_heads"),
            kv_heads: k("num_key_value_heads"),
            head_dim: k("head_dim"),
            vocab: k("vocab_size"),
            rope_theta: k("rope_theta"),
            rms_eps: k("rms_norm_eps"),
            context: k("max_position_embeddings"),
        }
    }
}

/// "KEY in FILE", or the default's origin when the file does not give KEY.
fn context_source(key: &str, file: &Path, given: bool) -> String {
    if given {
        format!("{key} in {}", file.display())
    } else {
        format!("the default, {} giving no {key}", file.display())
    }
}

impl LlamaConfig {
    /// RoPE inverse frequencies θ^(−2i/d), i < d/2, with the model's scaling applied (f64, as
    /// Hugging Face computes them before casting).
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2).map(|i| self.rope_theta.powf(-(2.0 * i as f64) / d as f64)).collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Factors(f) => base.iter().zip(f).map(|(b, f)| b / *f as f64).collect(),
            RopeScaling::Llama3(s) => {
                let low_wavelen = s.original_max_positions / s.low_freq_factor;
                let high_wavelen = s.original_max_positions / s.high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / s.factor
                        } else {
                            let smooth = (s.original_max_positions / wavelen - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    fn check(self, source: &Path, keys: &Keys) -> Result<Self> {
        let bad = |key: &str, msg: String| Err(Error::file(source, format!("{key}: {msg}")));
        let sizes = [
            (&keys.hidden, self.hidden),
            (&keys.intermediate, self.intermediate),
            (&keys.layers, self.layers),
            (&keys.heads, self.heads),
            (&keys.kv_heads, self.kv_heads),
            (&keys.head_dim, self.head_dim),
            (&keys.vocab, self.vocab),
        ];
        for (key, v) in sizes {
            if v == 0 || v > MAX_SIZE {
                return bad(key, format!("{v} is not a plausible size (1 to {MAX_SIZE})"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(
                &keys.kv_heads,
                format!("{} KV heads do not divide {} attention heads", self.kv_heads, self.heads),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(&keys.head_dim, format!("head dimension {} is not even (RoPE rotates pairs)", self.head_dim));
        }
        // the kernels take both as f32: 1e-50 would be 0 there, 1e300 infinite
        if !(self.rope_theta > 0.0 && (self.rope_theta as f32).is_finite()) {
            return bad(&keys.rope_theta, format!("RoPE base {} must be a finite number > 0", self.rope_theta));
        }
        if !(self.rms_eps as f32 > 0.0 && (self.rms_eps as f32).is_finite()) {
            return bad(&keys.rms_eps, format!("RMSNorm epsilon {} must be a finite number > 0", self.rms_eps));
        }
        if self.max_positions == 0 {
            return bad(&keys.context, "context length 0: a model needs at least one position".into());
        }
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Llama3(s) => {
                let fields = [
                    ("factor", s.factor),
                    ("low_freq_factor", s.low_freq_factor),
                    ("high_freq_factor", s.high_freq_factor),
                    ("original_max_position_embeddings", s.original_max_positions),
                ];
                if let Some((name, v)) = fields.iter().find(|(_, v)| !(*v > 0.0 && v.is_finite())) {
                    return bad(&format!("rope_scaling.{name}"), format!("{v} must be a finite number > 0"));
                }
                if s.high_freq_factor == s.low_freq_factor {
                    return bad(
                        "rope_scaling",
                        "high_freq_factor equals low_freq_factor (the bands would divide by 0)".into(),
                    );
                }
            }
            RopeScaling::Factors(f) => {
                let what = "tensor 'rope_freqs.weight'";
                if f.len() != self.head_dim / 2 {
                    return bad(what, format!("{} factors for head dimension {} (want half)", f.len(), self.head_dim));
                }
                if let Some(i) = f.iter().position(|v| !(*v > 0.0 && v.is_finite())) {
                    return bad(what, format!("factor {i} is {}, not a finite number > 0", f[i]));
                }
            }
        }
        Ok(self)
    }

    /// From GGUF metadata (`general.architecture` llama or qwen2).
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig> {
        let arch_name = g.str("general.architecture")?.to_string();
        let arch = match arch_name.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::file(
                    g.path(),
                    format!("architecture '{other}' is not a Llama-family model lorafuse runs"),
                ));
            }
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let keys = Keys::gguf(&arch_name);
        let context = g.opt_u64(&keys.context)?;
        let hidden = g.u64(&k("embedding_length"))? as usize;
        let heads = g.u64(&k("attention.head_count"))? as usize;
        let kv_heads = g.opt_u64(&k("attention.head_count_kv"))?.unwrap_or(heads as u64) as usize;
        // llama.cpp's head size is key_length (default hidden / heads) and the rotary size
        // rope.dimension_count; lorafuse rotates whole heads with values as wide as keys
        let rot = g.opt_u64(&k("rope.dimension_count"))?;
        let head_dim = g.opt_u64(&k("attention.key_length"))?.or(rot).map_or(hidden / heads.max(1), |d| d as usize);
        for (key, v) in
            [("rope.dimension_count", rot), ("attention.value_length", g.opt_u64(&k("attention.value_length"))?)]
        {
            if v.is_some_and(|v| v as usize != head_dim) {
                return Err(g.meta_err(&k(key), format!("{} differs from the head size {head_dim}: partial rotary or unequal key/value heads are not supported", v.unwrap_or(0))));
            }
        }
        let vocab = match g.opt_u64(&k("vocab_size"))? {
            Some(v) => v as usize,
            None => g.tensor("token_embd.weight")?.shape()[0],
        };
        let rope_scaling = match g.tensor("rope_freqs.weight") {
            Ok(_) => RopeScaling::Factors(g.tensor_f32("rope_freqs.weight")?.1),
            Err(_) => RopeScaling::None,
        };
        LlamaConfig {
            arch,
            hidden,
            intermediate: g.u64(&k("feed_forward_length"))? as usize,
            layers: g.u64(&k("block_count"))? as usize,
            heads,
            kv_heads,
            head_dim,
            vocab,
            rope_theta: g.opt_f64(&k("rope.freq_base"))?.unwrap_or(10000.0),
            rope_scaling,
            rms_eps: g.opt_f64(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            max_positions: context.unwrap_or(2048) as usize,
            context_source: context_source(&keys.context, g.path(), context.is_some()),
            tie_embeddings: g.tensor("output.weight").is_err(),
        }
        .check(g.path(), &keys)
    }

    /// From a Hugging Face config.json.
    pub fn from_hf_json(path: &Path) -> Result<LlamaConfig> {
        #[derive(Deserialize)]
        struct RopeScalingJson {
            #[serde(alias = "type")]
            rope_type: Option<String>,
            factor: Option<f64>,
            low_freq_factor: Option<f64>,
            high_freq_factor: Option<f64>,
            original_max_position_embeddings: Option<f64>,
        }
        #[derive(Deserialize)]
        struct Json {
            model_type: Option<String>,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            vocab_size: usize,
            rope_theta: Option<f64>,
            rope_scaling: Option<RopeScalingJson>,
            rms_norm_eps: Option<f64>,
            max_position_embeddings: Option<usize>,
            tie_word_embeddings: Option<bool>,
            hidden_act: Option<String>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let j: Json = serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not a model config: {e}")))?;
        let arch = match j.model_type.as_deref() {
            Some("llama") | Some("mistral") | None => Arch::Llama,
            Some("qwen2") => Arch::Qwen2,
            Some(other) => {
                return Err(Error::file(
                    path,
                    format!("model_type '{other}' is not a Llama-family model lorafuse runs"),
                ));
            }
        };
        // the MLP is SwiGLU: another activation would run silently as silu
        if let Some(act) = j.hidden_act.as_deref().filter(|a| !matches!(*a, "silu" | "swish")) {
            return Err(Error::file(path, format!("hidden_act '{act}': lorafuse's MLP is SwiGLU (silu)")));
        }
        let rope_scaling = match j.rope_scaling {
            None => RopeScaling::None,
            Some(s) if s.rope_type.as_deref() == Some("llama3") => RopeScaling::Llama3(Llama3Scaling {
                factor: s.factor.unwrap_or(8.0),
                low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                original_max_positions: s.original_max_position_embeddings.unwrap_or(8192.0),
            }),
            Some(s) if s.rope_type.as_deref() == Some("default") => RopeScaling::None,
            Some(s) => {
                return Err(Error::file(
                    path,
                    format!("rope_scaling type {:?} is not supported (llama3 and default are)", s.rope_type),
                ));
            }
        };
        LlamaConfig {
            arch,
            hidden: j.hidden_size,
            intermediate: j.intermediate_size,
            layers: j.num_hidden_layers,
            heads: j.num_attention_heads,
            kv_heads: j.num_key_value_heads.unwrap_or(j.num_attention_heads),
            head_dim: j.head_dim.unwrap_or(j.hidden_size / j.num_attention_heads.max(1)),
            vocab: j.vocab_size,
            rope_theta: j.rope_theta.unwrap_or(10000.0),
            rope_scaling,
            rms_eps: j.rms_norm_eps.unwrap_or(1e-6),
            max_positions: j.max_position_embeddings.unwrap_or(2048),
            context_source: context_source("max_position_embeddings", path, j.max_position_embeddings.is_some()),
            tie_embeddings: j.tie_word_embeddings.unwrap_or(false),
        }
        .check(path, &Keys::hf())
    }
}
