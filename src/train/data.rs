//! Training data: conversations from the paper's JSON (a list of conversations, each a list of
//! {role, content}), JSONL of {"messages": [...]}, and Alpaca-style {instruction, input, output}
//! (or Dolly's {instruction, context, response}), rendered with the model's chat template, with
//! labels on the assistant turns only.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::batch::{Encoded, MASKED};
use crate::model::chat::{ChatTemplate, Message};
use crate::model::tokenizer::Tokenizer;

/// A conversation to learn from.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub messages: Vec<Message>,
}

fn parse_value(v: &serde_json::Value) -> std::result::Result<Example, String> {
    let msgs = |m: &serde_json::Value| -> std::result::Result<Vec<Message>, String> {
        serde_json::from_value::<Vec<Message>>(m.clone())
            .map_err(|e| format!("messages must be [{{role, content}}, ...]: {e}"))
    };
    // an Alpaca field is a string or absent: a list or a number would train on an empty turn
    if let Some(k) = ["instruction", "input", "context", "output", "response"]
        .iter()
        .find(|k| v.get(**k).is_some_and(|x| !x.is_string() && !x.is_null()))
    {
        return Err(format!("\"{k}\" must be a string"));
    }
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let messages = if v.is_array() {
        msgs(v)?
    } else if let Some(m) = v.get("messages") {
        msgs(m)?
    } else if v.get("instruction").is_some() {
        let extra = if v.get("input").is_some() { s("input") } else { s("context") };
        let answer = if v.get("output").is_some() { s("output") } else { s("response") };
        let user =
            if extra.trim().is_empty() { s("instruction") } else { format!("{}\n\n{}", s("instruction"), extra) };
        vec![Message::new("user", &user), Message::new("assistant", &answer)]
    } else {
        return Err(
            "expected a conversation (a list of messages), {\"messages\": [...]}, or {instruction, input, output}"
                .into(),
        );
    };
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("no assistant turn to learn from".into());
    }
    if let Some(m) = messages.iter().find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant")) {
        return Err(format!("unknown role '{}'", m.role));
    }
    Ok(Example { messages })
}

/// Reads every example of `path`. A malformed one is an error naming the file and the line (JSONL)
/// or entry (JSON), unless `skip_bad`, which skips and counts it.
pub fn load(path: &Path, skip_bad: bool) -> Result<(Vec<Example>, usize)> {
    let text = crate::validate::read_text(path)?;
    let mut out = Vec::new();
    let mut bad = 0;
    let mut take = |r: std::result::Result<Example, String>, place: String| -> Result<()> {
        match r {
            Ok(e) => out.push(e),
            Err(_) if skip_bad => bad += 1,
            Err(msg) => return Err(Error::file(path, format!("{place}: {msg}"))),
        }
        Ok(())
    };
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not JSON: {e}")))?;
        for (i, item) in v.as_array().into_iter().flatten().enumerate() {
            take(parse_value(item), format!("entry {i}"))?;
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r = serde_json::from_str::<serde_json::Value>(line)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|v| parse_value(&v));
            take(r, format!("line {}", i + 1))?;
        }
    }
    if out.is_empty() {
        return Err(Error::file(path, "no usable examples"));
    }
    Ok((out, bad))
}

/// Tokens and labels of an example: the chat template over the whole conversation; a token is
/// labelled when it lies inside an assistant turn's rendering (its content and end-of-turn), as
/// found by rendering each turn's prefix. `system` is put first when the conversation has none.
/// Cut to `max_len` tokens; the bool says whether it was cut.
pub fn encode(
    ex: &Example,
    tok: &Tokenizer,
    template: &ChatTemplate,
    system: Option<&str>,
    max_len: usize,
) -> Result<(Encoded, bool)> {
    let mut messages = ex.messages.clone();
    if let Some(s) = system
        && messages.first().is_none_or(|m| m.role != "system")
    {
        messages.insert(0, Message::new("system", s));
    }
    let (bos, eos) = (tok.bos_token.as_deref(), tok.eos_token.as_deref());
    let full = template.render(&messages, false, bos, eos)?;
    // byte ranges of the assistant turns in the rendered text
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = template.render(&messages[..i], true, bos, eos)?;
        let after = template.render(&messages[..=i], false, bos, eos)?;
        if !full.starts_with(&after) || !after.starts_with(&before) {
            return Err(Error::Invalid(
                "the chat template does not render conversations as prefixes of each other; cannot place the assistant turns".into(),
            ));
        }
        spans.push(before.len()..after.len());
    }
    let pieces = tok.encode_with_offsets(&full)?;
    let mut tokens: Vec<u32> = pieces.iter().map(|p| p.0).collect();
    let labelled: Vec<bool> = pieces.iter().map(|p| spans.iter().any(|s| s.contains(&p.1))).collect();
    let mut targets: Vec<u32> = (0..tokens.len())
        .map(|i| if i + 1 < tokens.len() && labelled[i + 1] { tokens[i + 1] } else { MASKED })
        .collect();
    let cut = tokens.len() > max_len;
    if cut {
        tokens.truncate(max_len);
        targets.truncate(max_len);
        if let Some(last) = targets.last_mut() {
            *last = MASKED;
        }
    }
    Ok((Encoded { tokens, targets }, cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        let conv = serde_json::json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]);
        assert_eq!(parse_value(&conv).unwrap().messages.len(), 2);
        let wrapped = serde_json::json!({"messages": conv});
        assert_eq!(parse_value(&wrapped).unwrap(), parse_value(&conv).unwrap());
        let alpaca = serde_json::json!({"instruction": "Add", "input": "2+2", "output": "4"});
        assert_eq!(parse_value(&alpaca).unwrap().messages[0].content, "Add\n\n2+2");
        let dolly = serde_json::json!({"instruction": "Who?", "context": "", "response": "Me"});
        assert_eq!(parse_value(&dolly).unwrap().messages[1].content, "Me");
        assert!(parse_value(&serde_json::json!([{"role": "user", "content": "no answer"}])).is_err());
        assert!(
            parse_value(&serde_json::json!([{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]))
                .is_err()
        );
        assert!(parse_value(&serde_json::json!({"text": "x"})).is_err());
    }
}
