//! `lorafuse bench train`: LoRA training tokens/s (forward, recomputing backward, AdamW) of a
//! model over fixed-length sequences, and PyTorch + PEFT on the CPU of the same machine as the
//! peer (scripts/bench_peft_train.py), on the same token ids, in one run; peak device memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::bench::Progress;
use crate::bench::model::bench_prompt;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::Dropout;
use crate::model::batch::{MASKED, TrainBatch};
use crate::model::llama::Llama;
use crate::model::loss::StepOptions;
use crate::model::params::{AdamW, LoraGradients};
use crate::train::config::{TrainConfig, fresh_adapter};
use crate::train::optimizer::Optimizer;

#[derive(Clone, Debug)]
pub struct Options {
    pub seq: usize,
    pub batch: usize,
    pub r: usize,
    pub targets: Vec<String>,
    /// Timed steps (after one warm-up step).
    pub steps: usize,
    /// Python with torch and peft, to run scripts/bench_peft_train.py (None: no peer).
    pub peer_python: Option<PathBuf>,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub engine: String,
    pub tokens_per_step: usize,
    /// Mean seconds per timed step.
    pub step_s: f64,
    /// Tokens per second of the best step.
    pub tokens_per_s: f64,
    pub losses: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub model: String,
    pub seq: usize,
    pub batch: usize,
    pub r: usize,
    pub targets: Vec<String>,
    pub weights_bytes: u64,
    /// Peak device memory over the timed steps (weights, adapter, gradients, moments, saves).
    pub peak_bytes: u64,
    /// Resident memory of the peer process at its peak, when it ran.
    pub peer_rss_bytes: Option<u64>,
    pub rows: Vec<Row>,
    pub peer_note: Option<String>,
}

/// `batch` sequences of `seq` deterministic tokens; every position but each sequence's last
/// predicts the next token, as transformers computes the loss with labels = inputs.
pub fn bench_sequences(seq: usize, batch: usize, vocab: usize) -> Vec<Vec<u32>> {
    let all = bench_prompt(seq * batch, vocab);
    all.chunks(seq).map(<[u32]>::to_vec).collect()
}

/// A fresh adapter attached to a model and its training state over one fixed batch: the step
/// `bench train` times and `profile train` profiles.
pub struct Runner {
    grads: LoraGradients,
    opt: Optimizer,
    batch: TrainBatch,
    hp: AdamW,
    dropout: f32,
}

impl Runner {
    /// Attaches a fresh rank-`r` adapter on `targets` to `model`; every position of `seqs` but
    /// each one's last is labelled with the next token.
    pub fn new(model: &mut Llama, r: usize, targets: &[String], seqs: &[Vec<u32>]) -> Result<Runner> {
        let tc = TrainConfig { r, targets: targets.to_vec(), ..TrainConfig::default() };
        model.attach(&[fresh_adapter(model.cfg(), &tc, None)?], &[1.0])?;
        let grads = LoraGradients::new(model)?;
        let opt = Optimizer::new(model)?;
        let mut batch = TrainBatch::default();
        for s in seqs {
            let mut targets: Vec<u32> = s[1..].to_vec();
            targets.push(MASKED);
            batch.push(s, &targets);
        }
        Ok(Runner { grads, opt, batch, hp: AdamW { lr: tc.lr, ..AdamW::default() }, dropout: tc.dropout })
    }

    pub fn tokens(&self) -> usize {
        self.batch.rows()
    }

    /// The warm-up: a step recorded to learn its kernel shapes, tuned now if this device has no
    /// choice for them yet.
    pub fn warm_up(&self, model: &Llama) -> Result<()> {
        model.warm_up(false, || self.step(model, 1)).map(drop)
    }

    /// Optimizer step `t` (from 1): forward, backward, AdamW. Returns the mean loss.
    pub fn step(&self, model: &Llama, t: usize) -> Result<f64> {
        let n = self.batch.counted();
        let so = StepOptions {
            loss_scale: 1.0 / n as f32,
            accumulate: false,
            dropout: Some(Dropout { p: self.dropout, seed: t as u64 }),
        };
        let loss = model.forward_backward(&self.batch, &self.grads, &so)?;
        self.opt.step(model, &self.grads, &self.hp, 0.0, t)?;
        Ok(loss / n as f64)
    }
}

fn run_ours(model: &mut Llama, opts: &Options, seqs: &[Vec<u32>]) -> Result<Row> {
    let runner = Runner::new(model, opts.r, &opts.targets, seqs)?;
    runner.warm_up(model)?;
    runner.step(model, 1)?;
    model.gpu().memory().reset_peak();
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for t in 0..opts.steps.max(1) {
        let t0 = Instant::now();
        losses.push(runner.step(model, t + 2)?);
        times.push(t0.elapsed().as_secs_f64());
    }
    model.detach();
    let tokens = runner.tokens();
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok(Row {
        engine: format!("lorafuse ({} weights, {} layout)", model.dtype(), model.layout().name()),
        tokens_per_step: tokens,
        step_s: times.iter().sum::<f64>() / times.len() as f64,
        tokens_per_s: tokens as f64 / best,
        losses,
    })
}

