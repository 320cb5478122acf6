//! The bad-input corpus (issue 16): corrupt variants of a tiny GGUF, a tiny Hugging Face
//! directory, a PEFT adapter and every data format, through the loaders in process and through
//! the CLI commands a user runs on them.
//!
//! A variant that must be refused fails the test when it loads (a silent result), when its error
//! does not name the file (unclear), or on any panic or abort. A variant that may still be a valid
//! file (a flipped bit inside a weight, a CSV cut at the end of a row) may load, and then runs a
//! forward whose logits must be finite or refused; it too must never panic, and an error must
//! name the file. Each test prints its tally: the closing note's corpus counts come from it.
#[path = "../common/mod.rs"]
mod common;
mod data;
mod gguf;
mod hf;
mod json;
mod safetensors_file;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use lorafuse::model::batch::Batch;
use lorafuse::model::llama::{Llama, LoadOptions};
use lorafuse::model::source::ModelSource;

use common::gpu;

/// What a variant must do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Want {
    /// Corrupt beyond doubt: an error naming the file.
    Refuse,
    /// Possibly still a valid file: loading is allowed, panics and unnamed errors are not.
    Either,
}

/// One corrupt file: its name in the tally, what it must do, and its bytes. `file` is the name of
/// the file it replaces inside a directory artifact ("" for a single file).
pub struct Variant {
    pub name: String,
    pub want: Want,
    pub file: &'static str,
    pub bytes: Vec<u8>,
}

impl Variant {
    pub fn new(name: impl Into<String>, want: Want, bytes: Vec<u8>) -> Variant {
        Variant { name: name.into(), want, file: "", bytes }
    }

    pub fn in_dir(file: &'static str, name: impl Into<String>, want: Want, bytes: Vec<u8>) -> Variant {
        Variant { name: format!("{file}: {}", name.into()), want, file, bytes }
    }
}

/// How a load or a command ended.
pub enum Outcome {
    Loaded,
    Refused(String),
    Panicked(String),
}

/// A loader run in this process; a panic is caught and counted.
pub fn in_process(f: impl FnOnce() -> lorafuse::Result<()>) -> Outcome {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Outcome::Loaded,
        Ok(Err(e)) => Outcome::Refused(e.to_string()),
        Err(p) => Outcome::Panicked(
            p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default(),
        ),
    }
}

