//! `lorafuse bench model`: prefill and decode tokens/s of a model at several batch sizes, peak
//! device memory against the weights' size, and llama.cpp on the same GGUF on the same machine
//! (through llama-cpp-python, CPU) as the peer, in one run; each number the best of `reps` runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::bench::Progress;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::batch::Batch;
use crate::model::llama::Llama;
use crate::model::sampling::argmax;

#[derive(Clone, Debug)]
pub struct Options {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub batches: Vec<usize>,
    /// Python with llama-cpp-python, to run scripts/bench_llama_cpp.py (None: no peer).
    pub peer_python: Option<PathBuf>,
    pub threads: usize,
    /// Runs per batch size; the best is reported (this is a shared, noisy machine).
    pub reps: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub engine: String,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub prefill_tps: f64,
    pub decode_tps: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub model: String,
    pub weights_bytes: u64,
    pub peak_bytes: u64,
    pub rows: Vec<Row>,
    /// Why there is no llama.cpp row, when there is none.
    pub peer_note: Option<String>,
}

/// A deterministic prompt of `n` tokens (ordinary vocabulary, no special tokens).
pub fn bench_prompt(n: usize, vocab: usize) -> Vec<u32> {
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // skip the first 256 ids, where models keep their special tokens (tiny test
            // vocabularies have none)
            let skip = if vocab > 512 { 256 } else { 0 };
            (skip + s % (vocab as u64 - skip)) as u32
        })
        .collect()
}

/// Prefill `batch` copies of the prompt, then greedy decode `steps` steps (end tokens ignored, so
/// every run does the same work). Returns (prefill tokens/s, decode tokens/s).
pub(crate) fn run_ours(model: &Llama, prompt: &[u32], batch: usize, steps: usize) -> Result<(f64, f64)> {
    let cache = model.new_cache(batch, prompt.len() + steps + 1)?;
    let mut b = Batch::default();
    for s in 0..batch {
        b.push_sequence(s as u32, 0, prompt, true);
    }
    let t0 = Instant::now();
    let logits = model.forward(&b, &cache)?.read_f32(model.gpu())?;
    let prefill = t0.elapsed().as_secs_f64();
    let vocab = model.cfg().vocab;
    let mut next: Vec<u32> = (0..batch).map(|s| argmax(&logits[s * vocab..(s + 1) * vocab])).collect();
    let t1 = Instant::now();
    for step in 0..steps {
        let mut b = Batch::default();
        for (s, &t) in next.iter().enumerate() {
            b.push_sequence(s as u32, (prompt.len() + step) as u32, &[t], true);
        }
        let l = model.forward(&b, &cache)?.read_f32(model.gpu())?;
        next = (0..batch).map(|s| argmax(&l[s * vocab..(s + 1) * vocab])).collect();
    }
    let decode = t1.elapsed().as_secs_f64();
    Ok(((batch * prompt.len()) as f64 / prefill, (batch * steps) as f64 / decode))
}

