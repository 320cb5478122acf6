//! `lorafuse bench fuse`: a model's prefill and decode tokens/s with 0, 1, 2, 4 adapters applied
//! three ways in one run: the fused multi-LoRA kernel (unmerged, weights changeable per row),
//! the sequential baseline (a shrink and an expand launch per adapter after each base product)
//! and the merged model (W' = W + Σ wᵢ sᵢ BᵢAᵢ written out and loaded: no adapter cost, one
//! fixed fusion). Each number is the best of `reps`, the modes interleaved.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::bench::Progress;
use crate::bench::model::{bench_prompt, run_ours};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::lora::attach::place;
use crate::lora::peft::{Adapter, Factors, LoraConfig};
use crate::model::export::export_hf;
use crate::model::llama::{Llama, LoadOptions};
use crate::model::source::ModelSource;
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct Options {
    pub counts: Vec<usize>,
    pub r: usize,
    pub targets: Vec<String>,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub batch: usize,
    pub reps: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub adapters: usize,
    pub mode: String,
    pub prefill_tps: f64,
    pub decode_tps: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub model: String,
    pub dtype: String,
    pub r: usize,
    pub targets: Vec<String>,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub rows: Vec<Row>,
}

/// A random adapter of rank `r` on `targets` (B not zero, so it is a trained adapter's work).
pub fn random_adapter(model: &Llama, r: usize, targets: &[String], seed: u64) -> Result<Adapter> {
    let mut rng = Rng::new(seed, 0);
    let mut factors = BTreeMap::new();
    for layer in 0..model.cfg().layers {
        for t in targets {
            let (_, rows, inp, _) =
                place(model.cfg(), t).ok_or_else(|| Error::Invalid(format!("unknown target module '{t}'")))?;
            let a = (0..r * inp).map(|_| rng.symmetric(1.0 / (inp as f32).sqrt())).collect();
            let b = (0..rows.len() * r).map(|_| rng.symmetric(0.01)).collect();
            factors.insert((layer, t.clone()), Factors { a, b, inp, out: rows.len() });
        }
    }
    let config = LoraConfig::new(r, 2.0 * r as f64, 0.0, targets, false, None);
    Ok(Adapter { config, factors, source: None })
}

