//! The OpenAI API subset `lorafuse serve` speaks: request bodies of /v1/chat/completions and
//! /v1/completions checked field by field into a job (every wrong type, range or unsupported
//! option an OpenAI-style 400 naming the parameter), and the response and stream-chunk bodies.

use serde_json::{Value, json};

use crate::model::chat::{ChatTemplate, Message};
use crate::model::generate::{Finish, GenerateOptions, prompt_ids};
use crate::model::sampling::SamplingOptions;
use crate::model::tokenizer::Tokenizer;
use crate::serve::engine::Mix;
use crate::validate::adapter_weight;

/// An error as OpenAI's API returns it: the HTTP status and {"error": {message, type, param,
/// code}}.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        let kind = match status {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    /// A 400 about request parameter `param`.
    pub fn param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { param: Some(param.to_string()), ..ApiError::new(400, message) }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

type Checked<T> = std::result::Result<T, ApiError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// What a request is checked against.
pub struct Context<'a> {
    pub tok: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    /// The model id of the base (its adapters at their default weights).
    pub base_id: &'a str,
    /// The loaded adapters' names and default weights.
    pub adapters: &'a [(String, f32)],
    /// Positions a sequence may hold, prompt and completion together.
    pub context: usize,
    /// The most tokens one request may ask for (--max-tokens).
    pub max_tokens: usize,
}

/// A checked generation request.
#[derive(Debug)]
pub struct Request {
    pub model: String,
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    /// None: the adapters at their default weights.
    pub mix: Option<Mix>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Options OpenAI defines that change the output and that lorafuse does not implement: refused
/// when set to anything but their neutral value, rather than silently ignored.
const UNSUPPORTED: [&str; 9] = [
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "tools",
    "response_format",
    "suffix",
    "echo",
];

fn neutral(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty() || o.get("type").and_then(Value::as_str) == Some("text"),
        Value::String(_) => false,
    }
}

fn number(body: &Value, key: &str) -> Checked<Option<f64>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(v) => Err(ApiError::param(key, format!("'{key}' must be a number, not {v}"))),
    }
}

fn count(body: &Value, key: &str) -> Checked<Option<u64>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(v) => Err(ApiError::param(key, format!("'{key}' must be a whole number ≥ 0, not {v}"))),
    }
}

fn flag(body: &Value, key: &str) -> Checked<bool> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::param(key, format!("'{key}' must be true or false, not {v}"))),
    }
}

/// A mix named in the model field: "task:0.6+safety:0.4", or "task" (at its default weight, the
/// others at 0); the base's id is None (every adapter at its default weight).
pub fn parse_model(model: &str, base_id: &str, adapters: &[(String, f32)]) -> Checked<Option<Mix>> {
    if model == base_id {
        return Ok(None);
    }
    // a lone unknown name is an unknown model (404, as OpenAI answers); a mix naming an adapter
    // not loaded is a bad request
    let unknown = |name: &str| {
        let status = if model.contains([':', '+']) { 400 } else { 404 };
        let e = ApiError::new(
            status,
            format!(
                "the model '{model}': '{name}' is neither the base ('{base_id}') nor a loaded adapter ({})",
                list(adapters)
            ),
        );
        ApiError { param: Some("model".into()), ..e }.with_code("model_not_found")
    };
    let mut mix = Mix::new();
    for part in model.split('+') {
        let (name, w) = match part.rsplit_once(':') {
            Some((n, w)) => {
                let w: f64 = w.trim().parse().map_err(|_| {
                    ApiError::param(
                        "model",
                        format!("'{part}' in the model '{model}': the weight '{w}' is not a number"),
                    )
                })?;
                (n.trim(), Some(w))
            }
            None => (part.trim(), None),
        };
        let Some((_, default)) = adapters.iter().find(|a| a.0 == name) else {
            return Err(unknown(name));
        };
        let w = match w {
            Some(w) => adapter_weight(w).map_err(|e| ApiError::param("model", format!("'{part}': {e}")))?,
            None => *default,
        };
        if mix.insert(name.to_string(), w).is_some() {
            return Err(ApiError::param("model", format!("the model '{model}' names '{name}' twice")));
        }
    }
    Ok(Some(mix))
}

