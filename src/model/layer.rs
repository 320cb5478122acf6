//! One Llama layer: its weights, its forward as the paper's equations, and its backward beside
//! it, read as the forward in reverse (as llm.c's train_gpt2.c does). The forward serves
//! generation, scoring and training alike; the backward takes the base as frozen, so only the
//! attached adapters get gradients.
//!
//!   forward   x1 = rmsnorm(h);  qkv = x1·[Wq; Wk; Wv]ᵀ (+ LoRA, + bias);  rope(q, k) → cache
//!             att = attention(q, cache);  h += att·Woᵀ (+ LoRA)                  (h is now h_mid)
//!             x2 = rmsnorm(h);  gu = x2·[Wg; Wu]ᵀ (+ LoRA);  act = silu(g) ⊙ u
//!             h += act·Wdᵀ (+ LoRA)
//!   backward  (dh, the gradient of the layer's output, is updated in place)
//!             dact = dh·Wd (+ LoRA)        dgu = swiglu'(gu, dact)     dx2 = dgu·Wgu (+ LoRA)
//!             dh += rmsnorm'(h_mid, dx2)   datt = dh·Wo (+ LoRA)       dqkv = attention'(datt)
//!             dqkv = rope'(dqkv)           dx1 = dqkv·Wqkv (+ LoRA)    dh += rmsnorm'(h_in, dx1)
//!
//! q, k and v (and gate and up) are one matmul over the stacked weights: each launch costs tens
//! of microseconds on lavapipe whatever its size, and a decode step is made of small products.
//!
//! Memory: a training forward keeps per layer its input h_in, the rotated q/k/v, the attention
//! output and its log-sum-exp (the KV cache keeps k and v); the backward recomputes the rest of
//! the layer (x1, h_mid, x2, gu, act and each adapter's T) with the forward's own steps, so
//! activations cost ~(2·hidden + q/k/v width) floats a token a layer instead of ~(6·hidden + 3·FFN).
//!
//! LoRA dropout (PEFT's: on the adapter's input only, the base product sees x itself) draws its
//! mask from a seed per (step, micro-batch, layer, stacked layer), so the recompute regenerates
//! it and nothing is stored. PEFT draws one mask per target module; here targets sharing a
//! stacked layer (q and v) share their token's mask: the same distribution per target, only
//! correlated between q and v. With mask M and x̃ = x ⊙ M/(1−p):
//!   T = coef ⊙ (x̃·Aᵀ)     dA = Gᵀ·x̃     dB = dYᵀ·T     dx = dY·W + (G·A) ⊙ M/(1−p)

use crate::error::{Error, Result};
use crate::gpu::{DType, Matrix, Recorder, Tensor};
use crate::kernels::attention::{Attention, Saved, Spans, attention, attention_backward};
use crate::kernels::dropout::{Dropout, dropout};
use crate::kernels::elementwise::{add_bias, copy, swiglu_backward};
use crate::kernels::lora::{
    FusedLinear, LoraGrads, LoraStack, SeqAdapter, Sequential, fused_forward, lora_backward, lora_sequential,
};
use crate::kernels::matmul::{Act, Form, MatmulOpts, RowCoef, matmul_act};
use crate::kernels::rmsnorm::{rmsnorm, rmsnorm_backward};
use crate::kernels::rope::{Rows, rope_backward, rope_kv};
use crate::lora::attach::{Attached, Site};
use crate::model::config::LlamaConfig;
use crate::model::llama::KvCache;

/// A linear layer y = x·Wᵀ (+ b), W [out, in] in Hugging Face layout.
pub struct Linear {
    pub(super) w: Matrix,
    pub(super) bias: Option<Tensor>,
}

pub struct Layer {
    pub(super) attn_norm: Tensor,
    /// q_proj, k_proj and v_proj stacked: [(H + 2G)·d, hidden].
    pub(super) qkv: Linear,
    pub(super) o: Linear,
    pub(super) mlp_norm: Tensor,
    /// gate_proj and up_proj stacked: [2·intermediate, hidden].
    pub(super) gate_up: Linear,
    pub(super) down: Linear,
}

