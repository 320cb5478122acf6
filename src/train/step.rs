//! One training step's forward and backward through the model with the base frozen: only the
//! attached LoRA adapters get gradients.
//!
//! Memory: per layer the forward keeps its input h, the rotated q/k/v, the attention output and
//! its log-sum-exp (the KV cache keeps k and v); the backward recomputes the rest of the layer
//! (norms, the MLP, each adapter's T) from those, so activations cost ~(2·hidden + q/k/v width)
//! floats a token a layer instead of ~(6·hidden + 3·FFN). The LM head and the loss run over the
//! rows that carry a label only, in chunks of at most 64 MiB of logits.
//!
//! The layer's backward, with dh the gradient of its output:
//!   dact = dh·W_down (+ LoRA)          dgu = swiglu'(gu, dact)       dx2 = dgu·W_gu (+ LoRA)
//!   dh  += rmsnorm'(h_mid, dx2)        datt = dh·W_o (+ LoRA)        dqkv = attention'(datt)
//!   dqkv = rope'(dqkv)                 dx1 = dqkv·W_qkv (+ LoRA)      dh += rmsnorm'(h_in, dx1)
//!
//! LoRA dropout (PEFT's: on the adapter's input only, the base product sees x itself) draws its
//! mask from a seed per (step, micro-batch, layer, stacked layer), so the backward's recompute
//! regenerates it and nothing is stored. PEFT draws one mask per target module; here targets
//! sharing a stacked layer (q and v) share their token's mask: the same distribution per target,
//! only correlated between q and v. With mask M and x̃ = x ⊙ M/(1−p):
//!   T = coef ⊙ (x̃·Aᵀ)     dA = Gᵀ·x̃     dB = dYᵀ·T     dx = dY·W + (G·A) ⊙ M/(1−p)

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::attention::{Saved, Spans, attention, attention_backward};
use crate::kernels::cross_entropy::{MASKED, cross_entropy};
use crate::kernels::dropout::{Dropout, dropout};
use crate::kernels::elementwise::{add_bias, copy, swiglu, swiglu_backward};
use crate::kernels::embedding::{gather, scatter};
use crate::kernels::lora::{FusedLinear, LoraGrads, LoraStack, fused_forward_split, lora_backward};
use crate::kernels::matmul::{Act, Form, MatmulOpts, RowCoef, matmul_act};
use crate::kernels::rmsnorm::{rmsnorm, rmsnorm_backward};
use crate::kernels::rope::{Cache, Rows, rope_backward, rope_kv};
use crate::lora::attach::{Attached, LayerLora, Site};
use crate::model::llama::{Batch, KvCache, Linear, Llama};

/// Sequences of a training step, their rows together: sequence s is rows spans[s].0 ..
/// spans[s].0 + spans[s].1 at positions 0.. in cache slot s. `targets[r]` is the token row r
/// should predict, or MASKED (no loss: prompts, padding).
#[derive(Clone, Debug, Default)]
pub struct TrainBatch {
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
    pub spans: Vec<(usize, usize)>,
}

impl TrainBatch {
    /// Appends a sequence: `tokens` with its `targets` (same length).
    pub fn push(&mut self, tokens: &[u32], targets: &[u32]) {
        self.spans.push((self.tokens.len(), tokens.len()));
        self.tokens.extend_from_slice(tokens);
        self.targets.extend_from_slice(targets);
    }

    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// Rows that count in the loss.
    pub fn counted(&self) -> usize {
        self.targets.iter().filter(|&&t| t != MASKED).count()
    }
}

/// dA and dB of every adapter stack of the model (shaped like the stacks' A and B).
pub struct LoraGradients {
    pub layers: Vec<[Option<(Tensor, Tensor)>; 4]>,
}