fn run_peer(python: &Path, gguf: &Path, opts: &Options, seqs: &[Vec<u32>]) -> Result<(Row, Option<u64>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_peft_train.py");
    let ids = std::env::temp_dir().join(format!("lorafuse-bench-train-{}.json", std::process::id()));
    std::fs::write(&ids, serde_json::to_string(seqs).map_err(|e| Error::Invalid(e.to_string()))?)
        .map_err(|e| Error::file(&ids, e))?;
    let out = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(gguf)
        .arg("--ids")
        .arg(&ids)
        .args(["--r", &opts.r.to_string(), "--targets", &opts.targets.join(",")])
        .args(["--steps", &opts.steps.to_string(), "--threads", &opts.threads.to_string()])
        .output()
        .map_err(|e| Error::file(python, format!("running the PyTorch + PEFT peer: {e}")));
    std::fs::remove_file(&ids).ok();
    let out = out?;
    if !out.status.success() {
        return Err(Error::file(&script, format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::file(&script, format!("printed no JSON result ({e})")))?;
    let num = |k: &str| j[k].as_f64().ok_or_else(|| Error::file(&script, format!("no '{k}' in its result")));
    let row = Row {
        engine: j["engine"].as_str().unwrap_or("PyTorch + PEFT").to_string(),
        tokens_per_step: num("tokens_per_step")? as usize,
        step_s: num("step_s")?,
        tokens_per_s: num("tokens_per_s")?,
        losses: j["losses"].as_array().map(|v| v.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default(),
    };
    Ok((row, j["peak_rss_bytes"].as_u64()))
}

pub fn run(
    gpu: &Gpu,
    model: &mut Llama,
    model_path: &Path,
    opts: &Options,
    progress: &mut dyn Progress,
) -> Result<Report> {
    let seqs = bench_sequences(opts.seq, opts.batch, model.cfg().vocab);
    progress.start("training throughput", 2);
    let ours = run_ours(model, opts, &seqs)?;
    let peak_bytes = gpu.memory().peak();
    progress.row(&format!(
        "{}: {:.1} tokens/s ({:.1} s a step of {} tokens)",
        ours.engine, ours.tokens_per_s, ours.step_s, ours.tokens_per_step
    ));
    let mut rows = vec![ours];
    let mut peer_rss_bytes = None;
    let is_gguf = model_path.extension().is_some_and(|e| e == "gguf");
    let peer_note = match (&opts.peer_python, is_gguf) {
        (_, false) => Some("the PyTorch peer reads the model from a GGUF file".to_string()),
        (None, _) => Some("no Python with torch and peft (run scripts/setup-peft.sh)".to_string()),
        (Some(py), true) => match run_peer(py, model_path, opts, &seqs) {
            Ok((row, rss)) => {
                progress.row(&format!("{}: {:.1} tokens/s ({:.1} s a step)", row.engine, row.tokens_per_s, row.step_s));
                rows.push(row);
                peer_rss_bytes = rss;
                None
            }
            Err(e) => Some(format!("the PyTorch + PEFT peer failed: {e}")),
        },
    };
    if let Some(n) = &peer_note {
        progress.note(n);
    }
    Ok(Report {
        device: gpu.describe(),
        model: model_path.display().to_string(),
        seq: opts.seq,
        batch: opts.batch,
        r: opts.r,
        targets: opts.targets.clone(),
        weights_bytes: model.weight_bytes(),
        peak_bytes,
        peer_rss_bytes,
        rows,
        peer_note,
    })
}

pub fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "LoRA training step (forward, backward, AdamW) of {} on {}: batch {} × {} tokens, r {} on {}.\n",
        r.model,
        r.device,
        r.batch,
        r.seq,
        r.r,
        r.targets.join(", ")
    );
    let _ = writeln!(s, "| engine | tokens a step | s a step (mean) | tokens/s (best step) | losses |");
    let _ = writeln!(s, "|---|---:|---:|---:|---|");
    for row in &r.rows {
        let losses: Vec<String> = row.losses.iter().map(|l| format!("{l:.3}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.1} | {} |",
            row.engine,
            row.tokens_per_step,
            row.step_s,
            row.tokens_per_s,
            losses.join(", ")
        );
    }
    if let [ours, peer] = &r.rows[..] {
        let _ = writeln!(s, "\nlorafuse / PyTorch + PEFT: {:.2}× the tokens/s.", ours.tokens_per_s / peer.tokens_per_s);
    }
    if let Some(n) = &r.peer_note {
        let _ = writeln!(s, "\nNo PyTorch row: {n}.");
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let _ = write!(
        s,
        "\nDevice memory: weights {:.1} MiB; peak over the timed steps {:.1} MiB",
        mib(r.weights_bytes),
        mib(r.peak_bytes)
    );
    match r.peer_rss_bytes {
        Some(b) => {
            let _ = writeln!(s, "; the PyTorch process peaked at {:.0} MiB resident.", mib(b));
        }
        None => {
            let _ = writeln!(s, ".");
        }
    }
    s
}