/// The adapters of a pass.
pub(super) enum PassLora<'a> {
    None,
    /// Every attached adapter through the fused kernel, at the rows' coefficients [R, n].
    Fused {
        attached: &'a Attached,
        coef: &'a Tensor,
    },
    /// One after another after the base product, each its own stack at weight × scale: the
    /// baseline that `bench fuse` compares the fused kernel with.
    Sequential(&'a [(Attached, f32)]),
}

/// What every layer of one pass shares.
pub(super) struct Pass<'a> {
    pub cfg: &'a LlamaConfig,
    pub rows: Rows<'a>,
    /// Where each sequence's rows are: a training pass, for attention's backward.
    pub spans: Option<Spans<'a>>,
    pub cache: &'a KvCache,
    /// No slot has two rows (RowTensors::distinct_slots): RoPE and the cache store run inside
    /// attention.
    pub distinct_slots: bool,
    pub lora: PassLora<'a>,
    /// LoRA dropout: probability and this micro-batch's seed (training only).
    pub dropout: Option<Dropout>,
}

/// The adapters of one stacked linear in a pass.
pub(super) enum SiteLora<'a> {
    None,
    /// The fused stack, its rows' coefficients, the T [R, Rp] the forward writes, and the
    /// dropped-out input with its mask when dropout is on.
    Fused {
        stack: &'a LoraStack,
        coef: &'a Tensor,
        t: Tensor,
        drop: Option<(Dropout, Tensor)>,
    },
    Sequential(Vec<(&'a LoraStack, f32)>),
}

impl Pass<'_> {
    /// The adapters of layer `layer` at `site` for the input `x` (recorded after x is),
    /// dropping x out with this site's mask when the pass drops out.
    fn site(&self, rec: &mut Recorder, layer: usize, site: Site, x: &Act) -> Result<SiteLora<'_>> {
        match &self.lora {
            PassLora::None => Ok(SiteLora::None),
            PassLora::Sequential(all) => Ok(SiteLora::Sequential(
                all.iter().filter_map(|(a, c)| Some((a.layers[layer].get(site)?, *c))).collect(),
            )),
            PassLora::Fused { attached, coef } => {
                let Some(stack) = attached.layers[layer].get(site) else { return Ok(SiteLora::None) };
                let t = Tensor::zeros(rec.gpu(), &[x.rows()?, stack.rp()], DType::F32, "lora t")?;
                let drop = match self.dropout {
                    Some(d) if d.p > 0.0 => {
                        let d = d.stream((layer * Site::ALL.len() + site.index()) as u64);
                        let x = x.value(rec)?.clone();
                        let xd = Tensor::zeros(rec.gpu(), x.shape(), DType::F32, "lora x dropped")?;
                        dropout(rec, &d, &x, &xd, false)?;
                        Some((d, xd))
                    }
                    _ => None,
                };
                Ok(SiteLora::Fused { stack, coef, t, drop })
            }
        }
    }

    fn eps(&self) -> f32 {
        self.cfg.rms_eps as f32
    }
}

impl SiteLora<'_> {
    /// T = coef ⊙ (x·Aᵀ) (x̃ with dropout) alone, without the base product: the backward's
    /// recompute of a site whose output it does not need.
    fn shrink(&self, rec: &mut Recorder, x: &Tensor) -> Result<()> {
        let SiteLora::Fused { stack, coef, t, drop } = self else { return Ok(()) };
        let opts = MatmulOpts { row_coef: Some(RowCoef { coef, seg: &stack.seg }), ..Default::default() };
        let input = drop.as_ref().map_or(x, |d| &d.1);
        matmul_act(rec, Form::Nt, &Act::new(input, 0), &stack.a, t, &opts)
    }
}

/// Where a site's adapter gradients go: dA, dB, added to when `accumulate`.
pub(super) struct SiteGrads<'a> {
    pub da: &'a Tensor,
    pub db: &'a Tensor,
    pub accumulate: bool,
}

