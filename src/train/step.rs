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

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::attention::{Saved, Spans, attention, attention_backward};
use crate::kernels::cross_entropy::{MASKED, cross_entropy};
use crate::kernels::elementwise::{add_bias, copy, swiglu, swiglu_backward};
use crate::kernels::embedding::{gather, scatter};
use crate::kernels::lora::{FusedLinear, LoraGrads, LoraStack, fused_forward, lora_backward};
use crate::kernels::matmul::{Act, Form, MatmulOpts, RowCoef, matmul_act};
use crate::kernels::rmsnorm::{rmsnorm, rmsnorm_backward};
use crate::kernels::rope::{Cache, Rows, rope_backward, rope_kv};
use crate::lora::attach::{Attached, Site};
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
        self.layers[layer][site_index(site)].as_ref()
    }
}

fn site_index(site: Site) -> usize {
    Site::ALL.iter().position(|s| *s == site).expect("a site")
}

/// What one layer's forward keeps for its backward.
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

/// y (+)= x·Wᵀ (+ LoRA, writing T) (+ bias).
fn linear(
    rec: &mut Recorder,
    lin: &Linear,
    x: &Act,
    y: &Tensor,
    accumulate: bool,
    lora: Option<(&LoraStack, &Tensor, &Tensor)>,
) -> Result<()> {
    match lora {
        Some((stack, coef, t)) => {
            fused_forward(rec, &FusedLinear { w: &lin.w, lora: stack, coef, t }, x, y, accumulate, None)?
        }
        None => matmul_act(rec, Form::Nt, x, &lin.w, y, &MatmulOpts { accumulate, ..Default::default() })?,
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
    lora: Option<(&LoraStack, &Tensor, &Tensor)>,
    grads: Option<&(Tensor, Tensor)>,
    accumulate: bool,
) -> Result<()> {
    match (lora, grads) {
        (Some((stack, coef, t)), Some((da, db))) => {
            let g = Tensor::zeros(rec.gpu(), &[dy.shape()[0], stack.rp()], DType::F32, "lora g")?;
            let lg = LoraGrads { dx: Some(dx), da, db, accumulate };
            lora_backward(rec, dy, x, &lin.w, stack, coef, t, &g, &lg, None, None)
        }
        _ => matmul_act(rec, Form::Nn, &Act::new(dy, 0), &lin.w, dx, &MatmulOpts::default()),
    }
}

/// T = coef ⊙ (x·Aᵀ) of a stack, recomputed for the backward without the base product.
fn shrink(rec: &mut Recorder, x: &Tensor, stack: &LoraStack, coef: &Tensor, t: &Tensor) -> Result<()> {
    let opts = MatmulOpts { row_coef: Some(RowCoef { coef, seg: &stack.seg }), ..Default::default() };
    matmul_act(rec, Form::Nt, &Act::new(x, 0), &stack.a, t, &opts)
}

/// Runs the forward and backward of `batch`, adds each adapter's gradient of
/// `loss_scale · Σ token losses` into `grads` (set when `accumulate` is false), and returns the
/// unscaled sum of the token losses.
pub fn forward_backward(
    model: &Llama,
    batch: &TrainBatch,
    grads: &LoraGradients,
    loss_scale: f32,
    accumulate: bool,
) -> Result<f64> {
    let gpu = model.gpu();
    let cfg = &model.cfg;
    let lora =
        model.lora.as_ref().ok_or_else(|| Error::Invalid("training needs adapters attached to the model".into()))?;
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
    let coef = model.coef(&b)?.expect("adapters are attached");
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
    let mut rec = Recorder::new(gpu);
    let (saves, h_final) = forward(&mut rec, model, lora, &rt, &cache, &coef, r)?;
    rec.submit()?;
    let dh = Tensor::zeros(gpu, &[r, cfg.hidden], DType::F32, "dh")?;
    let loss = head_backward(model, batch, &h_final, &dh, loss_scale)?;
    let mut rec = Recorder::new(gpu);
    for i in (0..cfg.layers).rev() {
        layer_backward(&mut rec, model, lora, grads, i, &saves[i], &rt, &cache, &coef, &dh, accumulate)?;
    }
    rec.run()?;
    Ok(loss)
}

type Saves = (Vec<LayerSave>, Tensor);

fn forward(
    rec: &mut Recorder,
    model: &Llama,
    lora: &Attached,
    rt: &RowTensors,
    cache: &KvCache,
    coef: &Tensor,
    r: usize,
) -> Result<Saves> {
    let gpu = model.gpu();
    let cfg = &model.cfg;
    let (h, f) = (cfg.hidden, cfg.intermediate);
    let (nq, nkv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let eps = cfg.rms_eps as f32;
    let t = |shape: &[usize], name: &str| Tensor::zeros(gpu, shape, DType::F32, name);
    let rows = Rows { pos: &rt.pos, slot: &rt.slot };
    let (hs, xn, gu, act) = (t(&[r, h], "h")?, t(&[r, h], "x")?, t(&[r, 2 * f], "gate_up")?, t(&[r, f], "act")?);
    gather(rec, &model.embed, &rt.tokens, &hs)?;
    let mut saves = Vec::with_capacity(cfg.layers);
    for (i, l) in model.layers.iter().enumerate() {
        let ll = &lora.layers[i];
        let with_t = |site: Site| -> Result<Option<(&LoraStack, &Tensor, Tensor)>> {
            ll.get(site).map(|s| Ok((s, coef, t(&[r, s.rp()], "lora t")?))).transpose()
        };
        let save = LayerSave {
            h_in: t(&[r, h], "h_in")?,
            qkv: t(&[r, nq + 2 * nkv], "qkv")?,
            att: t(&[r, nq], "att")?,
            lse: t(&[r, cfg.heads], "lse")?,
        };
        copy(rec, &hs, &save.h_in)?;
        let cache_l = Cache { k: &cache.k[i], v: &cache.v[i] };
        rmsnorm(rec, &hs, &l.attn_norm, &xn, eps)?;
        let q = with_t(Site::Qkv)?;
        linear(rec, &l.qkv, &Act::new(&xn, 0), &save.qkv, false, q.as_ref().map(|(s, c, t)| (*s, *c, t)))?;
        rope_kv(rec, &save.qkv, cfg.heads, &rows, cache.rope(), &cache_l)?;
        attention(rec, &save.qkv, cfg.heads, &cache_l, &rows, &save.att, Some(&save.lse))?;
        let o = with_t(Site::O)?;
        linear(rec, &l.o, &Act::new(&save.att, 0), &hs, true, o.as_ref().map(|(s, c, t)| (*s, *c, t)))?;
        rmsnorm(rec, &hs, &l.mlp_norm, &xn, eps)?;
        let g = with_t(Site::GateUp)?;
        linear(rec, &l.gate_up, &Act::new(&xn, 0), &gu, false, g.as_ref().map(|(s, c, t)| (*s, *c, t)))?;
        swiglu(rec, &gu, &act)?;
        let d = with_t(Site::Down)?;
        linear(rec, &l.down, &Act::new(&act, 0), &hs, true, d.as_ref().map(|(s, c, t)| (*s, *c, t)))?;
        saves.push(save);
    }
    Ok((saves, hs))
}

/// The LM head and the loss over the labelled rows, in chunks; writes their gradient into dh.
fn head_backward(model: &Llama, batch: &TrainBatch, h_final: &Tensor, dh: &Tensor, loss_scale: f32) -> Result<f64> {
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
        let (dxc, dhc) = (t(&[c, cfg.hidden], "dx")?, t(&[c, cfg.hidden], "dh")?);
        let mut rec = Recorder::new(gpu);
        gather(&mut rec, h_final, &idx, &hc)?;
        rmsnorm(&mut rec, &hc, &model.norm, &xc, eps)?;
        matmul_act(&mut rec, Form::Nt, &Act::new(&xc, 0), &model.lm_head, &logits, &MatmulOpts::default())?;
        cross_entropy(&mut rec, &logits, &tt, &lc, loss_scale)?;
        matmul_act(&mut rec, Form::Nn, &Act::new(&logits, 0), &model.lm_head, &dxc, &MatmulOpts::default())?;
        rmsnorm_backward(&mut rec, &hc, &model.norm, &dxc, &dhc, eps, false)?;
        scatter(&mut rec, &dhc, &idx, dh)?;
        rec.submit()?;
        loss += lc.read_f32(gpu)?.iter().map(|&x| x as f64).sum::<f64>();
    }
    Ok(loss)
}

#[allow(clippy::too_many_arguments)]
fn layer_backward(
    rec: &mut Recorder,
    model: &Llama,
    lora: &Attached,
    grads: &LoraGradients,
    i: usize,
    save: &LayerSave,
    rt: &RowTensors,
    cache: &KvCache,
    coef: &Tensor,
    dh: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let gpu = model.gpu();
    let cfg = &model.cfg;
    let l = &model.layers[i];
    let ll = &lora.layers[i];
    let r = dh.shape()[0];
    let (h, f) = (cfg.hidden, cfg.intermediate);
    let (nq, nkv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let eps = cfg.rms_eps as f32;
    let t = |shape: &[usize], name: &str| Tensor::zeros(gpu, shape, DType::F32, name);
    let rows = Rows { pos: &rt.pos, slot: &rt.slot };
    let cache_l = Cache { k: &cache.k[i], v: &cache.v[i] };
    let tl = |site: Site| -> Result<Option<(&LoraStack, &Tensor, Tensor)>> {
        ll.get(site).map(|s| Ok((s, coef, t(&[r, s.rp()], "lora t")?))).transpose()
    };
    // recompute the layer's forward from its saved input
    let (x1, h_mid, x2, gu, act) =
        (t(&[r, h], "x1")?, t(&[r, h], "h_mid")?, t(&[r, h], "x2")?, t(&[r, 2 * f], "gu")?, t(&[r, f], "act")?);
    rmsnorm(rec, &save.h_in, &l.attn_norm, &x1, eps)?;
    let lq = tl(Site::Qkv)?;
    if let Some((s, c, tq)) = &lq {
        shrink(rec, &x1, s, c, tq)?;
    }
    copy(rec, &save.h_in, &h_mid)?;
    let lo = tl(Site::O)?;
    linear(rec, &l.o, &Act::new(&save.att, 0), &h_mid, true, lo.as_ref().map(|(s, c, t)| (*s, *c, t)))?;
    rmsnorm(rec, &h_mid, &l.mlp_norm, &x2, eps)?;
    let lg = tl(Site::GateUp)?;
    linear(rec, &l.gate_up, &Act::new(&x2, 0), &gu, false, lg.as_ref().map(|(s, c, t)| (*s, *c, t)))?;
    swiglu(rec, &gu, &act)?;
    let ld = tl(Site::Down)?;
    if let Some((s, c, td)) = &ld {
        shrink(rec, &act, s, c, td)?;
    }
    // MLP
    let dact = t(&[r, f], "dact")?;
    let grad = |site: Site| grads.get(i, site);
    linear_backward(
        rec,
        &l.down,
        &act,
        dh,
        &dact,
        ld.as_ref().map(|(s, c, t)| (*s, *c, t)),
        grad(Site::Down),
        accumulate,
    )?;
    let dgu = t(&[r, 2 * f], "dgu")?;
    swiglu_backward(rec, &gu, &dact, &dgu)?;
    let dx2 = t(&[r, h], "dx2")?;
    linear_backward(
        rec,
        &l.gate_up,
        &x2,
        &dgu,
        &dx2,
        lg.as_ref().map(|(s, c, t)| (*s, *c, t)),
        grad(Site::GateUp),
        accumulate,
    )?;
    rmsnorm_backward(rec, &h_mid, &l.mlp_norm, &dx2, dh, eps, true)?;
    // attention
    let datt = t(&[r, nq], "datt")?;
    linear_backward(
        rec,
        &l.o,
        &save.att,
        dh,
        &datt,
        lo.as_ref().map(|(s, c, t)| (*s, *c, t)),
        grad(Site::O),
        accumulate,
    )?;
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
    linear_backward(
        rec,
        &l.qkv,
        &x1,
        &dqkv,
        &dx1,
        lq.as_ref().map(|(s, c, t)| (*s, *c, t)),
        grad(Site::Qkv),
        accumulate,
    )?;
    rmsnorm_backward(rec, &save.h_in, &l.attn_norm, &dx1, dh, eps, true)
}
