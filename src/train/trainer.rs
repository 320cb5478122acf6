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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::dropout::Dropout;
use crate::kernels::lora::LoraStack;
use crate::kernels::optimizer::{AdamW, adamw, sumsq, sumsq_partials};
use crate::lora::attach::{Site, place};
use crate::lora::peft::{Adapter, Factors, LoraConfig, TARGETS};
use crate::model::config::LlamaConfig;
use crate::model::llama::Llama;
use crate::plot::{Chart, Series};
use crate::progress::Progress;
use crate::rng::Rng;
use crate::train::checkpoint::{self, Meta, Named};
use crate::train::data::Encoded;
use crate::train::schedule::{Schedule, lr_at};
use crate::train::step::{LoraGradients, StepOptions, TrainBatch, eval_loss, forward_backward};

/// Random streams (high byte) of a run's seed.
const STREAM_INIT: u64 = 1 << 56;
const STREAM_SHUFFLE: u64 = 2 << 56;
const STREAM_DROPOUT: u64 = 3 << 56;
const STREAM_HOLDOUT: u64 = 4 << 56;

/// Everything that decides the trained adapter. The defaults are the paper's recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<String>,
    pub rslora: bool,
    pub epochs: usize,
    pub lr: f32,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub schedule: Schedule,
    pub gamma: f32,
    pub warmup: usize,
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f32,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            r: 8,
            alpha: 32.0,
            dropout: 0.05,
            targets: vec!["q_proj".into(), "v_proj".into()],
            rslora: false,
            epochs: 10,
            lr: 1e-3,
            batch_size: 4,
            grad_accum: 1,
            schedule: Schedule::Step,
            gamma: 0.85,
            warmup: 0,
            weight_decay: 0.0,
            max_grad_norm: 0.0,
            seed: 42,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self, cfg: &LlamaConfig) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.r == 0 || self.batch_size == 0 || self.grad_accum == 0 || self.epochs == 0 {
            return bad("--r, --batch-size, --grad-accum and --epochs must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("--dropout {} is outside [0, 1)", self.dropout));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) || self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return bad("--lr must be positive, --weight-decay and --max-grad-norm non-negative".into());
        }
        if self.targets.is_empty() {
            return bad("--targets names no module".into());
        }
        for t in &self.targets {
            if place(cfg, t).is_none() {
                return bad(format!("unknown target module '{t}' (one of {})", TARGETS.join(", ")));
            }
        }
        Ok(())
    }

    fn peft_config(&self, base: Option<String>) -> LoraConfig {
        LoraConfig::new(self.r, self.alpha, self.dropout as f64, &self.targets, self.rslora, base)
    }

    fn steps_per_epoch(&self, examples: usize) -> usize {
        examples.div_ceil(self.batch_size * self.grad_accum)
    }
}

/// A new adapter as PEFT initializes one: A Kaiming-uniform (a = √5, so bound 1/√in), B zero.
pub fn fresh_adapter(cfg: &LlamaConfig, tc: &TrainConfig, base: Option<String>) -> Result<Adapter> {
    tc.validate(cfg)?;
    let mut factors = std::collections::BTreeMap::new();
    for layer in 0..cfg.layers {
        for t in &tc.targets {
            let (_, rows, inp, _) = place(cfg, t).expect("validated");
            let ti = TARGETS.iter().position(|x| x == t).expect("a known target") as u64;
            let mut rng = Rng::new(tc.seed, STREAM_INIT | (layer as u64) << 8 | ti);
            let bound = 1.0 / (inp as f32).sqrt();
            let a = (0..tc.r * inp).map(|_| rng.symmetric(bound)).collect();
            factors.insert((layer, t.clone()), Factors { a, b: vec![0.0; rows.len() * tc.r], inp, out: rows.len() });
        }
    }
    Ok(Adapter { config: tc.peft_config(base), factors, source: None })
}

