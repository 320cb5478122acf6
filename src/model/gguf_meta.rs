//! The GGUF metadata of a Hugging Face model directory, as llama.cpp's convert_hf_to_gguf.py
//! writes it: the hyperparameters under the architecture's keys (from config.json) and the
//! tokenizer as `tokenizer.ggml.*` (from tokenizer.json and tokenizer_config.json: tokens by id,
//! their types, the BPE merges, the special ids, the pre-tokenizer's llama.cpp name and the chat
//! template). Only byte-level BPE tokenizers with a pre-tokenizer llama.cpp (and lorafuse's
//! GGUF tokenizer, model/tokenizer.rs) knows are written; others are refused, naming the file.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::model::config::{Arch, LlamaConfig};
use crate::model::gguf::Value;
use crate::model::gguf_write::Metadata;
use crate::model::tokenizer::{LLAMA3_SPLIT, QWEN2_SPLIT, read_json};

/// llama.cpp's token types (llama_token_type).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The architecture name llama.cpp gives `cfg`'s family.
pub fn arch_name(cfg: &LlamaConfig) -> &'static str {
    match cfg.arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
    }
}

/// Every metadata pair of a GGUF holding the Hugging Face model in `dir` (config `cfg`), in
/// llama.cpp's order (general, hyperparameters, tokenizer).
pub fn hf_metadata(dir: &Path, cfg: &LlamaConfig) -> Result<Metadata> {
    let arch = arch_name(cfg);
    let name = dir.file_name().map_or("model".into(), |n| n.to_string_lossy().to_string());
    let mut m: Metadata = vec![
        ("general.architecture".into(), Value::Str(arch.into())),
        ("general.type".into(), Value::Str("model".into())),
        ("general.name".into(), Value::Str(name)),
    ];
    let u = |v: usize| Value::U32(v as u32);
    for (k, v) in [
        ("block_count", u(cfg.layers)),
        ("context_length", u(cfg.max_positions)),
        ("embedding_length", u(cfg.hidden)),
        ("feed_forward_length", u(cfg.intermediate)),
        ("attention.head_count", u(cfg.heads)),
        ("attention.head_count_kv", u(cfg.kv_heads)),
        ("attention.key_length", u(cfg.head_dim)),
        ("attention.value_length", u(cfg.head_dim)),
        ("rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("attention.layer_norm_rms_epsilon", Value::F32(cfg.rms_eps as f32)),
        ("vocab_size", u(cfg.vocab)),
        ("rope.dimension_count", u(cfg.head_dim)),
    ] {
        m.push((format!("{arch}.{k}"), v));
    }
    m.extend(tokenizer_metadata(dir, cfg.vocab)?);
    Ok(m)
}

/// `tokenizer.ggml.*` and `tokenizer.chat_template` for the tokenizer in `dir`, its token list
/// padded to `vocab` (the embedding's rows) with unused `[PADi]` tokens, as llama.cpp pads it.
fn tokenizer_metadata(dir: &Path, vocab: usize) -> Result<Metadata> {
    let path = dir.join("tokenizer.json");
    let j = read_json(&path)?.ok_or_else(|| Error::file(&path, "missing: a GGUF needs the model's tokenizer"))?;
    let bad = |msg: String| Error::file(&path, msg);
    let model = &j["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!("a {} tokenizer; GGUF is written for byte-level BPE tokenizers only", model["type"])));
    }
    let pre = pre_name(&j["pre_tokenizer"]).ok_or_else(|| {
        bad(format!(
            "its pre-tokenizer {} is none llama.cpp names (gpt2, smollm, llama-bpe, qwen2 are written)",
            j["pre_tokenizer"]
        ))
    })?;
    // (id, token, type) of the vocabulary and the added tokens
    let mut entries: Vec<(usize, String, i32)> = Vec::new();
    for (t, id) in model["vocab"].as_object().ok_or_else(|| bad("model.vocab is not a map".into()))? {
        let id = id.as_u64().ok_or_else(|| bad(format!("model.vocab: '{t}' has no integer id")))?;
        entries.push((id as usize, t.clone(), NORMAL));
    }
    for a in j["added_tokens"].as_array().map_or(&[][..], |v| v.as_slice()) {
        let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(bad(format!("added_tokens: {a} has no id or content")));
        };
        let ty = if a["special"].as_bool().unwrap_or(false) { CONTROL } else { USER_DEFINED };
        entries.push((id as usize, t.to_string(), ty));
    }
    let n = entries.iter().map(|e| e.0 + 1).max().unwrap_or(0).max(vocab);
    if n > vocab {
        return Err(bad(format!("token ids reach {}, past the model's {vocab} embedding rows", n - 1)));
    }
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n];
    for (id, t, ty) in entries {
        match &tokens[id] {
            // an added token that is also in the vocabulary keeps the added token's type
            Some((old, _)) if *old != t => return Err(bad(format!("id {id} is both '{old}' and '{t}'"))),
            _ => tokens[id] = Some((t, ty)),
        }
    }
    let (names, types): (Vec<Value>, Vec<Value>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (t, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED));
            (Value::Str(t), Value::I32(ty))
        })
        .unzip();
    let merges = model["merges"]
        .as_array()
        .map_or(&[][..], |v| v.as_slice())
        .iter()
        .map(|mg| match mg {
            Json::String(s) if s.contains(' ') => Ok(Value::Str(s.clone())),
            Json::Array(p) if p.len() == 2 && p.iter().all(|x| x.is_string()) => {
                Ok(Value::Str(format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or(""))))
            }
            other => Err(bad(format!("model.merges: {other} is not a pair"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let id_of = |t: &str| names.iter().position(|n| matches!(n, Value::Str(s) if s == t));
    let mut m: Metadata = vec![
        ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::Str(pre.into())),
    ];
    let tc_path = dir.join("tokenizer_config.json");
    let tc = read_json(&tc_path)?.unwrap_or(Json::Null);
    let mut ids = Vec::new();
    for (key, gguf) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        let token = match &tc[key] {
            Json::String(s) => Some(s.as_str()),
            Json::Object(o) => o.get("content").and_then(|c| c.as_str()),
            _ => None,
        };
        if let Some(t) = token {
            let id = id_of(t).ok_or_else(|| Error::file(&tc_path, format!("{key} '{t}' is not a token")))?;
            ids.push((format!("tokenizer.ggml.{gguf}"), Value::U32(id as u32)));
        }
    }
    m.push(("tokenizer.ggml.tokens".into(), Value::Array(names)));
    m.push(("tokenizer.ggml.token_type".into(), Value::Array(types)));
    m.push(("tokenizer.ggml.merges".into(), Value::Array(merges)));
    m.extend(ids);
    let add_prefix = pre_tokenizers(&j["pre_tokenizer"]).iter().any(|p| p["add_prefix_space"] == true);
    m.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(add_prefix)));
    m.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(tc["add_bos_token"].as_bool().unwrap_or(false))));
    if let Some(t) = chat_template(&tc) {
        m.push(("tokenizer.chat_template".into(), Value::Str(t)));
    }
    Ok(m)
}