fn list(adapters: &[(String, f32)]) -> String {
    let names: Vec<&str> = adapters.iter().map(|a| a.0.as_str()).collect();
    if names.is_empty() { "none loaded".into() } else { names.join(", ") }
}

/// The "adapters" field: {"name": weight, ...}, every name loaded.
fn parse_adapters(v: &Value, adapters: &[(String, f32)]) -> Checked<Mix> {
    let Value::Object(o) = v else {
        return Err(ApiError::param(
            "adapters",
            format!("'adapters' must be an object of adapter name → weight, not {v}"),
        ));
    };
    let mut mix = Mix::new();
    for (name, w) in o {
        if !adapters.iter().any(|a| &a.0 == name) {
            return Err(ApiError::param(
                "adapters",
                format!("no adapter named '{name}' is loaded ({})", list(adapters)),
            ));
        }
        let Some(w) = w.as_f64() else {
            return Err(ApiError::param("adapters", format!("the weight of '{name}' must be a number, not {w}")));
        };
        let w = adapter_weight(w).map_err(|e| ApiError::param("adapters", format!("'{name}': {e}")))?;
        mix.insert(name.clone(), w);
    }
    Ok(mix)
}

/// A message's text: a string, or a list of {"type": "text", "text": ...} parts.
fn content(i: usize, v: Option<&Value>) -> Checked<String> {
    let param = format!("messages[{i}].content");
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => return Err(ApiError::param(&param, format!("only text parts are supported, not {p}"))),
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::param(&param, "a message's content must be a string or a list of text parts")),
    }
}

fn messages(body: &Value) -> Checked<Vec<Message>> {
    let Some(Value::Array(list)) = body.get("messages") else {
        return Err(ApiError::param("messages", "'messages' must be a list of {role, content}"));
    };
    if list.is_empty() {
        return Err(ApiError::param("messages", "'messages' is empty"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "user" | "assistant")) => r,
            Some("developer") => "system",
            other => {
                return Err(ApiError::param(
                    &format!("messages[{i}].role"),
                    format!("the role must be system, developer, user or assistant, not {other:?}"),
                ));
            }
        };
        out.push(Message::new(role, &content(i, m.get("content"))?));
    }
    Ok(out)
}

fn completion_prompt(body: &Value) -> Checked<String> {
    match body.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => Ok(a[0].as_str().unwrap_or("").to_string()),
        Some(Value::Array(_)) => {
            Err(ApiError::param("prompt", "one prompt a request: a string or a list of one string"))
        }
        _ => Err(ApiError::param("prompt", "'prompt' must be a string")),
    }
}

fn stops(body: &Value) -> Checked<Vec<String>> {
    let stops = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::param("stop", "'stop' must be a string or a list of strings"))?,
        Some(v) => {
            return Err(ApiError::param("stop", format!("'stop' must be a string or a list of strings, not {v}")));
        }
    };
    if stops.len() > 4 || stops.iter().any(String::is_empty) {
        return Err(ApiError::param("stop", "'stop' takes up to 4 non-empty strings"));
    }
    Ok(stops)
}