impl Linear {
    /// y (+)= x·Wᵀ plus the adapters' term (+ b).
    fn forward(&self, rec: &mut Recorder, x: &Act, y: &Tensor, accumulate: bool, lora: &SiteLora) -> Result<()> {
        let base = MatmulOpts { accumulate, ..Default::default() };
        match lora {
            SiteLora::None => matmul_act(rec, Form::Nt, x, &self.w, y, &base)?,
            SiteLora::Fused { stack, coef, t, drop } => {
                let f = FusedLinear { w: &self.w, lora: stack, coef, t };
                let dropped = drop.as_ref().map(|d| Act::new(&d.1, 1));
                fused_forward(rec, &f, x, dropped.as_ref(), y, &base)?
            }
            SiteLora::Sequential(stacks) => {
                let adapters: Vec<SeqAdapter> =
                    stacks.iter().map(|(s, c)| SeqAdapter { a: &s.a, b: &s.b, weight: *c }).collect();
                let rows = y.shape()[0];
                let ts = (stacks.iter())
                    .map(|(s, _)| Tensor::zeros(rec.gpu(), &[rows, s.rp()], DType::F32, "lora t"))
                    .collect::<Result<Vec<_>>>()?;
                let seq = Sequential { w: &self.w, adapters: &adapters, ts: &ts, accumulate };
                let xv = x.value(rec)?.clone();
                lora_sequential(rec, &seq, &xv, y)?
            }
        }
        if let Some(b) = &self.bias {
            add_bias(rec, y, b)?;
        }
        Ok(())
    }

    /// dx = dy·W, plus the adapters' gradients into `grads` (x is the forward's input).
    fn backward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        lora: &SiteLora,
        grads: Option<SiteGrads>,
    ) -> Result<()> {
        let dya = Act::new(dy, 0);
        let (SiteLora::Fused { stack, coef, t, drop }, Some(gr)) = (lora, grads) else {
            if matches!(lora, SiteLora::Sequential(_)) {
                return Err(Error::Invalid("sequentially applied adapters have no backward".into()));
            }
            return matmul_act(rec, Form::Nn, &dya, &self.w, dx, &MatmulOpts::default());
        };
        let f = FusedLinear { w: &self.w, lora: stack, coef, t };
        let g = Tensor::zeros(rec.gpu(), &[dy.shape()[0], stack.rp()], DType::F32, "lora g")?;
        let lg = |dx| LoraGrads { dx, da: gr.da, db: gr.db, g: &g, accumulate: gr.accumulate };
        match drop {
            None => lora_backward(rec, &f, dy, x, &lg(Some(dx)), None, None),
            Some((d, xd)) => {
                lora_backward(rec, &f, dy, xd, &lg(None), None, None)?;
                matmul_act(rec, Form::Nn, &dya, &self.w, dx, &MatmulOpts::default())?;
                let ga = Tensor::zeros(rec.gpu(), dx.shape(), DType::F32, "lora G·A")?;
                matmul_act(rec, Form::Nn, &Act::new(&g, 0), &stack.a, &ga, &MatmulOpts::default())?;
                dropout(rec, d, &ga, dx, true)
            }
        }
    }
}

/// The scratch activations of a layer's forward: x (x1, then x2), gu and act, shared by every
/// layer of a pass.
pub(super) struct Scratch {
    pub x: Tensor,
    pub gu: Tensor,
    pub act: Tensor,
}

impl Scratch {
    pub fn new(rec: &Recorder, cfg: &LlamaConfig, rows: usize) -> Result<Scratch> {
        let t = |shape: &[usize], name: &str| Tensor::zeros(rec.gpu(), shape, DType::F32, name);
        let (h, f) = (cfg.hidden, cfg.intermediate);
        Ok(Scratch { x: t(&[rows, h], "x")?, gu: t(&[rows, 2 * f], "gate_up")?, act: t(&[rows, f], "act")? })
    }
}

