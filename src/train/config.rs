//! What decides a trained adapter (the run's config, the paper's recipe by default) and the
//! fresh adapter a run starts from.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lora::attach::place;
use crate::lora::peft::{Adapter, Factors, LoraConfig, TARGETS};
use crate::model::config::LlamaConfig;
use crate::rng::Rng;
use crate::train::schedule::Schedule;

/// Random streams (high byte) of a run's seed.
pub(crate) const STREAM_INIT: u64 = 1 << 56;
pub(crate) const STREAM_SHUFFLE: u64 = 2 << 56;
pub(crate) const STREAM_DROPOUT: u64 = 3 << 56;
pub(crate) const STREAM_HOLDOUT: u64 = 4 << 56;
pub(crate) const STREAM_MIX: u64 = 5 << 56;

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

    pub(crate) fn peft_config(&self, base: Option<String>) -> LoraConfig {
        LoraConfig::new(self.r, self.alpha, self.dropout as f64, &self.targets, self.rslora, base)
    }

    pub(crate) fn steps_per_epoch(&self, examples: usize) -> usize {
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