/// Checks a request body for `endpoint`; `seed` is used where the request gives none.
pub fn parse(endpoint: Endpoint, body: &[u8], cx: &Context, seed: u64) -> Checked<Request> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, format!("the request body is not valid JSON: {e}")))?;
    if !body.is_object() {
        return Err(ApiError::new(400, "the request body must be a JSON object"));
    }
    if let Some(key) = UNSUPPORTED.iter().find(|k| body.get(**k).is_some_and(|v| !neutral(v))) {
        return Err(ApiError::param(key, format!("'{key}' is not supported by lorafuse serve")));
    }
    if count(&body, "n")?.is_some_and(|n| n != 1) {
        return Err(ApiError::param("n", "lorafuse serve returns one choice a request: 'n' must be 1"));
    }
    let model = match body.get("model") {
        Some(Value::String(m)) => m.clone(),
        None | Some(Value::Null) => cx.base_id.to_string(),
        Some(v) => return Err(ApiError::param("model", format!("'model' must be a string, not {v}"))),
    };
    let mut mix = parse_model(&model, cx.base_id, cx.adapters)?;
    if let Some(a) = body.get("adapters").filter(|v| !v.is_null()) {
        mix = Some(parse_adapters(a, cx.adapters)?);
    }
    let prompt = match endpoint {
        Endpoint::Chat => {
            let Some(template) = cx.template else {
                return Err(ApiError::new(400, "the model has no chat template: use /v1/completions with raw text"));
            };
            prompt_ids(cx.tok, Some(template), &messages(&body)?, false)
        }
        Endpoint::Completions => cx.tok.encode(&completion_prompt(&body)?, true),
    }
    .map_err(|e| ApiError::new(400, format!("the prompt could not be encoded: {e}")))?;
    if prompt.is_empty() {
        return Err(ApiError::param(
            if endpoint == Endpoint::Chat { "messages" } else { "prompt" },
            "the prompt is empty",
        ));
    }
    let room = cx.context.saturating_sub(prompt.len());
    let asked = match (count(&body, "max_completion_tokens")?, count(&body, "max_tokens")?) {
        (Some(n), _) | (None, Some(n)) => Some(n),
        (None, None) => None,
    };
    let max_new = match asked {
        Some(0) => return Err(ApiError::param("max_tokens", "'max_tokens' must be at least 1")),
        Some(n) if n > cx.max_tokens as u64 => {
            return Err(ApiError::param(
                "max_tokens",
                format!("'max_tokens' {n} is over this server's limit of {} (--max-tokens)", cx.max_tokens),
            ));
        }
        Some(n) => n as usize,
        None => cx.max_tokens.min(room),
    };
    if prompt.len() + max_new > cx.context || room == 0 {
        return Err(ApiError::param(
            "messages",
            format!(
                "the prompt has {} tokens; with {max_new} to generate that is {}, over this server's context of {} (--context)",
                prompt.len(),
                prompt.len() + max_new,
                cx.context
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let temperature = number(&body, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::param("temperature", format!("'temperature' must be in [0, 2], not {temperature}")));
    }
    let top_p = number(&body, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::param("top_p", format!("'top_p' must be in (0, 1], not {top_p}")));
    }
    let top_k = count(&body, "top_k")?.unwrap_or(0) as usize;
    let seed = match body.get("seed") {
        None | Some(Value::Null) => seed,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(0) as u64,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or(0),
        Some(v) => return Err(ApiError::param("seed", format!("'seed' must be an integer, not {v}"))),
    };
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(o @ Value::Object(_)) => flag(o, "include_usage")?,
        Some(v) => {
            return Err(ApiError::param("stream_options", format!("'stream_options' must be an object, not {v}")));
        }
    };
    Ok(Request {
        model,
        prompt,
        opts: GenerateOptions {
            max_new_tokens: max_new,
            sampling: SamplingOptions { temperature: temperature as f32, top_k, top_p: top_p as f32, seed },
            stop: stops(&body)?,
            mixes: Vec::new(),
        },
        mix,
        stream: flag(&body, "stream")?,
        include_usage,
    })
}

pub fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// What every response and chunk of one request shares.
pub struct Reply<'a> {
    pub endpoint: Endpoint,
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