impl LoraGradients {
    pub fn new(gpu: &Gpu, attached: &Attached) -> Result<LoraGradients> {
        let layers = attached
            .layers
            .iter()
            .map(|l| {
                Site::ALL.map(|site| {
                    l.get(site).map(|s| {
                        let a = s.a_buf.shape().to_vec();
                        let b = s.b_buf.shape().to_vec();
                        (Tensor::zeros(gpu, &a, DType::F32, "dA"), Tensor::zeros(gpu, &b, DType::F32, "dB"))
                    })
                })
            })
            .map(|arr| {
                arr.into_iter()
                    .map(|o| o.map(|(a, b)| Ok((a?, b?))).transpose())
                    .collect::<Result<Vec<_>>>()
                    .map(|v| <[Option<(Tensor, Tensor)>; 4]>::try_from(v).expect("four sites"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LoraGradients { layers })
    }

    pub fn get(&self, layer: usize, site: Site) -> Option<&(Tensor, Tensor)> {
        self.layers[layer][site.index()].as_ref()
    }
}

/// What one layer's forward keeps for its backward.
#[derive(Clone)]
struct LayerSave {
    h_in: Tensor,
    qkv: Tensor,
    att: Tensor,
    lse: Tensor,
}

/// The row tensors of a batch on the GPU.
struct RowTensors {
    tokens: Tensor,
    pos: Tensor,
    slot: Tensor,
    seq_start: Tensor,
    seq_len: Tensor,
}

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

/// The adapters of one stacked linear in this pass: their stack, coefficients, the T the
/// forward writes, and the dropped-out input with its mask when dropout is on.
struct SiteLora<'a> {
    stack: &'a LoraStack,
    coef: &'a Tensor,
    t: Tensor,
    drop: Option<(Dropout, Tensor)>,
}

impl SiteLora<'_> {
    /// The adapters' input: x̃ with dropout, else x.
    fn input<'x>(&'x self, x: &'x Tensor) -> &'x Tensor {
        self.drop.as_ref().map_or(x, |d| &d.1)
    }
}

/// The adapters of layer `layer` at `site` for the input `x` (recorded after x is), dropping
/// out x with this site's mask when asked.
fn site_lora<'a>(
    rec: &mut Recorder,
    lora: Option<(&'a LayerLora, &'a Tensor)>,
    layer: usize,
    site: Site,
    x: &Tensor,
    drop: Option<Dropout>,
) -> Result<Option<SiteLora<'a>>> {
    let Some((stack, coef)) = lora.and_then(|(ll, coef)| Some((ll.get(site)?, coef))) else { return Ok(None) };
    let r = x.shape()[0];
    let t = Tensor::zeros(rec.gpu(), &[r, stack.rp()], DType::F32, "lora t")?;
    let drop = match drop {
        Some(d) if d.p > 0.0 => {
            let d = d.stream((layer * Site::ALL.len() + site.index()) as u64);
            let xd = Tensor::zeros(rec.gpu(), x.shape(), DType::F32, "lora x dropped")?;
            dropout(rec, &d, x, &xd, false)?;
            Some((d, xd))
        }
        _ => None,
    };
    Ok(Some(SiteLora { stack, coef, t, drop }))
}

/// y (+)= x·Wᵀ (+ LoRA, writing T) (+ bias).
fn linear(
    rec: &mut Recorder,
    lin: &Linear,
    x: &Tensor,
    y: &Tensor,
    accumulate: bool,
    lora: Option<&SiteLora>,
) -> Result<()> {
    let xa = Act::new(x, 0);
    match lora {
        Some(sl) => {
            let f = FusedLinear { w: &lin.w, lora: sl.stack, coef: sl.coef, t: &sl.t };
            let xd = sl.drop.as_ref().map(|d| Act::new(&d.1, 1));
            fused_forward_split(rec, &f, &xa, xd.as_ref(), y, accumulate, None)?
        }
        None => matmul_act(rec, Form::Nt, &xa, &lin.w, y, &MatmulOpts { accumulate, ..Default::default() })?,
    }
    if let Some(b) = &lin.bias {
        add_bias(rec, y, b)?;
    }
    Ok(())
}

