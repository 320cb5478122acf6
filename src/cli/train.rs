//! `lorafuse train`: a LoRA adapter trained on conversations, written in PEFT format.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use lorafuse::gpu::Gpu;
use lorafuse::model::batch::Encoded;
use lorafuse::train::config::TrainConfig;
use lorafuse::train::data;
use lorafuse::train::schedule::Schedule;
use lorafuse::train::trainer::{RunOptions, Summary, draw_mix, split_holdout, train};

use super::model::{ModelArgs, Session};

/// Defaults are the paper's recipe (r 8, alpha 32, dropout 0.05 on q_proj and v_proj, 10
/// epochs, lr 1e-3, batch 4, AdamW, StepLR γ 0.85 per epoch).
#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Conversations: the paper's JSON (a list of conversations of {role, content}), JSONL of
    /// {"messages": [...]}, or Alpaca/Dolly rows ({instruction, input, output}).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: adapter_config.json + adapter_model.safetensors (PEFT), train_log.jsonl,
    /// loss.svg, checkpoint.safetensors, train_summary.json.
    #[arg(long)]
    pub out: PathBuf,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub r: usize,
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f64,
    /// Dropout on the adapters' input.
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f32,
    /// Modules to adapt, comma-separated: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    /// down_proj.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub targets: Vec<String>,
    /// rsLoRA: scale alpha/√r instead of alpha/r.
    #[arg(long)]
    pub rslora: bool,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Conversations per micro-batch (packed, no padding).
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Tokens per conversation; longer ones are cut (and counted).
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
    #[arg(long, default_value = "step", value_parser = ["constant", "step", "cosine"])]
    pub schedule: String,
    /// StepLR's factor per epoch.
    #[arg(long, default_value_t = 0.85)]
    pub gamma: f32,
    /// Optimizer steps of linear warm-up.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0: off, as in the paper's recipe).
    #[arg(long, default_value_t = 0.0)]
    pub max_grad_norm: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// A system message for conversations that have none.
    #[arg(long)]
    pub system: Option<String>,
    /// Hold out conversations for a per-epoch loss: a fraction below 1, a count from 1.
    #[arg(long, default_value_t = 0.0)]
    pub holdout: f64,
    /// Skip malformed rows (counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Conversations to mix into the training set (any --data format): with --mix-fraction F,
    /// a seeded draw from this file makes up F of what is trained on (the paper's baseline: a
    /// task adapter with 3% safety data, --mix-data aoa_safety_train.json --mix-fraction 0.03).
    /// The held-out part stays --data's own.
    #[arg(long, requires = "mix_fraction")]
    pub mix_data: Option<PathBuf>,
    #[arg(long, requires = "mix_data")]
    pub mix_fraction: Option<f64>,
    /// Continue the run whose checkpoint is in --out (same options and data).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many epochs (continue later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
}

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        Ok(TrainConfig {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: self.targets.iter().map(|t| t.trim().to_string()).collect(),
            rslora: self.rslora,
            epochs: self.epochs,
            lr: self.lr,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            schedule: self.schedule.parse::<Schedule>().map_err(anyhow::Error::msg)?,
            gamma: self.gamma,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
        })
    }
}

/// One training run: the data, the recipe and where it goes.
pub struct Job {
    pub data: PathBuf,
    /// Conversations mixed in, and the share of the training set they take.
    pub mix: Option<(PathBuf, f64)>,
    pub config: TrainConfig,
    pub system: Option<String>,
    pub max_len: usize,
    pub holdout: f64,
    pub skip_bad: bool,
    pub out: PathBuf,
    pub resume: bool,
    pub stop_after: Option<usize>,
}

pub fn run(gpu: &Gpu, args: &TrainArgs) -> Result<()> {
    if !args.model.adapters.is_empty() {
        bail!("train starts a fresh adapter: --adapter is not taken here");
    }
    let job = Job {
        data: args.data.clone(),
        mix: args.mix_data.clone().zip(args.mix_fraction),
        config: args.config()?,
        system: args.system.clone(),
        max_len: args.max_len,
        holdout: args.holdout,
        skip_bad: args.skip_bad,
        out: args.out.clone(),
        resume: args.resume,
        stop_after: args.stop_after,
    };
    let mut s = args.model.load(gpu)?;
    train_job(&mut s, &job, false)?;
    Ok(())
}

