//! The LoRA trainer: a fresh PEFT-initialized adapter attached to the frozen model, epochs of
//! seeded shuffles, micro-batches accumulated into optimizer steps, global-norm clipping and
//! AdamW on the GPU, a scheduled learning rate; a JSONL step log, an SVG loss curve, the adapter
//! in PEFT format and an atomic checkpoint after every epoch, from which `resume` continues to
//! the same final adapter as an uninterrupted run.
//!
//! Every random choice derives from the seed and a stream number (rng.rs): adapter init, the
//! shuffle of epoch e, the dropout masks of step s's micro-batch m. The optimizer state lives in
//! the checkpoint bit for bit, and the kernels reduce in a fixed order, so a resumed run repeats
//! the interrupted one exactly on the same device and kernel choices.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Dropout;
use crate::model::batch::{Encoded, TrainBatch};
use crate::model::llama::Llama;
use crate::model::loss::StepOptions;
use crate::model::params::{AdamW, LoraGradients};
use crate::progress::Progress;
use crate::rng::Rng;
use crate::train::checkpoint::{self, Meta};
use crate::train::config::{STREAM_DROPOUT, STREAM_HOLDOUT, STREAM_MIX, STREAM_SHUFFLE, TrainConfig, fresh_adapter};
use crate::train::log::{EpochRecord, LogLine, StepRecord, append_log, loss_chart, read_log, write_log};
use crate::train::optimizer::Optimizer;
use crate::train::schedule::lr_at;

/// Splits `n` examples into (train, held-out) index lists: `holdout` below 1 is a fraction, from
/// 1 up a count; the choice is seeded.
pub fn split_holdout(n: usize, holdout: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let k = if holdout < 1.0 { (holdout * n as f64).round() as usize } else { holdout as usize };
    if holdout < 0.0 || k >= n {
        return Err(Error::Invalid(format!("--holdout {holdout} leaves no training examples of {n}")));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    Rng::new(seed, STREAM_HOLDOUT).shuffle(&mut idx);
    let (held, train) = idx.split_at(k);
    let (mut held, mut train) = (held.to_vec(), train.to_vec());
    held.sort_unstable();
    train.sort_unstable();
    Ok((train, held))
}

/// The conversations to mix into a training set of `n` so that they are `fraction` of the
/// whole (the paper's baseline: a task set with 3% safety conversations): k = round(f·n / (1 − f))
/// of the `pool`, drawn without replacement under `seed`, in pool order.
pub fn draw_mix(n: usize, pool: usize, fraction: f64, seed: u64) -> Result<Vec<usize>> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::Invalid(format!("--mix-fraction must be in [0, 1), not {fraction}")));
    }
    let k = (fraction * n as f64 / (1.0 - fraction)).round() as usize;
    if k > pool {
        return Err(Error::Invalid(format!(
            "--mix-fraction {fraction} of a training set of {n} needs {k} mixed conversations; the mix file has {pool}"
        )));
    }
    let mut idx: Vec<usize> = (0..pool).collect();
    Rng::new(seed, STREAM_MIX).shuffle(&mut idx);
    let mut drawn = idx[..k].to_vec();
    drawn.sort_unstable();
    Ok(drawn)
}