/// dx = dy·W (+ the LoRA gradients into `grads`, accumulating when asked).
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    rec: &mut Recorder,
    lin: &Linear,
    x: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    lora: Option<&SiteLora>,
    grads: Option<&(Tensor, Tensor)>,
    accumulate: bool,
) -> Result<()> {
    let dya = Act::new(dy, 0);
    let (Some(sl), Some((da, db))) = (lora, grads) else {
        return matmul_act(rec, Form::Nn, &dya, &lin.w, dx, &MatmulOpts::default());
    };
    let g = Tensor::zeros(rec.gpu(), &[dy.shape()[0], sl.stack.rp()], DType::F32, "lora g")?;
    match &sl.drop {
        None => {
            let lg = LoraGrads { dx: Some(dx), da, db, accumulate };
            lora_backward(rec, dy, x, &lin.w, sl.stack, sl.coef, &sl.t, &g, &lg, None, None)
        }
        Some((d, xd)) => {
            let lg = LoraGrads { dx: None, da, db, accumulate };
            lora_backward(rec, dy, xd, &lin.w, sl.stack, sl.coef, &sl.t, &g, &lg, None, None)?;
            matmul_act(rec, Form::Nn, &dya, &lin.w, dx, &MatmulOpts::default())?;
            let ga = Tensor::zeros(rec.gpu(), dx.shape(), DType::F32, "lora G·A")?;
            matmul_act(rec, Form::Nn, &Act::new(&g, 0), &sl.stack.a, &ga, &MatmulOpts::default())?;
            dropout(rec, d, &ga, dx, true)
        }
    }
}

/// T = coef ⊙ (x·Aᵀ) of a stack (x̃ with dropout), recomputed for the backward without the
/// base product.
fn shrink(rec: &mut Recorder, x: &Tensor, sl: &SiteLora) -> Result<()> {
    let opts = MatmulOpts { row_coef: Some(RowCoef { coef: sl.coef, seg: &sl.stack.seg }), ..Default::default() };
    matmul_act(rec, Form::Nt, &Act::new(sl.input(x), 0), &sl.stack.a, &sl.t, &opts)
}

/// Runs the forward and backward of `batch`, writes (or, with `opts.accumulate`, adds) each
/// adapter's gradient of `opts.loss_scale · Σ token losses` into `grads`, and returns the
/// unscaled sum of the token losses.
pub fn forward_backward(model: &Llama, batch: &TrainBatch, grads: &LoraGradients, opts: &StepOptions) -> Result<f64> {
    let gpu = model.gpu();
    let cfg = &model.cfg;
    let lora =
        model.lora.as_ref().ok_or_else(|| Error::Invalid("training needs adapters attached to the model".into()))?;
    let (cache, coef, rt) = prepare(model, batch)?;
    let coef = coef.expect("adapters are attached");
    let r = batch.rows();
    let mut rec = Recorder::new(gpu);
    let (saves, h_final) = forward(&mut rec, model, Some((lora, &coef)), &rt, &cache, opts.dropout, true)?;
    rec.submit()?;
    let dh = Tensor::zeros(gpu, &[r, cfg.hidden], DType::F32, "dh")?;
    let loss = head(model, batch, &h_final, Some((&dh, opts.loss_scale)))?;
    // one submission a layer, so its recomputed activations are freed as the next one starts
    for i in (0..cfg.layers).rev() {
        let mut rec = Recorder::new(gpu);
        let ctx = Ctx { model, lora, rt: &rt, cache: &cache, coef: &coef, opts };
        layer_backward(&mut rec, &ctx, grads, i, &saves[i], &dh)?;
        rec.submit()?;
    }
    gpu.wait()?;
    Ok(loss)
}

/// The summed loss of the labelled tokens of `batch` (no gradients, no dropout), with the
/// adapters attached to the model at their weights, or the base model without any.
pub fn eval_loss(model: &Llama, batch: &TrainBatch) -> Result<f64> {
    let (cache, coef, rt) = prepare(model, batch)?;
    let lora = model.lora.as_ref().zip(coef.as_ref());
    let mut rec = Recorder::new(model.gpu());
    let (_, h_final) = forward(&mut rec, model, lora, &rt, &cache, None, false)?;
    rec.submit()?;
    head(model, batch, &h_final, None)
}

