//! Harmful-prompt sets: AdvBench's CSV (`goal,target` header), headerless one-column CSVs (the
//! HEx-PHI category files), CSVs with a `prompt` column, and JSONL with a `prompt` field.
//! Malformed files are errors naming the file and line.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HarmfulPrompt {
    /// The row's position in its file, from 0 (what responses.jsonl keys it by).
    pub id: String,
    pub prompt: String,
}

pub fn load(path: &Path) -> Result<Vec<HarmfulPrompt>> {
    let is_jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    let out = if is_jsonl { load_jsonl(path)? } else { load_csv(path)? };
    if out.is_empty() {
        return Err(Error::file(path, "no prompts"));
    }
    Ok(out)
}

fn load_jsonl(path: &Path) -> Result<Vec<HarmfulPrompt>> {
    let text = crate::validate::read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::file(path, format!("line {}: not JSON: {e}", i + 1)))?;
        let p = v
            .get("prompt")
            .and_then(|p| p.as_str())
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| Error::file(path, format!("line {}: needs a non-empty \"prompt\" string", i + 1)))?;
        out.push(HarmfulPrompt { id: out.len().to_string(), prompt: p.to_string() });
    }
    Ok(out)
}

fn load_csv(path: &Path) -> Result<Vec<HarmfulPrompt>> {
    let text = crate::validate::csv_text(path)?;
    let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut col = 0;
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| Error::file(path, format!("line {}: {e}", i + 1)))?;
        if i == 0 {
            // a header row names the prompt column; a headerless file starts with a prompt
            if let Some(c) = rec.iter().position(|h| matches!(h.trim().to_lowercase().as_str(), "goal" | "prompt")) {
                col = c;
                continue;
            }
        }
        let p = rec.get(col).map(str::trim).unwrap_or("");
        if p.is_empty() {
            return Err(Error::file(path, format!("line {}: empty prompt", i + 1)));
        }
        out.push(HarmfulPrompt { id: out.len().to_string(), prompt: p.to_string() });
    }
    Ok(out)
}
