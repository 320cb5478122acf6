//! AdamW over the attached adapter with global-norm clipping: the optimizer's state (f32
//! moments on the GPU, saved in checkpoints bit for bit) and its step.

use std::path::Path;

use crate::error::Result;
use crate::model::llama::Llama;
use crate::model::params::{AdamW, LoraGradients, Moments, Named, NamedMap};

/// AdamW over the attached adapter.
pub struct Optimizer {
    moments: Moments,
}

impl Optimizer {
    pub fn new(model: &Llama) -> Result<Optimizer> {
        Ok(Optimizer { moments: model.new_moments()? })
    }

    /// Clips the global gradient norm to `max_norm` (0: no clipping) and takes AdamW step `t`
    /// (from 1) on every stack; returns the norm before clipping. A non-finite norm changes
    /// nothing.
    pub fn step(&self, model: &Llama, grads: &LoraGradients, hp: &AdamW, max_norm: f32, t: usize) -> Result<f64> {
        let norm = model.grad_norm(grads)?;
        if !norm.is_finite() {
            return Ok(norm);
        }
        let scale =
            if max_norm > 0.0 && norm > max_norm as f64 { (max_norm as f64 / (norm + 1e-6)) as f32 } else { 1.0 };
        model.adamw_step(grads, &self.moments, hp, t, scale)?;
        Ok(norm)
    }

    /// The adapter's factors and the moments, for a checkpoint.
    pub fn state(&self, model: &Llama) -> Result<Vec<Named>> {
        model.training_state(&self.moments)
    }

    /// Restores `state`'s tensors, read from the checkpoint at `path`.
    pub fn restore(&self, model: &Llama, tensors: &NamedMap, path: &Path) -> Result<()> {
        model.restore_training_state(&self.moments, tensors, path)
    }
}
