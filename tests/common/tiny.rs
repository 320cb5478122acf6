//! Tiny random Llama models written by the tests themselves: as a Hugging Face directory
//! (config.json + model.safetensors) and as a GGUF file (with llama.cpp's q/k row permutation).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use lorafuse::lora::peft::{Adapter, Factors, LoraConfig};

use super::Rng;

#[derive(Clone, Debug)]
pub struct Tiny {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub inter: usize,
    pub layers: usize,
    pub vocab: usize,
    pub tie: bool,
    /// Qwen2: biases on q, k, v.
    pub qwen2: bool,
    pub rope_theta: f64,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny {
            hidden: 48,
            heads: 3,
            kv_heads: 1,
            head_dim: 16,
            inter: 80,
            layers: 2,
            vocab: 97,
            tie: true,
            qwen2: false,
            rope_theta: 10000.0,
        }
    }
}

/// Hugging Face tensor name → (shape, values).
pub type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

pub fn random_weights(t: &Tiny, seed: u64) -> Weights {
    let mut rng = Rng::new(seed);
    let mut w = Weights::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, rng: &mut Rng| {
        let n = shape.iter().product();
        let v = rng.vec(n).iter().map(|x| x * scale).collect();
        w.insert(name, (shape, v));
    };
    let (h, f) = (t.hidden, t.inter);
    let (nq, nkv) = (t.heads * t.head_dim, t.kv_heads * t.head_dim);
    put("model.embed_tokens.weight".into(), vec![t.vocab, h], 1.0, &mut rng);
    if !t.tie {
        put("lm_head.weight".into(), vec![t.vocab, h], 0.2, &mut rng);
    }
    let s = |fan_in: usize| 1.5 / (fan_in as f32).sqrt();
    for i in 0..t.layers {
        let p = format!("model.layers.{i}");
        for name in ["input_layernorm.weight", "post_attention_layernorm.weight"] {
            // norms near 1, shaped like trained ones
            put(format!("{p}.{name}"), vec![h], 0.3, &mut rng);
        }
        put(format!("{p}.self_attn.q_proj.weight"), vec![nq, h], s(h), &mut rng);
        put(format!("{p}.self_attn.k_proj.weight"), vec![nkv, h], s(h), &mut rng);
        put(format!("{p}.self_attn.v_proj.weight"), vec![nkv, h], s(h), &mut rng);
        put(format!("{p}.self_attn.o_proj.weight"), vec![h, nq], s(nq), &mut rng);
        put(format!("{p}.mlp.gate_proj.weight"), vec![f, h], s(h), &mut rng);
        put(format!("{p}.mlp.up_proj.weight"), vec![f, h], s(h), &mut rng);
        put(format!("{p}.mlp.down_proj.weight"), vec![h, f], s(f), &mut rng);
        if t.qwen2 {
            put(format!("{p}.self_attn.q_proj.bias"), vec![nq], 0.3, &mut rng);
            put(format!("{p}.self_attn.k_proj.bias"), vec![nkv], 0.3, &mut rng);
            put(format!("{p}.self_attn.v_proj.bias"), vec![nkv], 0.3, &mut rng);
        }
    }
    put("model.norm.weight".into(), vec![h], 0.3, &mut rng);
    for (name, (_, v)) in w.iter_mut() {
        if name.ends_with("norm.weight") {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
    }
    w
}

pub fn config_json(t: &Tiny) -> String {
    serde_json::json!({
        "architectures": [if t.qwen2 { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": if t.qwen2 { "qwen2" } else { "llama" },
        "hidden_size": t.hidden,
        "intermediate_size": t.inter,
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads,
        "num_key_value_heads": t.kv_heads,
        "head_dim": t.head_dim,
        "vocab_size": t.vocab,
        "rope_theta": t.rope_theta,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 512,
        "tie_word_embeddings": t.tie,
        "torch_dtype": "float32",
    })
    .to_string()
}

/// Writes config.json and model.safetensors (f32, or f16/bf16 when asked).
pub fn write_hf(dir: &Path, t: &Tiny, w: &Weights, dtype: safetensors::Dtype) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config_json(t)).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .iter()
        .map(|(name, (shape, v))| {
            let b: Vec<u8> = match dtype {
                safetensors::Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
                safetensors::Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            (name.clone(), shape.clone(), b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    let data = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), data).unwrap();
}

/// llama.cpp's permutation of q/k rows (what `unpermute_rows` undoes).
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let hf_row = h * hd + t * half + j;
                let gg_row = h * hd + 2 * j + t;
                out[gg_row * cols..(gg_row + 1) * cols].copy_from_slice(&data[hf_row * cols..(hf_row + 1) * cols]);
            }
        }
    }
    out
}