/// Checks a batch and lays it out on the GPU: its KV cache, the adapters' row coefficients
/// (when adapters are attached) and the row tensors.
fn prepare(model: &Llama, batch: &TrainBatch) -> Result<(KvCache, Option<Tensor>, RowTensors)> {
    let gpu = model.gpu();
    let cfg = &model.cfg;
    let r = batch.rows();
    if r == 0 || batch.targets.len() != r || batch.spans.iter().map(|s| s.1).sum::<usize>() != r {
        return Err(Error::Invalid(format!(
            "a training batch of {r} tokens, {} targets, spans {:?}",
            batch.targets.len(),
            batch.spans
        )));
    }
    if let Some(&t) = batch.targets.iter().find(|&&t| t != MASKED && t as usize >= cfg.vocab) {
        return Err(Error::Invalid(format!("target {t} is outside the vocabulary of {}", cfg.vocab)));
    }
    let max_len = batch.spans.iter().map(|s| s.1).max().unwrap_or(1);
    let cache = model.new_cache(batch.spans.len(), max_len)?;
    // the forward as generation runs it, rows laid out by sequence
    let mut b = Batch::default();
    for (s, &(start, len)) in batch.spans.iter().enumerate() {
        b.push_sequence(s as u32, 0, &batch.tokens[start..start + len], false);
    }
    b.logits_rows = vec![0];
    let coef = model.coef(&b)?;
    let rt = RowTensors {
        tokens: Tensor::from_u32(gpu, &[r], &b.tokens, "tokens")?,
        pos: Tensor::from_u32(gpu, &[r], &b.positions, "positions")?,
        slot: Tensor::from_u32(gpu, &[r], &b.slots, "slots")?,
        seq_start: Tensor::from_u32(
            gpu,
            &[batch.spans.len()],
            &batch.spans.iter().map(|s| s.0 as u32).collect::<Vec<_>>(),
            "seq start",
        )?,
        seq_len: Tensor::from_u32(
            gpu,
            &[batch.spans.len()],
            &batch.spans.iter().map(|s| s.1 as u32).collect::<Vec<_>>(),
            "seq len",
        )?,
    };
    Ok((cache, coef, rt))
}

type Saves = (Vec<LayerSave>, Tensor);