/// Trains a fresh adapter (or resumes one) on a loaded model, which is left without adapters;
/// writes DIR/train_summary.json beside the adapter and says what it did.
pub fn train_job(m: &mut Session, job: &Job, quiet: bool) -> Result<Summary> {
    let tc = &job.config;
    let (examples, bad) = data::load(&job.data, job.skip_bad)?;
    tc.validate(m.model.cfg())?;
    let template = m.template.as_ref().with_context(|| {
        format!("{} has no chat template, which training on conversations needs", m.args.model.display())
    })?;
    let encode = |examples: &[data::Example], file: &std::path::Path| -> Result<(Vec<Encoded>, usize, usize)> {
        let (mut encoded, mut cut, mut empty) = (Vec::<Encoded>::new(), 0, 0);
        for ex in examples {
            let (e, was_cut) = data::encode(ex, &m.tok, template, job.system.as_deref(), job.max_len)?;
            cut += was_cut as usize;
            if e.labelled() == 0 {
                empty += 1;
            } else {
                encoded.push(e);
            }
        }
        if encoded.is_empty() {
            bail!("{}: no conversation keeps an assistant token within --max-len {}", file.display(), job.max_len);
        }
        Ok((encoded, cut, empty))
    };
    let (encoded, cut, empty) = encode(&examples, &job.data)?;
    let (train_idx, held_idx) = split_holdout(encoded.len(), job.holdout, tc.seed)?;
    let mut train_set: Vec<Encoded> = train_idx.iter().map(|&i| encoded[i].clone()).collect();
    let held: Vec<Encoded> = held_idx.iter().map(|&i| encoded[i].clone()).collect();
    let mut mixed = serde_json::Value::Null;
    if let Some((file, fraction)) = &job.mix {
        let (pool_rows, pool_bad) = data::load(file, job.skip_bad)?;
        let (pool, _, _) = encode(&pool_rows, file)?;
        let drawn =
            draw_mix(train_set.len(), pool.len(), *fraction, tc.seed).with_context(|| file.display().to_string())?;
        eprintln!(
            "mix: {} of the {} usable conversations of {} ({pool_bad} malformed skipped) join the {} of --data: {:.2}% of the training set",
            drawn.len(),
            pool.len(),
            file.display(),
            train_set.len(),
            100.0 * drawn.len() as f64 / (train_set.len() + drawn.len()) as f64
        );
        mixed = serde_json::json!({"file": file, "fraction": fraction, "pool": pool.len(), "drawn": drawn});
        train_set.extend(drawn.iter().map(|&i| pool[i].clone()));
    }
    let tokens: usize = train_set.iter().map(|e| e.tokens.len()).sum();
    let labelled: usize = train_set.iter().map(Encoded::labelled).sum();
    eprintln!(
        "data: {} conversations from {} ({bad} malformed rows skipped, {cut} cut to --max-len {}, {empty} without an assistant token left out); training on {} ({tokens} tokens, {labelled} labelled), {} held out",
        examples.len(),
        job.data.display(),
        job.max_len,
        train_set.len(),
        held.len()
    );
    let opts = RunOptions {
        out: job.out.clone(),
        resume: job.resume,
        stop_after: job.stop_after,
        base_model: Some(m.args.model.display().to_string()),
        quiet,
    };
    let summary = train(&mut m.model, tc, &train_set, &held, &opts);
    m.model.detach();
    let summary = summary?;
    if summary.unchanged {
        eprintln!(
            "{}: the run had finished its {} epochs ({} steps); --resume changed nothing",
            job.out.display(),
            summary.epochs_done,
            summary.steps
        );
        return Ok(summary);
    }
    let report = serde_json::json!({
        "config": tc,
        "model": m.args.model,
        "dtype": m.args.dtype,
        "data": {
            "file": job.data, "conversations": examples.len(), "malformed_skipped": bad, "cut": cut,
            "without_labels": empty, "train": train_set.len(), "held_out": held.len(),
            "train_tokens": tokens, "train_labelled": labelled, "mixed_in": mixed,
        },
        "device": m.device(),
        "summary": summary,
    });
    lorafuse::atomic::write_atomic(&job.out.join("train_summary.json"), serde_json::to_string_pretty(&report)?)?;
    let first = summary.epoch_loss.first().copied().unwrap_or(f64::NAN);
    let last = summary.epoch_loss.last().copied().unwrap_or(f64::NAN);
    eprintln!(
        "{} {} epochs ({} steps): train loss {first:.4} (epoch 1) → {last:.4}; {:.1} tokens/s, {:.0} s this run, peak device memory {:.0} MiB",
        if summary.finished { "trained" } else { "stopped after" },
        summary.epochs_done,
        summary.steps,
        summary.tokens_per_s,
        summary.seconds,
        summary.peak_memory as f64 / (1 << 20) as f64
    );
    eprintln!(
        "adapter: {} (PEFT format; try: lorafuse generate --adapter {} --prompt ...)",
        job.out.display(),
        job.out.display()
    );
    Ok(summary)
}