impl Reply<'_> {
    /// The whole response of a request that did not stream.
    pub fn response(&self, text: &str, finish: Finish, usage: Value) -> Value {
        let (object, choice) = match self.endpoint {
            Endpoint::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null,
                       "finish_reason": finish_reason(finish)}),
            ),
            Endpoint::Completions => (
                "text_completion",
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(finish)}),
            ),
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "choices": [choice], "usage": usage})
    }

    /// A stream chunk: text (for chat, the first carries the role), or the end with its finish.
    pub fn chunk(&self, text: Option<&str>, first: bool, finish: Option<Finish>) -> Value {
        let finish = finish.map(finish_reason);
        let (object, choice) = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                (
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}),
                )
            }
            Endpoint::Completions => (
                "text_completion",
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}),
            ),
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }

    /// The usage chunk that ends a stream with include_usage: no choices.
    pub fn usage_chunk(&self, usage: Value) -> Value {
        let object = if self.endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "choices": [], "usage": usage})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<(String, f32)> {
        vec![("task".into(), 1.0), ("safety".into(), 0.5)]
    }

    #[test]
    fn model_names_a_mix_or_the_base() {
        assert_eq!(parse_model("base.gguf", "base.gguf", &names()), Ok(None));
        let m = parse_model("task:0.6+safety:0.4", "b", &names()).unwrap().unwrap();
        assert_eq!(m, Mix::from([("task".into(), 0.6), ("safety".into(), 0.4)]));
        assert_eq!(parse_model("safety", "b", &names()).unwrap().unwrap(), Mix::from([("safety".into(), 0.5)]));
        let e = parse_model("gpt-4", "b", &names()).unwrap_err();
        assert_eq!((e.status, e.code), (404, Some("model_not_found")));
        let e = parse_model("task:0.5+nope:0.5", "b", &names()).unwrap_err();
        assert_eq!((e.status, e.code), (400, Some("model_not_found")));
        for bad in ["task:x", "task:1e300", "task:NaN", "task+task"] {
            let e = parse_model(bad, "b", &names()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some("model")), "{bad}: {e:?}");
        }
    }

    #[test]
    fn adapter_objects_take_loaded_names_and_finite_weights() {
        let m = parse_adapters(&json!({"task": 0.25}), &names()).unwrap();
        assert_eq!(m, Mix::from([("task".into(), 0.25)]));
        for bad in [json!({"nope": 1}), json!({"task": "1"}), json!([1, 2]), json!({"task": 1e5})] {
            let e = parse_adapters(&bad, &names()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some("adapters")), "{bad}");
        }
    }

    #[test]
    fn options_at_neutral_values_pass_and_others_are_refused() {
        for v in [json!(null), json!(false), json!(0), json!(0.0), json!([]), json!({}), json!({"type": "text"})] {
            assert!(neutral(&v), "{v}");
        }
        for v in [json!(true), json!(0.5), json!([1]), json!({"type": "json_object"}), json!("x")] {
            assert!(!neutral(&v), "{v}");
        }
    }

    #[test]
    fn stop_lists_are_short_and_non_empty() {
        assert_eq!(stops(&json!({"stop": "\n"})).unwrap(), vec!["\n"]);
        assert_eq!(stops(&json!({})).unwrap(), Vec::<String>::new());
        for bad in
            [json!({"stop": ""}), json!({"stop": ["a", "b", "c", "d", "e"]}), json!({"stop": 3}), json!({"stop": [1]})]
        {
            assert_eq!(stops(&bad).unwrap_err().param.as_deref(), Some("stop"), "{bad}");
        }
    }

    #[test]
    fn chunks_and_responses_have_openai_shapes() {
        let r = Reply { endpoint: Endpoint::Chat, id: "chatcmpl-1", created: 7, model: "m" };
        let c = r.chunk(Some("Hi"), true, None);
        assert_eq!(c["choices"][0]["delta"], json!({"role": "assistant", "content": "Hi"}));
        assert_eq!(c["object"], "chat.completion.chunk");
        let end = r.response("Hi", Finish::Length, usage(3, 2));
        assert_eq!(end["choices"][0]["finish_reason"], "length");
        assert_eq!(end["usage"]["total_tokens"], 5);
        let t = Reply { endpoint: Endpoint::Completions, ..r };
        assert_eq!(t.chunk(Some("x"), false, Some(Finish::Eos))["choices"][0]["finish_reason"], "stop");
    }
}
