//! The loss over a batch of labelled sequences, and one training step's forward and backward
//! through the model with the base frozen: only the attached adapters get gradients.
//!
//!   loss = Σ over labelled rows r of −log softmax(rmsnorm(h_final[r])·Wlmᵀ)[target r]
//!
//! The LM head and the loss run over the labelled rows only, in chunks of at most 64 MiB of
//! logits, through the same head as generation's logits. The backward runs one submission a
//! layer, last to first, so each layer's recomputed activations are freed as the next begins.

use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::cross_entropy::cross_entropy;
use crate::kernels::dropout::Dropout;
use crate::kernels::embedding::scatter;
use crate::kernels::matmul::{Act, Form, MatmulOpts, matmul_act};
use crate::kernels::rmsnorm::rmsnorm_backward;
use crate::lora::attach::Site;
use crate::model::batch::{MASKED, RowTensors, TrainBatch};
use crate::model::layer::{LayerSave, SiteGrads};
use crate::model::llama::{KvCache, Llama};
use crate::model::params::LoraGradients;

/// Options of one forward/backward.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    /// The gradient is of `loss_scale · Σ token losses` (1 / labelled tokens of the whole
    /// optimizer step: a token-weighted mean over its micro-batches).
    pub loss_scale: f32,
    /// Add to the gradients already in place (the second and later micro-batches of a step).
    pub accumulate: bool,
    /// LoRA dropout: probability and this micro-batch's seed.
    pub dropout: Option<Dropout>,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions { loss_scale: 1.0, accumulate: false, dropout: None }
    }
}

/// A loss pass laid out on the GPU: its cache, the rows' adapter coefficients and row tensors.
struct Prepared {
    cache: KvCache,
    coef: Option<Tensor>,
    rows: RowTensors,
}

impl Llama {
    /// The summed loss of the labelled tokens of `batch` (no gradients, no dropout), with the
    /// attached adapters at their weights, or the base model without any.
    pub fn loss(&self, batch: &TrainBatch) -> Result<f64> {
        let p = self.prepare(batch)?;
        let pass = self.pass(&p.rows, &p.cache, p.coef.as_ref(), None);
        let mut rec = Recorder::new(self.gpu());
        let h = self.record_body(&mut rec, &pass, &p.rows.tokens, None)?;
        rec.submit()?;
        self.head_loss(batch, &h, None)
    }

    /// Runs the forward and backward of `batch`, writes (or, with `opts.accumulate`, adds) each
    /// adapter's gradient of `opts.loss_scale · Σ token losses` into `grads`, and returns the
    /// unscaled sum of the token losses.
    pub fn forward_backward(&self, batch: &TrainBatch, grads: &LoraGradients, opts: &StepOptions) -> Result<f64> {
        let gpu = self.gpu();
        if self.adapters().is_none() {
            return Err(Error::Invalid("training needs adapters attached to the model".into()));
        }
        let p = self.prepare(batch)?;
        let pass = self.pass(&p.rows, &p.cache, p.coef.as_ref(), opts.dropout);
        let mut saves: Vec<LayerSave> = Vec::with_capacity(self.cfg().layers);
        let mut rec = Recorder::new(gpu);
        let h = self.record_body(&mut rec, &pass, &p.rows.tokens, Some(&mut saves))?;
        rec.submit()?;
        let dh = Tensor::zeros(gpu, &[batch.rows(), self.cfg().hidden], DType::F32, "dh")?;
        let loss = self.head_loss(batch, &h, Some((&dh, opts.loss_scale)))?;
        for (i, layer) in self.layers().iter().enumerate().rev() {
            let grad =
                |site: Site| grads.get(i, site).map(|(da, db)| SiteGrads { da, db, accumulate: opts.accumulate });
            let mut rec = Recorder::new(gpu);
            layer.backward(&mut rec, &pass, i, &saves[i], &dh, grad)?;
            rec.submit()?;
        }
        gpu.wait()?;
        Ok(loss)
    }

    /// Checks a batch and lays it out: its KV cache, the adapters' row coefficients (when
    /// adapters are attached) and the row tensors, rows by sequence.
    fn prepare(&self, batch: &TrainBatch) -> Result<Prepared> {
        batch.check(self.cfg().vocab)?;
        let cache = self.new_cache(batch.spans.len(), batch.max_len())?;
        let b = batch.forward_rows();
        Ok(Prepared { coef: self.coef(&b)?, rows: RowTensors::new(self.gpu(), &b, Some(&batch.spans))?, cache })
    }

    /// The LM head and the summed loss over the labelled rows, in chunks; with `grad` = (dh,
    /// scale), writes the gradient of scale × the loss into dh.
    fn head_loss(&self, batch: &TrainBatch, h: &Tensor, grad: Option<(&Tensor, f32)>) -> Result<f64> {
        let gpu = self.gpu();
        let cfg = self.cfg();
        let labelled: Vec<u32> = (0..batch.rows() as u32).filter(|&i| batch.targets[i as usize] != MASKED).collect();
        let chunk = ((64usize << 20) / (4 * cfg.vocab)).clamp(1, 256);
        let mut loss = 0.0;
        for rows in labelled.chunks(chunk) {
            let c = rows.len();
            let idx = Tensor::from_u32(gpu, &[c], rows, "labelled rows")?;
            let targets: Vec<u32> = rows.iter().map(|&i| batch.targets[i as usize]).collect();
            let tt = Tensor::from_u32(gpu, &[c], &targets, "targets")?;
            let lc = Tensor::zeros(gpu, &[c], DType::F32, "loss")?;
            let mut rec = Recorder::new(gpu);
            let head = self.record_head(&mut rec, h, &idx)?;
            cross_entropy(&mut rec, &head.logits, &tt, &lc, grad.map_or(0.0, |g| g.1))?;
            if let Some((dh, _)) = grad {
                // cross_entropy left dloss/dlogits in the logits
                let t = |name: &str| Tensor::zeros(gpu, &[c, cfg.hidden], DType::F32, name);
                let (dx, dhc) = (t("dx")?, t("dh")?);
                let dl = Act::new(&head.logits, 0);
                matmul_act(&mut rec, Form::Nn, &dl, self.lm_head(), &dx, &MatmulOpts::default())?;
                rmsnorm_backward(&mut rec, &head.h, self.final_norm(), &dx, &dhc, cfg.rms_eps as f32, false)?;
                scatter(&mut rec, &dhc, &idx, dh)?;
            }
            rec.submit()?;
            loss += lc.read_f32(gpu)?.iter().map(|&x| x as f64).sum::<f64>();
        }
        Ok(loss)
    }
}