/// llama.cpp through scripts/bench_llama_cpp.py, batch 1, same token ids.
fn run_peer(python: &Path, gguf: &Path, prompt: &[u32], steps: usize, threads: usize, reps: usize) -> Result<Row> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_llama_cpp.py");
    let ids = serde_json::to_string(prompt).map_err(|e| Error::Invalid(e.to_string()))?;
    let out = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(gguf)
        .args([
            "--gen",
            &steps.to_string(),
            "--threads",
            &threads.to_string(),
            "--reps",
            &reps.to_string(),
            "--ids",
            &ids,
        ])
        .output()
        .map_err(|e| Error::file(python, format!("running the llama.cpp peer: {e}")))?;
    if !out.status.success() {
        return Err(Error::file(&script, format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::file(&script, format!("printed no JSON result ({e})")))?;
    let num = |k: &str| j[k].as_f64().ok_or_else(|| Error::file(&script, format!("no '{k}' in its result")));
    Ok(Row {
        engine: format!("llama.cpp {} (CPU, {threads} threads)", j["version"].as_str().unwrap_or("?")),
        batch: 1,
        prompt_tokens: prompt.len(),
        gen_tokens: steps,
        prefill_tps: num("prefill_tps")?,
        decode_tps: num("decode_tps")?,
    })
}

pub fn run(gpu: &Gpu, model: &Llama, model_path: &Path, opts: &Options, progress: &mut dyn Progress) -> Result<Report> {
    let prompt = bench_prompt(opts.prompt_tokens, model.cfg().vocab);
    // warm-up: the kernel shapes of every batch size below tuned (once per device), then a short
    // real run of each for pipeline compilation and first-use costs
    model.warm_up(false, || opts.batches.iter().try_for_each(|&b| run_ours(model, &prompt, b, 2).map(drop)))?;
    for &b in &opts.batches {
        run_ours(model, &prompt[..prompt.len().min(8)], b, 2)?;
    }
    gpu.memory().reset_peak();
    progress.start("model throughput", opts.batches.len() + 1);
    let mut rows = Vec::new();
    for &b in &opts.batches {
        let (mut prefill_tps, mut decode_tps) = (0.0f64, 0.0f64);
        for _ in 0..opts.reps.max(1) {
            let (p, d) = run_ours(model, &prompt, b, opts.gen_tokens)?;
            prefill_tps = prefill_tps.max(p);
            decode_tps = decode_tps.max(d);
        }
        let row = Row {
            engine: format!("lorafuse ({} weights, {} layout)", model.dtype(), model.layout().name()),
            batch: b,
            prompt_tokens: opts.prompt_tokens,
            gen_tokens: opts.gen_tokens,
            prefill_tps,
            decode_tps,
        };
        progress
            .row(&format!("lorafuse batch {b}: prefill {prefill_tps:.1} tokens/s, decode {decode_tps:.1} tokens/s"));
        rows.push(row);
    }
    let peak_bytes = gpu.memory().peak();
    let is_gguf = model_path.extension().is_some_and(|e| e == "gguf");
    let peer_note = match (&opts.peer_python, is_gguf) {
        (_, false) => Some("the llama.cpp peer needs a GGUF model".to_string()),
        (None, _) => Some("no Python with llama-cpp-python (run scripts/setup-bench.sh)".to_string()),
        (Some(py), true) => match run_peer(py, model_path, &prompt, opts.gen_tokens, opts.threads, opts.reps) {
            Ok(row) => {
                progress.row(&format!(
                    "{}: prefill {:.1} tokens/s, decode {:.1} tokens/s",
                    row.engine, row.prefill_tps, row.decode_tps
                ));
                rows.push(row);
                None
            }
            Err(e) => Some(format!("the llama.cpp peer failed: {e}")),
        },
    };
    if let Some(n) = &peer_note {
        progress.note(n);
    }
    Ok(Report {
        device: gpu.describe(),
        model: model_path.display().to_string(),
        weights_bytes: model.weight_bytes(),
        peak_bytes,
        rows,
        peer_note,
    })
}

pub fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "Model {} on {}.\n", r.model, r.device);
    let _ = writeln!(s, "| engine | batch | prompt tokens | generated | prefill tokens/s | decode tokens/s |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {:.1} |",
            row.engine, row.batch, row.prompt_tokens, row.gen_tokens, row.prefill_tps, row.decode_tps
        );
    }
    let ours = r.rows.iter().find(|x| x.batch == 1 && x.engine.starts_with("lorafuse"));
    let peer = r.rows.iter().find(|x| x.engine.starts_with("llama.cpp"));
    if let (Some(o), Some(p)) = (ours, peer) {
        let _ = writeln!(
            s,
            "\nBatch 1, lorafuse / llama.cpp: prefill {:.2}×, decode {:.2}×.",
            o.prefill_tps / p.prefill_tps,
            o.decode_tps / p.decode_tps
        );
    }
    if let Some(n) = &r.peer_note {
        let _ = writeln!(s, "\nNo llama.cpp row: {n}.");
    }
    let _ = writeln!(
        s,
        "\nDevice memory: weights {:.1} MiB; peak while benchmarking {:.1} MiB (weights, KV caches, activations, scratch).",
        r.weights_bytes as f64 / (1 << 20) as f64,
        r.peak_bytes as f64 / (1 << 20) as f64
    );
    s
}