pub fn run(
    gpu: &Gpu,
    model_path: &Path,
    load: LoadOptions,
    opts: &Options,
    progress: &mut dyn Progress,
) -> Result<Report> {
    let src = ModelSource::open(model_path)?;
    let mut model = Llama::load(gpu, &src, load)?;
    let prompt = bench_prompt(opts.prompt_tokens, model.cfg().vocab);
    let work_dir = std::env::temp_dir().join(format!("lorafuse-bench-fuse-{}", std::process::id()));
    let rows_total: usize = opts.counts.iter().map(|&n| if n == 0 { 1 } else { 3 }).sum();
    progress.start("adapter fusion throughput", rows_total);
    let mut rows = Vec::new();
    // warm-up at the timed shapes, outside the timing: their kernel shapes tuned (once per
    // device), then a real run for pipeline compilation and first-use costs
    let warm = |m: &Llama| {
        m.warm_up(false, || run_ours(m, &prompt, opts.batch, 2))?;
        run_ours(m, &prompt, opts.batch, 2).map(drop)
    };
    let result = (|| -> Result<()> {
        for &n in &opts.counts {
            let adapters: Vec<Adapter> = (0..n)
                .map(|i| random_adapter(&model, opts.r, &opts.targets, 1000 + i as u64))
                .collect::<Result<_>>()?;
            let weights: Vec<f32> = (0..n).map(|i| if i % 2 == 0 { 0.6 } else { 0.4 }).collect();
            if n == 0 {
                model.detach();
                warm(&model)?;
                let (p, d) = best(opts.reps, || run_ours(&model, &prompt, opts.batch, opts.gen_tokens))?;
                let row = Row { adapters: 0, mode: "base".into(), prefill_tps: p, decode_tps: d };
                progress.row(&line(&row));
                rows.push(row);
                continue;
            }
            let pairs: Vec<(&Adapter, f32)> = adapters.iter().zip(weights.iter().copied()).collect();
            let dir = work_dir.join(format!("merged-{n}"));
            let dtype = match load.dtype {
                crate::gpu::DType::F32 => safetensors::Dtype::F32,
                _ => safetensors::Dtype::F16,
            };
            export_hf(&src, &pairs, dtype, &dir, &mut |_, _| {})?;
            let merged = Llama::load(gpu, &ModelSource::open(&dir)?, load)?;
            std::fs::remove_dir_all(&dir).ok();
            // best (prefill, decode) of fused, sequential, merged
            let mut best3 = [(0.0f64, 0.0f64); 3];
            for rep in 0..opts.reps.max(1) {
                for (mode, best) in best3.iter_mut().enumerate() {
                    let m: &Llama = match mode {
                        0 => {
                            model.attach(&adapters, &weights)?;
                            &model
                        }
                        1 => {
                            model.attach_sequential(&adapters, &weights)?;
                            &model
                        }
                        _ => &merged,
                    };
                    if rep == 0 {
                        warm(m)?;
                    }
                    let (p, d) = run_ours(m, &prompt, opts.batch, opts.gen_tokens)?;
                    *best = (best.0.max(p), best.1.max(d));
                }
            }
            model.detach();
            for (mode, (p, d)) in ["fused", "sequential", "merged"].into_iter().zip(best3) {
                let row = Row { adapters: n, mode: mode.into(), prefill_tps: p, decode_tps: d };
                progress.row(&line(&row));
                rows.push(row);
            }
        }
        Ok(())
    })();
    std::fs::remove_dir_all(&work_dir).ok();
    result?;
    Ok(Report {
        device: gpu.describe(),
        model: model_path.display().to_string(),
        dtype: model.dtype().to_string(),
        r: opts.r,
        targets: opts.targets.clone(),
        batch: opts.batch,
        prompt_tokens: opts.prompt_tokens,
        gen_tokens: opts.gen_tokens,
        rows,
    })
}

fn best(reps: usize, mut f: impl FnMut() -> Result<(f64, f64)>) -> Result<(f64, f64)> {
    let (mut p, mut d) = (0.0f64, 0.0f64);
    for _ in 0..reps.max(1) {
        let (a, b) = f()?;
        (p, d) = (p.max(a), d.max(b));
    }
    Ok((p, d))
}

fn line(r: &Row) -> String {
    format!(
        "{} adapter(s), {}: prefill {:.1} tokens/s, decode {:.1} tokens/s",
        r.adapters, r.mode, r.prefill_tps, r.decode_tps
    )
}

pub fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Model {} ({} weights) on {}; adapters r {} on {}; batch {}, {} prompt tokens, {} generated.\n",
        r.model,
        r.dtype,
        r.device,
        r.r,
        r.targets.join(", "),
        r.batch,
        r.prompt_tokens,
        r.gen_tokens
    );
    let _ =
        writeln!(s, "| adapters | mode | prefill tokens/s | decode tokens/s | prefill vs merged | decode vs merged |");
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|");
    for row in &r.rows {
        let merged = r.rows.iter().find(|x| x.adapters == row.adapters && (x.mode == "merged" || x.mode == "base"));
        let (pm, dm) =
            merged.map_or((f64::NAN, f64::NAN), |m| (row.prefill_tps / m.prefill_tps, row.decode_tps / m.decode_tps));
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.2}× | {:.2}× |",
            row.adapters, row.mode, row.prefill_tps, row.decode_tps, pm, dm
        );
    }
    let mut counts: Vec<usize> = r.rows.iter().map(|x| x.adapters).filter(|&n| n > 0).collect();
    counts.dedup();
    for n in counts {
        let get = |m: &str| r.rows.iter().find(|x| x.adapters == n && x.mode == m);
        if let (Some(f), Some(q)) = (get("fused"), get("sequential")) {
            let _ = writeln!(
                s,
                "\n{n} adapter(s): fused / sequential {:.2}× prefill, {:.2}× decode.",
                f.prefill_tps / q.prefill_tps,
                f.decode_tps / q.decode_tps
            );
        }
    }
    s
}