/// A GGUF metadata value.
pub enum Meta {
    U32(u32),
    F32(f32),
    Str(String),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// A GGUF file: metadata and (name, GGUF dims innermost first, GGML type id, raw bytes).
pub fn write_gguf(path: &Path, meta: &[(String, Meta)], tensors: &[GgufTensor]) {
    let mut f: Vec<u8> = Vec::new();
    let s = |f: &mut Vec<u8>, v: &str| {
        f.extend((v.len() as u64).to_le_bytes());
        f.extend(v.as_bytes());
    };
    f.extend(b"GGUF");
    f.extend(3u32.to_le_bytes());
    f.extend((tensors.len() as u64).to_le_bytes());
    f.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        s(&mut f, k);
        match v {
            Meta::U32(x) => {
                f.extend(4u32.to_le_bytes());
                f.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                f.extend(6u32.to_le_bytes());
                f.extend(x.to_le_bytes());
            }
            Meta::Bool(x) => {
                f.extend(7u32.to_le_bytes());
                f.push(*x as u8);
            }
            Meta::Str(x) => {
                f.extend(8u32.to_le_bytes());
                s(&mut f, x);
            }
            Meta::Strs(xs) => {
                f.extend(9u32.to_le_bytes());
                f.extend(8u32.to_le_bytes());
                f.extend((xs.len() as u64).to_le_bytes());
                for x in xs {
                    s(&mut f, x);
                }
            }
            Meta::I32s(xs) => {
                f.extend(9u32.to_le_bytes());
                f.extend(5u32.to_le_bytes());
                f.extend((xs.len() as u64).to_le_bytes());
                for x in xs {
                    f.extend(x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, dims, ty, bytes) in tensors {
        s(&mut f, name);
        f.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            f.extend(d.to_le_bytes());
        }
        f.extend(ty.to_le_bytes());
        f.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset += (bytes.len() as u64).div_ceil(32) * 32;
    }
    while !f.len().is_multiple_of(32) {
        f.push(0);
    }
    let start = f.len();
    for ((_, _, _, bytes), off) in tensors.iter().zip(offsets) {
        f.resize(start + off as usize, 0);
        f.extend(bytes);
    }
    std::fs::write(path, f).unwrap();
}

/// GGUF Q8_0 bytes of `v` (a multiple of 32 values): ggml's absmax rule, d = amax/127 in f16.
pub fn q8_0_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in v.chunks(32) {
        let d = half::f16::from_f32(c.iter().fold(0.0f32, |m, x| m.max(x.abs())) / 127.0);
        let id = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
        out.extend(d.to_le_bytes());
        out.extend(c.iter().map(|&x| (x * id).round().clamp(-128.0, 127.0) as i8 as u8));
    }
    out
}

/// GGUF Q4_1 bytes of `v` (a multiple of 32 values): min/max blocks with f16 scale and offset.
pub fn q4_1_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in v.chunks(32) {
        let lo = c.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = c.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let d = half::f16::from_f32((hi - lo) / 15.0);
        let m = half::f16::from_f32(lo);
        let (df, mf) = (d.to_f32(), m.to_f32());
        let q = |x: f32| if df > 0.0 { ((x - mf) / df).round().clamp(0.0, 15.0) as u8 } else { 0 };
        out.extend(d.to_le_bytes());
        out.extend(m.to_le_bytes());
        out.extend((0..16).map(|b| q(c[b]) | (q(c[b + 16]) << 4)));
    }
    out
}

/// The tiny model as a GGUF with F32 tensors (or F16 where `f16` is set), q/k permuted as
/// llama.cpp's converter does.
pub fn write_gguf_model(path: &Path, t: &Tiny, w: &Weights, f16: bool) {
    write_gguf_model_as(path, t, w, if f16 { 1 } else { 0 });
}

/// Likewise with the 2-D weights in GGML type `ty` (0 F32, 1 F16, 3 Q4_1, 8 Q8_0).
pub fn write_gguf_model_as(path: &Path, t: &Tiny, w: &Weights, ty: u32) {
    let (meta, tensors) = gguf_model_parts(t, w, ty);
    write_gguf(path, &meta, &tensors);
}

/// A GGUF tensor: name, dims innermost first, GGML type id, raw bytes.
pub type GgufTensor = (String, Vec<u64>, u32, Vec<u8>);

/// What `write_gguf_model_as` writes, for tests to spoil before writing.
pub fn gguf_model_parts(t: &Tiny, w: &Weights, ty: u32) -> (Vec<(String, Meta)>, Vec<GgufTensor>) {
    let arch = if t.qwen2 { "qwen2" } else { "llama" };
    let key = |k: &str| format!("{arch}.{k}");
    let meta = vec![
        ("general.architecture".to_string(), Meta::Str(arch.into())),
        (key("block_count"), Meta::U32(t.layers as u32)),
        (key("embedding_length"), Meta::U32(t.hidden as u32)),
        (key("feed_forward_length"), Meta::U32(t.inter as u32)),
        (key("attention.head_count"), Meta::U32(t.heads as u32)),
        (key("attention.head_count_kv"), Meta::U32(t.kv_heads as u32)),
        (key("rope.dimension_count"), Meta::U32(t.head_dim as u32)),
        (key("rope.freq_base"), Meta::F32(t.rope_theta as f32)),
        (key("attention.layer_norm_rms_epsilon"), Meta::F32(1e-5)),
        (key("context_length"), Meta::U32(512)),
    ];
    let mut tensors = Vec::new();
    for (name, (shape, v)) in w {
        let gname = gguf_name(name);
        let mut data = v.clone();
        if !t.qwen2 && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight")) {
            let heads = if name.contains("q_proj") { t.heads } else { t.kv_heads };
            data = permute_rows(&data, shape[0], shape[1], heads);
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let (ty, bytes): (u32, Vec<u8>) = match (ty, shape.len()) {
            (1, 2) => (1, data.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()),
            (3, 2) => (3, q4_1_bytes(&data)),
            (8, 2) => (8, q8_0_bytes(&data)),
            _ => (0, data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        tensors.push((gname, dims, ty, bytes));
    }
    (meta, tensors)
}

fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let m = match rest {
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
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{m}")
}

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lorafuse-{name}-{}-{}", std::process::id(), super::seed()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A random adapter for `spec` on `targets` (B zero when `zero_b`: a fresh adapter), f32.
pub fn random_adapter(rng: &mut Rng, spec: &Tiny, targets: &[&str], r: usize, alpha: f64, zero_b: bool) -> Adapter {
    let (h, f) = (spec.hidden, spec.inter);
    let (nq, nkv) = (spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim);
    let mut factors = BTreeMap::new();
    for layer in 0..spec.layers {
        for &t in targets {
            let (inp, out) = match t {
                "q_proj" => (h, nq),
                "k_proj" | "v_proj" => (h, nkv),
                "o_proj" => (nq, h),
                "gate_proj" | "up_proj" => (h, f),
                _ => (f, h),
            };
            let b = if zero_b { vec![0.0; out * r] } else { rng.vec(out * r).iter().map(|x| x * 0.2).collect() };
            factors.insert(
                (layer, t.to_string()),
                Factors { a: rng.vec(r * inp).iter().map(|x| x * 0.3).collect(), b, inp, out },
            );
        }
    }
    let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
    Adapter { config: LoraConfig::new(r, alpha, 0.05, &targets, false, None), factors, source: None }
}

/// The vocabulary a chat-capable tiny model needs: 256 byte-level tokens and three specials.
pub const CHAT_VOCAB: usize = 259;

/// A tiny model a user could chat with: weights, a byte-level tokenizer (tokenizer.json, one
/// token a byte, ChatML's <|im_start|> <|im_end|> and <|endoftext|> as specials) and a ChatML
/// template in tokenizer_config.json. Returns the spec.
pub fn write_chat_model(dir: &Path, seed: u64) -> Tiny {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let spec = Tiny { vocab: CHAT_VOCAB, layers: 2, ..Tiny::default() };
    write_hf(dir, &spec, &random_weights(&spec, seed), safetensors::Dtype::F32);
    // room for a judge's prompt (the rubric is ~2,000 byte tokens)
    let mut cfg: serde_json::Value = serde_json::from_str(&config_json(&spec)).unwrap();
    cfg["max_position_embeddings"] = 4096.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: tokenizers::models::bpe::Vocab =
        alphabet.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, vec![]).build().unwrap();
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tok.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<tokenizers::AddedToken> = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
        .iter()
        .map(|s| tokenizers::AddedToken::from(s.to_string(), true))
        .collect();
    tok.add_special_tokens(&specials);
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let template = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let cfg = serde_json::json!({ "chat_template": template, "eos_token": "<|im_end|>", "bos_token": null, "add_bos_token": false });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    spec
}
