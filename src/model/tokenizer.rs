//! Tokenizers through the `tokenizers` crate: read from a Hugging Face tokenizer.json, or built
//! from GGUF metadata (byte-level BPE: `tokenizer.ggml.model = gpt2`, with the pre-tokenizer
//! named by `tokenizer.ggml.pre`).

use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::model::gguf::Gguf;

/// Llama-3's pre-tokenizer split (numbers in runs of up to three digits).
pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's (single digits).
pub(crate) const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    /// Tokens that end generation (end of sequence and end of turn).
    pub eos: Vec<u32>,
    /// Whether plain text gets BOS prepended (templates that print it themselves do not).
    pub add_bos: bool,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

fn tok_err(source: &Path, e: impl std::fmt::Display) -> Error {
    Error::file(source, format!("tokenizer: {e}"))
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let path = g.path();
        let model = g.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::file(
                path,
                format!(
                    "tokenizer.ggml.model '{model}': only byte-level BPE (gpt2) tokenizers are built from GGUF; \
                     use the model's Hugging Face directory (its tokenizer.json) instead"
                ),
            ));
        }
        let tokens = g.str_array("tokenizer.ggml.tokens")?;
        let merges_raw = g.str_array("tokenizer.ggml.merges")?;
        let types = g.int_array("tokenizer.ggml.token_type").unwrap_or_default();
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges = merges_raw
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::file(path, format!("tokenizer.ggml.merges: '{m}' is not 'left right'")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| tok_err(path, e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let byte_level = |use_regex| PreTokenizerWrapper::from(ByteLevel::new(false, true, use_regex));
        let split = |re: &str| -> Result<PreTokenizerWrapper> {
            Ok(Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| tok_err(path, e))?
                .into())
        };
        let pre_tokenizer = match pre {
            // SmolLM and StarCoder: every digit alone, then GPT-2's split.
            "smollm" | "starcoder" | "refact" => Sequence::new(vec![Digits::new(true).into(), byte_level(true)]),
            "llama-bpe" | "llama3" | "llama-v3" => Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false)]),
            "qwen2" => Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level(false)]),
            "default" | "gpt2" | "gpt-2" => Sequence::new(vec![byte_level(true)]),
            other => {
                return Err(Error::file(
                    path,
                    format!("tokenizer.ggml.pre '{other}' is not known here; use the model's Hugging Face directory"),
                ));
            }
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        // Control tokens (type 3) are special: matched whole in text, skipped when decoding on
        // request. User-defined tokens (type 4) are matched whole too.
        let special: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == 3)
            .map(|(i, _)| AddedToken::from(tokens[i].to_string(), true))
            .collect();
        let user: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == 4)
            .map(|(i, _)| AddedToken::from(tokens[i].to_string(), false))
            .collect();
        inner.add_special_tokens(&special);
        inner.add_tokens(&user);
        // a special token's id is an integer naming one of the tokens, or absent
        let id = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64().filter(|&i| (i as usize) < tokens.len()) {
                    Some(i) => Ok(Some(i as u32)),
                    None => Err(Error::file(
                        g.path(),
                        format!("{key} is {v:?}, not the id of one of its {} tokens", tokens.len()),
                    )),
                },
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let mut eos: Vec<u32> =
            [id("tokenizer.ggml.eos_token_id")?, id("tokenizer.ggml.eot_token_id")?].into_iter().flatten().collect();
        eos.dedup();
        let name = |i: Option<u32>| i.and_then(|i| tokens.get(i as usize)).map(|s| s.to_string());
        Ok(Tokenizer {
            inner,
            bos,
            add_bos: g.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false),
            bos_token: name(bos),
            eos_token: name(eos.first().copied()),
            eos,
        })
    }

    /// Reads tokenizer.json and the special-token settings of tokenizer_config.json and
    /// generation_config.json (where present) from a Hugging Face model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let tj = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&tj).map_err(|e| tok_err(&tj, e))?;
        // JSON syntax first, so that a cut-short file is reported with its line and column
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| tok_err(&tj, format!("invalid JSON: {e}")))?;
        // the tokenizers crate unwraps inside some of its deserializers (a malformed decoder
        // section panics): its panic becomes this file's error
        let inner = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>())
            .map_err(|_| tok_err(&tj, "malformed (the tokenizers library could not read it)"))?
            .map_err(|e| tok_err(&tj, e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?;
        if cfg.as_ref().is_some_and(|c| !c.is_object()) {
            return Err(Error::file(&cfg_path, "is not a JSON object"));
        }
        // a named bos/eos token is a string or {"content": string}, and in the vocabulary: an
        // end of turn the tokenizer cannot produce would never stop generation
        let token = |key: &str| -> Result<Option<(String, u32)>> {
            let t = match cfg.as_ref().and_then(|c| c.get(key)) {
                None | Some(serde_json::Value::Null) => return Ok(None),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Object(o)) if o.get("content").is_some_and(|c| c.is_string()) => {
                    o["content"].as_str().unwrap_or_default().to_string()
                }
                Some(v) => return Err(Error::file(&cfg_path, format!("{key} is {v}, not a token string"))),
            };
            match inner.token_to_id(&t) {
                Some(id) => Ok(Some((t, id))),
                None => Err(Error::file(&cfg_path, format!("{key} '{t}' is not in tokenizer.json's vocabulary"))),
            }
        };
        let (bos_token, bos) = token("bos_token")?.unzip();
        let (eos_token, eos_id) = token("eos_token")?.unzip();
        let add_bos = cfg.as_ref().and_then(|c| c.get("add_bos_token")).and_then(|v| v.as_bool()).unwrap_or(false);
        let mut eos: Vec<u32> = eos_id.into_iter().collect();
        if let Some(gen_cfg) = read_json(&dir.join("generation_config.json"))? {
            match gen_cfg.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => eos.extend(n.as_u64().map(|v| v as u32)),
                Some(serde_json::Value::Array(a)) => eos.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32)),
                _ => {}
            }
        }
        eos.sort_unstable();
        eos.dedup();
        Ok(Tokenizer { inner, bos, eos, add_bos, bos_token, eos_token })
    }

    /// Token ids of `text`; BOS first when `add_bos` and `special` are both set.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Invalid(format!("tokenizing: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if special
            && self.add_bos
            && let Some(b) = self.bos
        {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` (no BOS added) with the byte offset where each token starts.
    pub fn encode_with_offsets(&self, text: &str) -> Result<Vec<(u32, usize)>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Invalid(format!("tokenizing: {e}")))?;
        Ok(enc.get_ids().iter().zip(enc.get_offsets()).map(|(&id, &(start, _))| (id, start)).collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::Invalid(format!("decoding tokens: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The tokenizer as a Hugging Face tokenizer.json.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| Error::Invalid(format!("serializing the tokenizer: {e}")))
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| Error::file(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::file(path, e)),
    }
}