/// The body of the model over the batch; keeps each layer's saves for the backward when `keep`.
fn forward(
    rec: &mut Recorder,
    model: &Llama,
    lora: Option<(&Attached, &Tensor)>,
    rt: &RowTensors,
    cache: &KvCache,
    drop: Option<Dropout>,
    keep: bool,
) -> Result<Saves> {
    let gpu = model.gpu();
    let cfg = &model.cfg;
    let r = rt.tokens.numel();
    let (h, f) = (cfg.hidden, cfg.intermediate);
    let (nq, nkv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let eps = cfg.rms_eps as f32;
    let t = |shape: &[usize], name: &str| Tensor::zeros(gpu, shape, DType::F32, name);
    let rows = Rows { pos: &rt.pos, slot: &rt.slot };
    let (hs, xn, gu, act) = (t(&[r, h], "h")?, t(&[r, h], "x")?, t(&[r, 2 * f], "gate_up")?, t(&[r, f], "act")?);
    gather(rec, &model.embed, &rt.tokens, &hs)?;
    let mut saves = Vec::with_capacity(cfg.layers);
    let new_save = || -> Result<LayerSave> {
        Ok(LayerSave {
            h_in: t(&[r, h], "h_in")?,
            qkv: t(&[r, nq + 2 * nkv], "qkv")?,
            att: t(&[r, nq], "att")?,
            lse: t(&[r, cfg.heads], "lse")?,
        })
    };
    let scratch = if keep { None } else { Some(new_save()?) };
    for (i, l) in model.layers.iter().enumerate() {
        let ll = lora.map(|(a, coef)| (&a.layers[i], coef));
        let save = match &scratch {
            Some(s) => s.clone(),
            None => new_save()?,
        };
        if keep {
            copy(rec, &hs, &save.h_in)?;
        }
        let cache_l = Cache { k: &cache.k[i], v: &cache.v[i] };
        rmsnorm(rec, &hs, &l.attn_norm, &xn, eps)?;
        let q = site_lora(rec, ll, i, Site::Qkv, &xn, drop)?;
        linear(rec, &l.qkv, &xn, &save.qkv, false, q.as_ref())?;
        rope_kv(rec, &save.qkv, cfg.heads, &rows, cache.rope(), &cache_l)?;
        attention(rec, &save.qkv, cfg.heads, &cache_l, &rows, &save.att, Some(&save.lse))?;
        let o = site_lora(rec, ll, i, Site::O, &save.att, drop)?;
        linear(rec, &l.o, &save.att, &hs, true, o.as_ref())?;
        rmsnorm(rec, &hs, &l.mlp_norm, &xn, eps)?;
        let g = site_lora(rec, ll, i, Site::GateUp, &xn, drop)?;
        linear(rec, &l.gate_up, &xn, &gu, false, g.as_ref())?;
        swiglu(rec, &gu, &act)?;
        let d = site_lora(rec, ll, i, Site::Down, &act, drop)?;
        linear(rec, &l.down, &act, &hs, true, d.as_ref())?;
        if keep {
            saves.push(save);
        }
    }
    Ok((saves, hs))
}

/// The LM head and the summed loss over the labelled rows, in chunks; with `grad` = (dh, scale),
/// writes the gradient of scale × the loss into dh.
fn head(model: &Llama, batch: &TrainBatch, h_final: &Tensor, grad: Option<(&Tensor, f32)>) -> Result<f64> {
    let gpu = model.gpu();
    let cfg = &model.cfg;
    let eps = cfg.rms_eps as f32;
    let labelled: Vec<u32> = (0..batch.rows() as u32).filter(|&i| batch.targets[i as usize] != MASKED).collect();
    let chunk = ((64usize << 20) / (4 * cfg.vocab)).clamp(1, 256);
    let mut loss = 0.0;
    for rows in labelled.chunks(chunk) {
        let c = rows.len();
        let t = |shape: &[usize], name: &str| Tensor::zeros(gpu, shape, DType::F32, name);
        let idx = Tensor::from_u32(gpu, &[c], rows, "labelled rows")?;
        let targets: Vec<u32> = rows.iter().map(|&i| batch.targets[i as usize]).collect();
        let tt = Tensor::from_u32(gpu, &[c], &targets, "targets")?;
        let (hc, xc, logits, lc) =
            (t(&[c, cfg.hidden], "h")?, t(&[c, cfg.hidden], "x")?, t(&[c, cfg.vocab], "logits")?, t(&[c], "loss")?);
        let mut rec = Recorder::new(gpu);
        gather(&mut rec, h_final, &idx, &hc)?;
        rmsnorm(&mut rec, &hc, &model.norm, &xc, eps)?;
        matmul_act(&mut rec, Form::Nt, &Act::new(&xc, 0), &model.lm_head, &logits, &MatmulOpts::default())?;
        cross_entropy(&mut rec, &logits, &tt, &lc, grad.map_or(0.0, |g| g.1))?;
        if let Some((dh, _)) = grad {
            let (dxc, dhc) = (t(&[c, cfg.hidden], "dx")?, t(&[c, cfg.hidden], "dh")?);
            matmul_act(&mut rec, Form::Nn, &Act::new(&logits, 0), &model.lm_head, &dxc, &MatmulOpts::default())?;
            rmsnorm_backward(&mut rec, &hc, &model.norm, &dxc, &dhc, eps, false)?;
            scatter(&mut rec, &dhc, &idx, dh)?;
        }
        rec.submit()?;
        loss += lc.read_f32(gpu)?.iter().map(|&x| x as f64).sum::<f64>();
    }
    Ok(loss)
}

/// What every layer's backward shares.
struct Ctx<'a> {
    model: &'a Llama,
    lora: &'a Attached,
    rt: &'a RowTensors,
    cache: &'a KvCache,
    coef: &'a Tensor,
    opts: &'a StepOptions,
}