/// FNV-1a over the tokens and targets of the data, so a checkpoint is resumed on the same data.
pub fn fingerprint(train: &[Encoded], holdout: &[Encoded]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (set, ex) in train.iter().map(|e| (0u32, e)).chain(holdout.iter().map(|e| (1, e))) {
        for v in std::iter::once(set ^ 0xffff_0000).chain(ex.tokens.iter().copied()).chain(ex.targets.iter().copied()) {
            h = (h ^ v as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Where a run writes and how it starts.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Stop after this many epochs of this invocation (the rest by a later `resume`).
    pub stop_after: Option<usize>,
    /// base_model_name_or_path of the adapter's config.
    pub base_model: Option<String>,
    /// No progress bar or messages (tests).
    pub quiet: bool,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub epochs_done: usize,
    pub steps: usize,
    pub finished: bool,
    /// Mean loss per labelled token of each epoch (this invocation's and earlier ones').
    pub epoch_loss: Vec<f64>,
    /// Held-out loss before training (when not resumed) and after each epoch.
    pub holdout_loss: Vec<f64>,
    /// Tokens and wall seconds of this invocation (0 when it found the run finished).
    pub tokens: u64,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// Tokens and step seconds of every step in the log, earlier (resumed) invocations' too.
    pub all_tokens: u64,
    pub all_seconds: f64,
    pub peak_memory: u64,
    /// The run had finished before this invocation, which read it and wrote nothing.
    #[serde(skip)]
    pub unchanged: bool,
}

impl Summary {
    /// The totals over every step in `log`, earlier invocations' too.
    fn add_totals(&mut self, log: &[LogLine]) {
        for l in log {
            if let LogLine::Step(s) = l {
                self.all_tokens += s.tokens as u64;
                self.all_seconds += s.seconds;
            }
        }
    }
}

/// Batches of one epoch: steps of micro-batches of example indices.
fn epoch_plan(tc: &TrainConfig, n: usize, epoch: usize) -> Vec<Vec<Vec<usize>>> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(tc.seed, STREAM_SHUFFLE | epoch as u64).shuffle(&mut order);
    order
        .chunks(tc.batch_size * tc.grad_accum)
        .map(|step| step.chunks(tc.batch_size).map(|m| m.to_vec()).collect())
        .collect()
}

fn batch_of(examples: &[Encoded], idx: &[usize]) -> TrainBatch {
    TrainBatch::of(idx.iter().map(|&i| &examples[i]))
}

/// Mean held-out loss per labelled token, in batches.
fn holdout_loss(model: &Llama, holdout: &[Encoded], batch_size: usize) -> Result<Option<f64>> {
    if holdout.is_empty() {
        return Ok(None);
    }
    let (mut sum, mut n) = (0.0, 0);
    for chunk in holdout.chunks(batch_size) {
        let b = TrainBatch::of(chunk);
        n += b.counted();
        sum += model.loss(&b)?;
    }
    Ok(Some(sum / n.max(1) as f64))
}

/// Trains a fresh adapter (or resumes one) on `train`, writing into `opts.out`.
pub fn train(
    model: &mut Llama,
    tc: &TrainConfig,
    train: &[Encoded],
    holdout: &[Encoded],
    opts: &RunOptions,
) -> Result<Summary> {
    tc.validate(model.cfg())?;
    if train.is_empty() {
        return Err(Error::Invalid("no training examples".into()));
    }
    let out = &opts.out;
    let ckpt_path = out.join("checkpoint.safetensors");
    let log_path = out.join("train_log.jsonl");
    let data_fp = fingerprint(train, holdout);
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    crate::atomic::remove_stale_temps(out);
    if opts.resume && !ckpt_path.exists() {
        return Err(Error::file(
            out,
            "--resume: no checkpoint here yet (a run writes checkpoint.safetensors at the end of each epoch); start without --resume",
        ));
    }

    model.attach(&[fresh_adapter(model.cfg(), tc, opts.base_model.clone())?], &[1.0])?;
    let gpu = model.gpu().clone();
    let grads = LoraGradients::new(model)?;
    let opt = Optimizer::new(model)?;

    let mut log: Vec<LogLine> = Vec::new();
    let (mut epoch0, mut step0) = (0, 0);
    if opts.resume {
        let (meta, tensors) = checkpoint::load(&ckpt_path)?;
        if meta.config != *tc {
            return Err(Error::file(
                &ckpt_path,
                format!(
                    "was written by a run with another config; resume with the same options.\n  checkpoint: {}\n  now:        {}",
                    serde_json::to_string(&meta.config).unwrap_or_default(),
                    serde_json::to_string(tc).unwrap_or_default()
                ),
            ));
        }
        if meta.data != data_fp {
            return Err(Error::file(
                &ckpt_path,
                "was trained on other data (or another --max-len, --system or template)",
            ));
        }
        opt.restore(model, &tensors, &ckpt_path)?;
        (epoch0, step0) = (meta.epoch, meta.step);
        log = read_log(&log_path)?
            .into_iter()
            .filter(|l| match l {
                LogLine::Step(s) => s.step <= step0,
                LogLine::Epoch(e) => e.epoch <= epoch0,
            })
            .collect();
        if epoch0 >= tc.epochs {
            // nothing left to train: the log, the adapter and the summary stay as they are
            let mut s =
                Summary { epochs_done: epoch0, steps: step0, finished: true, unchanged: true, ..Default::default() };
            for l in &log {
                if let LogLine::Epoch(e) = l {
                    s.epoch_loss.extend(Some(e.train_loss).filter(|_| e.epoch > 0));
                    s.holdout_loss.extend(e.holdout_loss);
                }
            }
            s.add_totals(&log);
            return Ok(s);
        }
    } else if ckpt_path.exists() {
        return Err(Error::file(
            &ckpt_path,
            "holds the checkpoint of an earlier run: pass --resume to continue it, or choose another --out",
        ));
    }

    // the warm-up: the first step's forward and backward and a held-out loss, recorded to learn
    // their kernel shapes, which are tuned now if this device has no choice for them yet
    let first = TrainBatch::of(epoch_plan(tc, train.len(), epoch0)[0][0].iter().map(|&i| &train[i]));
    model.warm_up(opts.quiet, || {
        model.forward_backward(&first, &grads, &StepOptions::default())?;
        holdout.first().map(|h| model.loss(&TrainBatch::of([h]))).transpose()
    })?;
    let per_epoch = tc.steps_per_epoch(train.len());
    let total = per_epoch * tc.epochs;
    let mut summary = Summary { epochs_done: epoch0, steps: step0, ..Default::default() };
    summary.epoch_loss =
        // epoch 0 is the held-out loss before training, with no train loss
        log.iter().filter_map(|l| if let LogLine::Epoch(e) = l { Some(e.train_loss).filter(|_| e.epoch > 0) } else { None }).collect();
    let mut bar = Progress::new(total, "training", "steps", opts.quiet);
    bar.resume_at(step0);
    if epoch0 == 0 {
        if let Some(h) = holdout_loss(model, holdout, tc.batch_size)? {
            bar.println(&format!("held-out loss before training: {h:.4}"));
            summary.holdout_loss.push(h);
            log.push(LogLine::Epoch(EpochRecord { epoch: 0, step: 0, train_loss: f64::NAN, holdout_loss: Some(h) }));
        }
    } else {
        bar.println(&format!("resuming after epoch {epoch0} (step {step0}) from {}", ckpt_path.display()));
    }
    write_log(&log_path, &log)?;

    let started = Instant::now();
    let hp = AdamW { lr: tc.lr, weight_decay: tc.weight_decay, ..AdamW::default() };
    let mut step = step0;
    let last_epoch = opts.stop_after.map_or(tc.epochs, |k| (epoch0 + k).min(tc.epochs));
    for epoch in epoch0..last_epoch {
        let (mut e_loss, mut e_lab) = (0.0, 0usize);
        for micro in epoch_plan(tc, train.len(), epoch) {
            let t0 = Instant::now();
            let batches: Vec<TrainBatch> = micro.iter().map(|m| batch_of(train, m)).collect();
            let labelled: usize = batches.iter().map(TrainBatch::counted).sum();
            let tokens: usize = batches.iter().map(TrainBatch::rows).sum();
            let mut loss = 0.0;
            for (mi, b) in batches.iter().enumerate() {
                let dropout = (tc.dropout > 0.0).then(|| Dropout {
                    p: tc.dropout,
                    seed: Rng::new(tc.seed, STREAM_DROPOUT | (step * tc.grad_accum + mi) as u64).next_u64(),
                });
                let so = StepOptions { loss_scale: 1.0 / labelled.max(1) as f32, accumulate: mi > 0, dropout };
                loss += model.forward_backward(b, &grads, &so)?;
            }
            let lr = lr_at(tc.schedule, tc.lr, tc.gamma, tc.warmup, step, epoch, total);
            let norm = opt.step(model, &grads, &AdamW { lr, ..hp }, tc.max_grad_norm, step + 1)?;
            let mean = loss / labelled.max(1) as f64;
            if !mean.is_finite() || !norm.is_finite() {
                return Err(Error::Invalid(format!(
                    "step {}: the loss is {mean} and the gradient norm {norm}; lower --lr or set --max-grad-norm (the checkpoint of epoch {epoch} is intact)",
                    step + 1
                )));
            }
            step += 1;
            let secs = t0.elapsed().as_secs_f64();
            summary.tokens += tokens as u64;
            (e_loss, e_lab) = (e_loss + loss, e_lab + labelled);
            let rec = StepRecord {
                step,
                epoch: epoch as f64 + (step - epoch * per_epoch) as f64 / per_epoch as f64,
                lr,
                loss: mean,
                grad_norm: norm,
                tokens,
                labelled,
                seconds: secs,
                tokens_per_s: tokens as f64 / secs,
            };
            bar.set_message(format!(
                "epoch {}/{} loss {mean:.4} lr {lr:.2e} {:.0} tok/s",
                epoch + 1,
                tc.epochs,
                summary.tokens as f64 / started.elapsed().as_secs_f64()
            ));
            bar.inc(1);
            append_log(&log_path, &LogLine::Step(rec.clone()))?;
            log.push(LogLine::Step(rec));
        }
        let train_loss = e_loss / e_lab.max(1) as f64;
        let h = holdout_loss(model, holdout, tc.batch_size)?;
        summary.epoch_loss.push(train_loss);
        summary.holdout_loss.extend(h);
        let line = LogLine::Epoch(EpochRecord { epoch: epoch + 1, step, train_loss, holdout_loss: h });
        append_log(&log_path, &line)?;
        log.push(line);
        bar.println(&format!(
            "epoch {}/{}: train loss {train_loss:.4}{}",
            epoch + 1,
            tc.epochs,
            h.map(|h| format!(", held-out loss {h:.4} (perplexity {:.2})", h.exp())).unwrap_or_default()
        ));
        // the adapter, then the checkpoint that commits the epoch
        model.adapter(tc.peft_config(opts.base_model.clone()))?.save(out)?;
        let meta = Meta { config: tc.clone(), epoch: epoch + 1, step, data: data_fp };
        checkpoint::save(&ckpt_path, &meta, &opt.state(model)?)?;
        crate::atomic::write_atomic(&out.join("loss.svg"), loss_chart(&log).svg())?;
        summary.epochs_done = epoch + 1;
        summary.steps = step;
    }
    bar.finish();
    summary.finished = summary.epochs_done == tc.epochs;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.tokens_per_s = summary.tokens as f64 / summary.seconds.max(1e-9);
    summary.add_totals(&log);
    summary.peak_memory = gpu.memory().peak();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::draw_mix;

    #[test]
    fn the_mix_is_the_share_asked_for_seeded_and_without_repeats() {
        // 3% of a set of 970 plus its mix is 30 of 1,000
        let d = draw_mix(970, 100, 0.03, 7).unwrap();
        assert_eq!(d.len(), 30);
        assert!(d.windows(2).all(|w| w[0] < w[1]) && d.iter().all(|&i| i < 100));
        assert_eq!(draw_mix(970, 100, 0.03, 7).unwrap(), d, "the same seed draws the same");
        assert_ne!(draw_mix(970, 100, 0.03, 8).unwrap(), d, "another seed draws otherwise");
        // the paper's 44 task conversations: 0.03·44/0.97 = 1.36, one safety conversation
        assert_eq!(draw_mix(44, 16, 0.03, 1).unwrap().len(), 1);
        assert!(draw_mix(44, 16, 0.0, 1).unwrap().is_empty());
        assert!(draw_mix(90, 5, 0.1, 1).unwrap_err().to_string().contains("needs 10"));
        for bad in [1.0, -0.1, f64::NAN] {
            assert!(draw_mix(10, 10, bad, 1).is_err(), "{bad}");
        }
    }
}