/// The lorafuse binary with `args`: exit 0 is a load, a panic (exit 101) or a signal (an abort)
/// is a panic, anything else a refusal with its stderr.
pub fn cli(args: &[&str]) -> Outcome {
    let o = common::run_cli(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    match o.status.code() {
        Some(0) => Outcome::Loaded,
        Some(101) | None => Outcome::Panicked(format!("{:?}: {err}", o.status)),
        Some(_) if err.contains("panicked at") => Outcome::Panicked(err),
        Some(_) => Outcome::Refused(err),
    }
}

/// `cli` for a command that writes `out`: a refused command must leave nothing there.
pub fn cli_writing(args: &[&str], out: &Path) -> Outcome {
    let o = cli(args);
    if let Outcome::Refused(msg) = &o {
        assert!(!out.exists(), "{args:?} was refused ({}) but wrote {}", msg.trim(), out.display());
    }
    o
}

/// The counts of one artifact's corpus.
#[derive(Default)]
pub struct Tally {
    what: String,
    cases: usize,
    cli_runs: usize,
    refused: usize,
    loaded: usize,
    panics: Vec<String>,
    silent: Vec<String>,
    unclear: Vec<String>,
}

impl Tally {
    pub fn new(what: &str) -> Tally {
        Tally { what: what.into(), ..Tally::default() }
    }

    /// Records one run of `case` (`via`: the loader or command) that must name `named`.
    pub fn add(&mut self, case: &str, via: &str, want: Want, named: &Path, out: Outcome) {
        self.cases += 1;
        if via != "load" {
            self.cli_runs += 1;
        }
        let case = format!("{case} [{via}]");
        match out {
            Outcome::Loaded if want == Want::Refuse => self.silent.push(case),
            Outcome::Loaded => self.loaded += 1,
            Outcome::Refused(msg) => {
                self.refused += 1;
                if !msg.contains(&named.display().to_string()) {
                    self.unclear.push(format!("{case}: {}", msg.trim()));
                }
            }
            Outcome::Panicked(msg) => self.panics.push(format!("{case}: {}", msg.trim())),
        }
    }

    /// Prints the counts and fails on any panic, silent result or unclear message.
    pub fn finish(self) {
        eprintln!(
            "corpus {}: {} cases ({} through the CLI): {} clear errors, {} loaded (valid after the change), {} panics, {} silent results, {} unclear messages",
            self.what,
            self.cases,
            self.cli_runs,
            self.refused - self.unclear.len(),
            self.loaded,
            self.panics.len(),
            self.silent.len(),
            self.unclear.len()
        );
        let show = |v: &[String]| v.iter().take(12).map(|s| format!("\n  {s}")).collect::<String>();
        assert!(
            self.panics.is_empty() && self.silent.is_empty() && self.unclear.is_empty(),
            "{}: panics:{}\nloaded though corrupt:{}\nerrors not naming the file:{}",
            self.what,
            show(&self.panics),
            show(&self.silent),
            show(&self.unclear)
        );
    }
}

/// A folder of its own for each variant, under the test's temporary folder.
pub struct Cases {
    root: PathBuf,
    n: usize,
}

impl Cases {
    pub fn new(name: &str) -> Cases {
        Cases { root: common::tiny::temp_dir(name), n: 0 }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `v` as `stem.ext` (a single file) or as a copy of the directory `base` with `v.file`
    /// replaced; returns the path a loader opens.
    pub fn materialize(&mut self, v: &Variant, base: &Path, ext: &str) -> PathBuf {
        self.n += 1;
        let dir = self.root.join(format!("case{}", self.n));
        if v.file.is_empty() {
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join(format!("bad.{ext}"));
            std::fs::write(&p, &v.bytes).unwrap();
            p
        } else {
            copy_dir(base, &dir);
            std::fs::write(dir.join(v.file), &v.bytes).unwrap();
            dir
        }
    }

    /// Removes a variant's folder once it has run.
    pub fn clean(&self, p: &Path) {
        let dir = if p.is_dir() { p } else { p.parent().unwrap() };
        std::fs::remove_dir_all(dir).ok();
    }
}

impl Drop for Cases {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            std::fs::remove_dir_all(&self.root).ok();
        }
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Which refused variants also go through the CLI: the first and every `every`-th after it (the
/// commands start a process and a device each: a sample keeps the test to a minute).
pub struct Sample {
    every: usize,
    seen: usize,
}

impl Sample {
    pub fn every(every: usize) -> Sample {
        Sample { every, seen: 0 }
    }

    pub fn take(&mut self, want: Want) -> bool {
        if want != Want::Refuse {
            return false;
        }
        self.seen += 1;
        (self.seen - 1).is_multiple_of(self.every)
    }
}

/// A model as generate uses it: opened, its tokenizer and chat template read, loaded to the
/// device, and one forward over three tokens whose logits must be finite.
pub fn load_model(p: &Path) -> lorafuse::Result<()> {
    let src = ModelSource::open(p)?;
    src.config()?;
    src.tokenizer()?;
    src.chat_template()?;
    let model = Llama::load(gpu(), &src, LoadOptions::default())?;
    forward_checked(&model)
}

/// One forward over three tokens, its logits through the run-time guard.
pub fn forward_checked(model: &Llama) -> lorafuse::Result<()> {
    let tokens = [1u32, 2, 3];
    let cache = model.new_cache(1, tokens.len() + 1)?;
    let mut b = Batch::default();
    b.push_sequence(0, 0, &tokens, false);
    b.logits_rows = (0..tokens.len() as u32).collect();
    let logits = model.forward(&b, &cache)?.read_f32(model.gpu())?;
    model.check_logits(&logits, |i| format!("position {i}"))
}

/// The model an adapter is tried on: the tiny chat model as a Hugging Face directory.
pub fn chat_model(dir: &Path) -> PathBuf {
    let p = dir.join("model");
    common::tiny::write_chat_model(&p, common::seed());
    p
}

/// With LORAFUSE_FUZZ_SEEDS=DIR set, a good file is also written as a seed of fuzz target
/// `target` (DIR/target/name): how fuzz/corpus is made (README, "Bad input").
pub fn fuzz_seed(target: &str, name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("LORAFUSE_FUZZ_SEEDS") {
        let dir = Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The three CLI arguments that keep a generate run short.
pub const SHORT: [&str; 4] = ["--prompt", "hi", "--max-new-tokens", "1"];