/// Attention's results: the rotated q/k/v [R, (H + 2G)·d], the output [R, H·d] and, when a
/// backward will read them, the log-sum-exps [R, H].
#[derive(Clone)]
pub(super) struct AttnActs {
    pub qkv: Tensor,
    pub att: Tensor,
    pub lse: Option<Tensor>,
}

impl AttnActs {
    pub fn new(rec: &Recorder, cfg: &LlamaConfig, rows: usize, lse: bool) -> Result<AttnActs> {
        let t = |shape: &[usize], name: &str| Tensor::zeros(rec.gpu(), shape, DType::F32, name);
        let (nq, nkv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        Ok(AttnActs {
            qkv: t(&[rows, nq + 2 * nkv], "qkv")?,
            att: t(&[rows, nq], "attn")?,
            lse: if lse { Some(t(&[rows, cfg.heads], "lse")?) } else { None },
        })
    }
}

/// What a training forward keeps of a layer for its backward.
pub(super) struct LayerSave {
    pub h_in: Tensor,
    pub attn: AttnActs,
}

impl Layer {
    /// The layer's forward on h [R, hidden], in place; `attn` receives attention's results (a
    /// training forward gives each layer its own, for the backward).
    pub(super) fn forward(
        &self,
        rec: &mut Recorder,
        p: &Pass,
        i: usize,
        h: &Tensor,
        s: &Scratch,
        attn: &AttnActs,
    ) -> Result<()> {
        self.attend(rec, p, i, &Act::normed(h, &self.attn_norm, p.eps(), &s.x, 0), attn)?;
        self.attn_out(rec, p, i, &attn.att, h)?;
        let (_, act) = self.mlp_in(rec, p, i, h, s, false)?;
        let ld = p.site(rec, i, Site::Down, &act)?;
        self.down.forward(rec, &act, h, true, &ld)
    }

    /// qkv = x·Wqkvᵀ (+ LoRA, + bias); q and k rotated, k and v stored in the cache; attention of
    /// q over the cache.
    fn attend(&self, rec: &mut Recorder, p: &Pass, i: usize, x: &Act, a: &AttnActs) -> Result<()> {
        let lq = p.site(rec, i, Site::Qkv, x)?;
        self.qkv.forward(rec, x, &a.qkv, false, &lq)?;
        let cache = p.cache.layer(i);
        // a pass that keeps attention's results for a backward keeps the rotated q too
        let in_attention = p.distinct_slots && a.lse.is_none();
        if !in_attention {
            rope_kv(rec, &a.qkv, p.cfg.heads, &p.rows, p.cache.rope(), &cache)?;
        }
        let at = Attention {
            qkv: &a.qkv,
            heads: p.cfg.heads,
            cache: &cache,
            rows: &p.rows,
            prefix: p.cache.prefix(),
            rope: in_attention.then(|| p.cache.rope()),
            variant: None,
        };
        attention(rec, &at, &a.att, a.lse.as_ref())
    }