/// The adapter attached to `model` (the first), read back from the GPU as a PEFT adapter.
pub fn adapter_from_model(model: &Llama, tc: &TrainConfig, base: Option<String>) -> Result<Adapter> {
    let attached = model.adapters().ok_or_else(|| Error::Invalid("no adapter attached".into()))?;
    let mut factors = std::collections::BTreeMap::new();
    for (layer, ll) in attached.layers.iter().enumerate() {
        for site in Site::ALL {
            let Some(stack) = ll.get(site) else { continue };
            for blk in stack.read_blocks(model.gpu())? {
                let target = tc
                    .targets
                    .iter()
                    .find(|t| place(&model.cfg, t).is_some_and(|(s, rows, ..)| s == site && rows == blk.info.rows))
                    .ok_or_else(|| Error::Invalid(format!("layer {layer}: a block at rows {:?}", blk.info.rows)))?;
                let inp = blk.a.len() / blk.info.rank;
                let out = blk.info.rows.len();
                factors.insert((layer, target.clone()), Factors { a: blk.a, b: blk.b, inp, out });
            }
        }
    }
    Ok(Adapter { config: tc.peft_config(base), factors, source: None })
}

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
}

/// One line of the step log.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StepRecord {
    step: usize,
    epoch: f64,
    lr: f32,
    loss: f64,
    grad_norm: f64,
    tokens: usize,
    labelled: usize,
    seconds: f64,
    tokens_per_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct EpochRecord {
    epoch: usize,
    step: usize,
    train_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    holdout_loss: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum LogLine {
    Step(StepRecord),
    Epoch(EpochRecord),
}

/// AdamW moments of one stack.
struct Moments {
    ma: Tensor,
    va: Tensor,
    mb: Tensor,
    vb: Tensor,
}

/// The stacks of the attached adapter with their moments, by (layer, site).
fn stacks(model: &Llama) -> Vec<(usize, Site, &LoraStack)> {
    let Some(a) = model.adapters() else { return Vec::new() };
    a.layers
        .iter()
        .enumerate()
        .flat_map(|(i, ll)| Site::ALL.into_iter().filter_map(move |s| ll.get(s).map(|st| (i, s, st))))
        .collect()
}

fn site_name(s: Site) -> &'static str {
    match s {
        Site::Qkv => "qkv",
        Site::O => "o",
        Site::GateUp => "gate_up",
        Site::Down => "down",
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
    let mut b = TrainBatch::default();
    for &i in idx {
        b.push(&examples[i].tokens, &examples[i].targets);
    }
    b
}

/// Mean held-out loss per labelled token, in batches.
fn holdout_loss(model: &Llama, holdout: &[Encoded], batch_size: usize) -> Result<Option<f64>> {
    if holdout.is_empty() {
        return Ok(None);
    }
    let (mut sum, mut n) = (0.0, 0);
    for chunk in holdout.chunks(batch_size) {
        let b = batch_of(chunk, &(0..chunk.len()).collect::<Vec<_>>());
        n += b.counted();
        sum += eval_loss(model, &b)?;
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
    tc.validate(&model.cfg)?;
    if train.is_empty() {
        return Err(Error::Invalid("no training examples".into()));
    }
    let out = &opts.out;
    let ckpt_path = out.join("checkpoint.safetensors");
    let log_path = out.join("train_log.jsonl");
    let data_fp = fingerprint(train, holdout);
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;

    model.attach(&[fresh_adapter(&model.cfg, tc, opts.base_model.clone())?], &[1.0])?;
    let gpu = model.gpu().clone();
    let grads = LoraGradients::new(&gpu, model.adapters().expect("attached"))?;
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
        restore(model, &opt.moments, &tensors, &ckpt_path)?;
        (epoch0, step0) = (meta.epoch, meta.step);
        log = read_log(&log_path)?
            .into_iter()
            .filter(|l| match l {
                LogLine::Step(s) => s.step <= step0,
                LogLine::Epoch(e) => e.epoch <= epoch0,
            })
            .collect();
    } else if ckpt_path.exists() {
        return Err(Error::file(
            &ckpt_path,
            "holds the checkpoint of an earlier run: pass --resume to continue it, or choose another --out",
        ));
    }

    let per_epoch = tc.steps_per_epoch(train.len());
    let total = per_epoch * tc.epochs;
    let mut summary = Summary { epochs_done: epoch0, steps: step0, ..Default::default() };
    summary.epoch_loss =
        log.iter().filter_map(|l| if let LogLine::Epoch(e) = l { Some(e.train_loss) } else { None }).collect();
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
                loss += forward_backward(model, b, &grads, &so)?;
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
        adapter_from_model(model, tc, opts.base_model.clone())?.save(out)?;
        let meta = Meta { config: tc.clone(), epoch: epoch + 1, step, data: data_fp };
        checkpoint::save(&ckpt_path, &meta, &snapshot(model, &opt.moments)?)?;
        crate::atomic::write_atomic(&out.join("loss.svg"), loss_chart(&log).svg())?;
        summary.epochs_done = epoch + 1;
        summary.steps = step;
    }
    bar.finish();
    summary.finished = summary.epochs_done == tc.epochs;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.tokens_per_s = summary.tokens as f64 / summary.seconds.max(1e-9);
    for l in &log {
        if let LogLine::Step(s) = l {
            summary.all_tokens += s.tokens as u64;
            summary.all_seconds += s.seconds;
        }
    }
    summary.peak_memory = gpu.memory().peak();
    Ok(summary)
}