fn layer_backward(
    rec: &mut Recorder,
    ctx: &Ctx,
    grads: &LoraGradients,
    i: usize,
    save: &LayerSave,
    dh: &Tensor,
) -> Result<()> {
    let (model, rt, cache, coef) = (ctx.model, ctx.rt, ctx.cache, ctx.coef);
    let (drop, accumulate) = (ctx.opts.dropout, ctx.opts.accumulate);
    let gpu = model.gpu();
    let cfg = &model.cfg;
    let l = &model.layers[i];
    let ll = Some((&ctx.lora.layers[i], coef));
    let r = dh.shape()[0];
    let (h, f) = (cfg.hidden, cfg.intermediate);
    let (nq, nkv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let eps = cfg.rms_eps as f32;
    let t = |shape: &[usize], name: &str| Tensor::zeros(gpu, shape, DType::F32, name);
    let rows = Rows { pos: &rt.pos, slot: &rt.slot };
    let cache_l = Cache { k: &cache.k[i], v: &cache.v[i] };
    // recompute the layer's forward from its saved input (the same dropout masks: same seeds)
    let (x1, h_mid, x2, gu, act) =
        (t(&[r, h], "x1")?, t(&[r, h], "h_mid")?, t(&[r, h], "x2")?, t(&[r, 2 * f], "gu")?, t(&[r, f], "act")?);
    rmsnorm(rec, &save.h_in, &l.attn_norm, &x1, eps)?;
    let lq = site_lora(rec, ll, i, Site::Qkv, &x1, drop)?;
    if let Some(sl) = &lq {
        shrink(rec, &x1, sl)?;
    }
    copy(rec, &save.h_in, &h_mid)?;
    let lo = site_lora(rec, ll, i, Site::O, &save.att, drop)?;
    linear(rec, &l.o, &save.att, &h_mid, true, lo.as_ref())?;
    rmsnorm(rec, &h_mid, &l.mlp_norm, &x2, eps)?;
    let lg = site_lora(rec, ll, i, Site::GateUp, &x2, drop)?;
    linear(rec, &l.gate_up, &x2, &gu, false, lg.as_ref())?;
    swiglu(rec, &gu, &act)?;
    let ld = site_lora(rec, ll, i, Site::Down, &act, drop)?;
    if let Some(sl) = &ld {
        shrink(rec, &act, sl)?;
    }
    // MLP
    let grad = |site: Site| grads.get(i, site);
    let dact = t(&[r, f], "dact")?;
    linear_backward(rec, &l.down, &act, dh, &dact, ld.as_ref(), grad(Site::Down), accumulate)?;
    let dgu = t(&[r, 2 * f], "dgu")?;
    swiglu_backward(rec, &gu, &dact, &dgu)?;
    let dx2 = t(&[r, h], "dx2")?;
    linear_backward(rec, &l.gate_up, &x2, &dgu, &dx2, lg.as_ref(), grad(Site::GateUp), accumulate)?;
    rmsnorm_backward(rec, &h_mid, &l.mlp_norm, &dx2, dh, eps, true)?;
    // attention
    let datt = t(&[r, nq], "datt")?;
    linear_backward(rec, &l.o, &save.att, dh, &datt, lo.as_ref(), grad(Site::O), accumulate)?;
    let (dqkv, dsum) = (t(&[r, nq + 2 * nkv], "dqkv")?, t(&[r, cfg.heads], "dsum")?);
    let spans = Spans { start: &rt.seq_start, len: &rt.seq_len };
    attention_backward(
        rec,
        &save.qkv,
        cfg.heads,
        &cache_l,
        &rows,
        &spans,
        &Saved { out: &save.att, lse: &save.lse },
        &datt,
        &dqkv,
        &dsum,
    )?;
    rope_backward(rec, &dqkv, cfg.heads, cfg.kv_heads, &rt.pos, cache.rope())?;
    let dx1 = t(&[r, h], "dx1")?;
    linear_backward(rec, &l.qkv, &x1, &dqkv, &dx1, lq.as_ref(), grad(Site::Qkv), accumulate)?;
    rmsnorm_backward(rec, &save.h_in, &l.attn_norm, &dx1, dh, eps, true)
}