    /// h += att·Woᵀ (+ LoRA); the site's adapters come back for a backward.
    fn attn_out<'p>(
        &self,
        rec: &mut Recorder,
        p: &'p Pass,
        i: usize,
        att: &Tensor,
        h: &Tensor,
    ) -> Result<SiteLora<'p>> {
        let att = Act::new(att, 0);
        let lo = p.site(rec, i, Site::O, &att)?;
        self.o.forward(rec, &att, h, true, &lo)?;
        Ok(lo)
    }

    /// x2 = rmsnorm(h); gu = x2·Wguᵀ (+ LoRA); act = silu(g) ⊙ u. The site's adapters come back
    /// with act, which the kernels that read it compute as they do (a decode step's matvecs) or
    /// materialize into s.act; `keep` materializes x2 (in s.x) and act for a backward.
    fn mlp_in<'p>(
        &self,
        rec: &mut Recorder,
        p: &'p Pass,
        i: usize,
        h: &Tensor,
        s: &Scratch,
        keep: bool,
    ) -> Result<(SiteLora<'p>, Act)> {
        let x2 = Act::normed(h, &self.mlp_norm, p.eps(), &s.x, 0);
        if keep {
            x2.value(rec)?;
        }
        let lg = p.site(rec, i, Site::GateUp, &x2)?;
        self.gate_up.forward(rec, &x2, &s.gu, false, &lg)?;
        let act = Act::swiglu(&s.gu, &s.act, 0);
        if keep {
            act.value(rec)?;
        }
        Ok((lg, act))
    }

    /// The layer's backward: from dh (the gradient of its output, updated in place to that of
    /// its input) and what the forward saved, the adapters' gradients into `grads` (site by
    /// site, as `grad(site)` names them). The forward's other activations are recomputed first
    /// by its own steps, with the same dropout masks (same seeds).
    pub(super) fn backward<'g>(
        &self,
        rec: &mut Recorder,
        p: &Pass,
        i: usize,
        save: &LayerSave,
        dh: &Tensor,
        grad: impl Fn(Site) -> Option<SiteGrads<'g>>,
    ) -> Result<()> {
        let (cfg, eps) = (p.cfg, p.eps());
        let r = dh.shape()[0];
        let gpu = rec.gpu().clone();
        let t = |shape: &[usize], name: &str| Tensor::zeros(&gpu, shape, DType::F32, name);
        let (h, f) = (cfg.hidden, cfg.intermediate);
        let (nq, nkv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let (x1, h_mid) = (t(&[r, h], "x1")?, t(&[r, h], "h_mid")?);
        let s = Scratch::new(rec, cfg, r)?;
        let (att, qkv) = (&save.attn.att, &save.attn.qkv);
        // recompute
        rmsnorm(rec, &save.h_in, &self.attn_norm, &x1, eps)?;
        let lq = p.site(rec, i, Site::Qkv, &Act::new(&x1, 0))?;
        lq.shrink(rec, &x1)?;
        copy(rec, &save.h_in, &h_mid)?;
        let lo = self.attn_out(rec, p, i, att, &h_mid)?;
        let (lg, act) = self.mlp_in(rec, p, i, &h_mid, &s, true)?;
        let ld = p.site(rec, i, Site::Down, &act)?;
        ld.shrink(rec, &s.act)?;
        // MLP
        let dact = t(&[r, f], "dact")?;
        self.down.backward(rec, &s.act, dh, &dact, &ld, grad(Site::Down))?;
        let dgu = t(&[r, 2 * f], "dgu")?;
        swiglu_backward(rec, &s.gu, &dact, &dgu)?;
        let dx2 = t(&[r, h], "dx2")?;
        self.gate_up.backward(rec, &s.x, &dgu, &dx2, &lg, grad(Site::GateUp))?;
        rmsnorm_backward(rec, &h_mid, &self.mlp_norm, &dx2, dh, eps, true)?;
        // attention
        let datt = t(&[r, nq], "datt")?;
        self.o.backward(rec, att, dh, &datt, &lo, grad(Site::O))?;
        let (dqkv, dsum) = (t(&[r, nq + 2 * nkv], "dqkv")?, t(&[r, cfg.heads], "dsum")?);
        let spans = p.spans.as_ref().ok_or_else(|| Error::Invalid("a backward needs the batch's spans".into()))?;
        let lse = save.attn.lse.as_ref().ok_or_else(|| Error::Invalid("a backward needs the saved lse".into()))?;
        let cache = p.cache.layer(i);
        let at =
            Attention { qkv, heads: cfg.heads, cache: &cache, rows: &p.rows, prefix: None, rope: None, variant: None };
        attention_backward(rec, &at, spans, &Saved { out: att, lse }, &datt, &dqkv, &dsum)?;
        rope_backward(rec, &dqkv, cfg.heads, cfg.kv_heads, p.rows.pos, p.cache.rope())?;
        let dx1 = t(&[r, h], "dx1")?;
        self.qkv.backward(rec, &x1, &dqkv, &dx1, &lq, grad(Site::Qkv))?;
        rmsnorm_backward(rec, &save.h_in, &self.attn_norm, &dx1, dh, eps, true)
    }
}
