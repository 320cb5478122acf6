//! DIR/responses.jsonl: every response, judgement, MMLU answer and task loss of an evaluation,
//! appended (and flushed) as it is produced. It is the evaluation's only state: a rerun with the
//! same DIR reads it back and does only what is missing, and the report is computed from it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A generated response to a prompt of `set` (harmful, xstest).
    Response { arm: String, set: String, id: String, prompt: String, response: String, finish: String, tokens: usize },
    /// A judge's answer about a response: a harmfulness score, or an XSTest class.
    Judged {
        arm: String,
        set: String,
        id: String,
        judge: String,
        answer: String,
        score: Option<u8>,
        class: Option<String>,
    },
    /// An MMLU question: the predicted and the right choice (0..4).
    Mmlu { arm: String, id: String, subject: String, pred: usize, answer: usize },
    /// A held-out task conversation: its summed loss over `tokens` labelled tokens.
    Task { arm: String, id: String, loss: f64, tokens: usize },
}

/// What identifies a record: (kind, arm, set, id).
pub type Key = (&'static str, String, String, String);

impl Record {
    pub fn key(&self) -> Key {
        match self {
            Record::Response { arm, set, id, .. } => ("response", arm.clone(), set.clone(), id.clone()),
            Record::Judged { arm, set, id, .. } => ("judged", arm.clone(), set.clone(), id.clone()),
            Record::Mmlu { arm, id, .. } => ("mmlu", arm.clone(), "mmlu".into(), id.clone()),
            Record::Task { arm, id, .. } => ("task", arm.clone(), "task".into(), id.clone()),
        }
    }
}

pub fn key(kind: &'static str, arm: &str, set: &str, id: &str) -> Key {
    (kind, arm.to_string(), set.to_string(), id.to_string())
}

/// The records of an evaluation folder, in memory and on disk.
pub struct Records {
    path: PathBuf,
    map: BTreeMap<Key, Record>,
    /// Records read back from an earlier run.
    pub resumed: usize,
}

impl Records {
    /// Opens DIR/responses.jsonl, reading what an earlier run left; a line cut short by a kill
    /// is dropped (its work is redone).
    pub fn open(dir: &Path) -> Result<Records> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        let path = dir.join("responses.jsonl");
        let mut map = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                for (i, line) in lines.iter().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Record>(line) {
                        Ok(r) => {
                            map.insert(r.key(), r);
                        }
                        Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                        Err(e) => return Err(Error::file(&path, format!("line {}: not a record: {e}", i + 1))),
                    }
                }
                if !text.is_empty() && !text.ends_with('\n') {
                    // rewrite without the torn line, so appends start on a fresh one
                    let keep: String = map.values().map(|r| line_of(r) + "\n").collect();
                    crate::atomic::write_atomic(&path, keep)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::file(&path, e)),
        }
        let resumed = map.len();
        Ok(Records { path, map, resumed })
    }

    pub fn has(&self, k: &Key) -> bool {
        self.map.contains_key(k)
    }

    pub fn get(&self, k: &Key) -> Option<&Record> {
        self.map.get(k)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.map.values()
    }

    /// Appends `new` to the file (flushed and synced) and to the map.
    pub fn append(&mut self, new: Vec<Record>) -> Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::file(&self.path, e))?;
        let text: String = new.iter().map(|r| line_of(r) + "\n").collect();
        f.write_all(text.as_bytes()).and_then(|_| f.sync_data()).map_err(|e| Error::file(&self.path, e))?;
        for r in new {
            self.map.insert(r.key(), r);
        }
        Ok(())
    }
}

fn line_of(r: &Record) -> String {
    serde_json::to_string(r).expect("records serialize")
}