/// AdamW over the attached adapter: f32 moments for every stack's factors, on the GPU.
pub struct Optimizer {
    moments: Vec<Moments>,
}

impl Optimizer {
    pub fn new(model: &Llama) -> Result<Optimizer> {
        let gpu = model.gpu();
        let z = |t: &Tensor, n: &str| Tensor::zeros(gpu, t.shape(), DType::F32, n);
        let moments = stacks(model)
            .iter()
            .map(|(_, _, st)| {
                Ok(Moments {
                    ma: z(&st.a_buf, "m A")?,
                    va: z(&st.a_buf, "v A")?,
                    mb: z(&st.b_buf, "m B")?,
                    vb: z(&st.b_buf, "v B")?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Optimizer { moments })
    }

    /// Clips the global gradient norm to `max_norm` (0: no clipping) and takes AdamW step `t`
    /// (from 1) on every stack; returns the norm before clipping. A non-finite norm changes
    /// nothing.
    pub fn step(&self, model: &Llama, grads: &LoraGradients, hp: &AdamW, max_norm: f32, t: usize) -> Result<f64> {
        let gpu = model.gpu();
        let all = stacks(model);
        let mut rec = Recorder::new(gpu);
        let mut partials = Vec::with_capacity(2 * all.len());
        for &(layer, site, st) in &all {
            let (da, db) = grads.get(layer, site).expect("a gradient for every stack");
            for (g, mask) in [(da, None), (db, Some(&st.b_mask))] {
                let p = Tensor::zeros(gpu, &[sumsq_partials(g.numel())], DType::F32, "norm partials")?;
                sumsq(&mut rec, g, mask, &p)?;
                partials.push(p);
            }
        }
        rec.submit()?;
        let mut sq = 0.0f64;
        for p in &partials {
            sq += p.read_f32(gpu)?.iter().map(|&x| x as f64).sum::<f64>();
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Ok(norm);
        }
        let scale =
            if max_norm > 0.0 && norm > max_norm as f64 { (max_norm as f64 / (norm + 1e-6)) as f32 } else { 1.0 };
        let mut rec = Recorder::new(gpu);
        for (&(layer, site, st), m) in all.iter().zip(&self.moments) {
            let (da, db) = grads.get(layer, site).expect("a gradient for every stack");
            adamw(&mut rec, hp, t as u32, scale, &st.a_buf, da, None, &m.ma, &m.va)?;
            adamw(&mut rec, hp, t as u32, scale, &st.b_buf, db, Some(&st.b_mask), &m.mb, &m.vb)?;
            st.refresh(&mut rec)?;
        }
        rec.run()?;
        Ok(norm)
    }
}

/// The adapter stacks and their moments, for a checkpoint.
fn snapshot(model: &Llama, moments: &[Moments]) -> Result<Vec<Named>> {
    let gpu = model.gpu();
    let mut out = Vec::new();
    for (&(layer, site, st), m) in stacks(model).iter().zip(moments) {
        let p = format!("layers.{layer}.{}", site_name(site));
        for (name, t) in
            [("A", &st.a_buf), ("B", &st.b_buf), ("mA", &m.ma), ("vA", &m.va), ("mB", &m.mb), ("vB", &m.vb)]
        {
            out.push((format!("{p}.{name}"), t.shape().to_vec(), t.read_f32(gpu)?));
        }
    }
    Ok(out)
}

/// Loads a checkpoint's stacks and moments into the attached adapter.
fn restore(model: &Llama, moments: &[Moments], tensors: &checkpoint::Tensors, path: &Path) -> Result<()> {
    let gpu = model.gpu();
    let mut rec = Recorder::new(gpu);
    for (&(layer, site, st), m) in stacks(model).iter().zip(moments) {
        let p = format!("layers.{layer}.{}", site_name(site));
        for (name, t) in
            [("A", &st.a_buf), ("B", &st.b_buf), ("mA", &m.ma), ("vA", &m.va), ("mB", &m.mb), ("vB", &m.vb)]
        {
            let key = format!("{p}.{name}");
            let (shape, v) = tensors.get(&key).ok_or_else(|| Error::file(path, format!("{key} is missing")))?;
            if shape.as_slice() != t.shape() {
                return Err(Error::file(path, format!("{key} is {shape:?}, the adapter's is {:?}", t.shape())));
            }
            t.write_f32(gpu, v)?;
        }
        st.refresh(&mut rec)?;
    }
    rec.run()?;
    Ok(())
}

fn read_log(path: &Path) -> Result<Vec<LogLine>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::file(path, e)),
    };
    // a line cut by a crash is dropped: the checkpoint decides what counts
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

fn write_log(path: &Path, log: &[LogLine]) -> Result<()> {
    let mut text = String::new();
    for l in log {
        text.push_str(&serde_json::to_string(l).map_err(|e| Error::Invalid(e.to_string()))?);
        text.push('\n');
    }
    crate::atomic::write_atomic(path, text)
}

fn append_log(path: &Path, line: &LogLine) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).map_err(|e| Error::file(path, e))?;
    let text = serde_json::to_string(line).map_err(|e| Error::Invalid(e.to_string()))?;
    writeln!(f, "{text}").map_err(|e| Error::file(path, e))
}

/// Train loss per step and per epoch, held-out loss per epoch, against epochs.
fn loss_chart(log: &[LogLine]) -> Chart {
    let mut steps = Vec::new();
    let mut epochs = Vec::new();
    let mut held = Vec::new();
    for l in log {
        match l {
            LogLine::Step(s) => steps.push((s.epoch, s.loss)),
            LogLine::Epoch(e) => {
                if e.train_loss.is_finite() {
                    epochs.push((e.epoch as f64, e.train_loss));
                }
                if let Some(h) = e.holdout_loss {
                    held.push((e.epoch as f64, h));
                }
            }
        }
    }
    let mut series = vec![Series::line("train (step)", steps, false), Series::line("train (epoch mean)", epochs, true)];
    if !held.is_empty() {
        series.push(Series::line("held out", held, true));
    }
    Chart {
        title: "LoRA training loss (per labelled token)".into(),
        x_label: "epoch".into(),
        y_label: "loss (nats)".into(),
        series,
    }
}