/// The chat template of a tokenizer_config.json: a string, or the "default" of a named list.
fn chat_template(tc: &Json) -> Option<String> {
    match &tc["chat_template"] {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => {
            named.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(str::to_string)
        }
        _ => None,
    }
}

/// A pre-tokenizer's steps (a Sequence's members, or itself).
fn pre_tokenizers(p: &Json) -> Vec<&Json> {
    match p["pretokenizers"].as_array() {
        Some(list) if p["type"] == "Sequence" => list.iter().collect(),
        _ => vec![p],
    }
}

/// llama.cpp's name (`tokenizer.ggml.pre`) for the pre-tokenizer `p` of a tokenizer.json, for
/// the splits lorafuse's GGUF tokenizer rebuilds: GPT-2's byte-level regex; every digit alone
/// then GPT-2's (SmolLM, StarCoder); Llama-3's and Qwen2's split regexes before a byte-level map.
fn pre_name(p: &Json) -> Option<&'static str> {
    let steps = pre_tokenizers(p);
    let byte_level =
        |s: &Json, regex: bool| s["type"] == "ByteLevel" && s["use_regex"].as_bool().unwrap_or(true) == regex;
    let split = |s: &Json, re: &str| s["type"] == "Split" && s["pattern"]["Regex"] == re;
    match steps.as_slice() {
        [b] if byte_level(b, true) => Some("gpt2"),
        [d, b] if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b, true) => Some("smollm"),
        [s, b] if split(s, LLAMA3_SPLIT) && byte_level(b, false) => Some("llama-bpe"),
        [s, b] if split(s, QWEN2_SPLIT) && byte_level(b, false) => Some("qwen2"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::Gguf;
    use crate::model::gguf_write::write_gguf;
    use crate::model::tokenizer::Tokenizer;

    /// Every pre-tokenizer lorafuse builds from a GGUF is named back as the same llama.cpp name
    /// from its tokenizer.json; others are not named.
    #[test]
    fn pre_tokenizers_are_named_as_llama_cpp_names_them() {
        let dir = std::env::temp_dir().join(format!("lorafuse-pre-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (given, named) in [("gpt2", "gpt2"), ("smollm", "smollm"), ("llama-bpe", "llama-bpe"), ("qwen2", "qwen2")] {
            let path = dir.join(format!("{given}.gguf"));
            let tokens = ["a", "b", "ab", "<s>"].map(|t| Value::Str(t.into())).to_vec();
            let meta: Metadata = vec![
                ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
                ("tokenizer.ggml.pre".into(), Value::Str(given.into())),
                ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
                ("tokenizer.ggml.merges".into(), Value::Array(vec![Value::Str("a b".into())])),
            ];
            write_gguf(&path, &meta, &[]).unwrap();
            let tok = Tokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
            let j: Json = serde_json::from_str(&tok.to_json().unwrap()).unwrap();
            assert_eq!(pre_name(&j["pre_tokenizer"]), Some(named), "{given}");
        }
        let whitespace = serde_json::json!({ "type": "Whitespace" });
        assert_eq!(pre_name(&whitespace), None);
        let no_digits = serde_json::json!({ "type": "Sequence", "pretokenizers": [
            { "type": "Digits", "individual_digits": false }, { "type": "ByteLevel", "use_regex": true }] });
        assert_eq!(pre_name(&no_digits), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
