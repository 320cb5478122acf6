//! The Llama forward pass on the GPU, written as the paper's equations with kernel launches as
//! the only lines. Rows of a batch are any mix of sequences and positions (ragged: a prefill of
//! several prompts, a decode step of several sequences), each tied to a KV-cache slot.
//!
//!   h = embed(tokens)
//!   per layer:  x = rmsnorm(h);  [q k v] = x·[Wq; Wk; Wv]ᵀ (+ bias);  rope(q, k) → cache
//!               h += attention(q, cache)·Woᵀ
//!               x = rmsnorm(h);  [g u] = x·[Wg; Wu]ᵀ;  h += (silu(g) ⊙ u)·Wdᵀ
//!   logits = rmsnorm(h[wanted rows])·Wlmᵀ
//!
//! q, k and v (and gate and up) are one matmul over the stacked weights: each launch costs tens
//! of microseconds on lavapipe whatever its size, and a decode step is made of small products.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Layout, Matrix, Profile, Recorder, Tensor};
use crate::kernels::attention::attention;
use crate::kernels::elementwise::{add_bias, swiglu};
use crate::kernels::embedding::gather;
use crate::kernels::lora::{FusedLinear, LoraStack, Mix, fused_forward};
use crate::kernels::matmul::{Act, Form, MatmulOpts, matmul_act};
use crate::kernels::rmsnorm::rmsnorm;
use crate::kernels::rope::{Cache, RopeTable, Rows, rope_kv};
use crate::lora::attach::{Attached, Site, attach};
use crate::lora::peft::Adapter;
use crate::model::config::LlamaConfig;
use crate::model::source::ModelSource;

/// How weights are held on the GPU.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Q4: a GGUF's 4-bit linear weights (Q4_0, Q4_1, Q4_K) stay 4-bit and are dequantized
    /// inside the matmul kernels (the texture kernels; others expand to f16); f16: everything
    /// expanded to half precision; f32: exact dequantized values, for parity checks. The
    /// embeddings and LM head are f16 under Q4.
    pub dtype: DType,
    /// Weight layout; None lets the autotuner decide for the device.
    pub layout: Option<Layout>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { dtype: DType::F16, layout: None }
    }
}

/// A linear layer y = x·Wᵀ (+ b), W [out, in] in Hugging Face layout.
pub struct Linear {
    pub w: Matrix,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// y (+)= x·Wᵀ + b, plus the adapters (the fused kernel, or the sequential baseline).
    pub(crate) fn forward(
        &self,
        rec: &mut Recorder,
        x: &Act,
        y: &Tensor,
        accumulate: bool,
        lora: LinearLora,
    ) -> Result<()> {
        match lora {
            LinearLora::Fused(stack, coef) => {
                let t = Tensor::zeros(rec.gpu(), &[y.shape()[0], stack.rp()], DType::F32, "lora t")?;
                fused_forward(rec, &FusedLinear { w: &self.w, lora: stack, coef, t: &t }, x, y, accumulate, None)?;
            }
            LinearLora::None | LinearLora::Sequential(_) => {
                let opts = MatmulOpts { accumulate, ..Default::default() };
                matmul_act(rec, Form::Nt, x, &self.w, y, &opts)?;
            }
        }
        if let LinearLora::Sequential(stacks) = &lora {
            for &(stack, coef) in stacks {
                // T = x·Aᵀ, then y += coef · T·Bᵀ: two launches and a pass over y per adapter
                let t = Tensor::zeros(rec.gpu(), &[y.shape()[0], stack.rp()], DType::F32, "lora t")?;
                matmul_act(rec, Form::Nt, x, &stack.a, &t, &MatmulOpts::default())?;
                let expand = MatmulOpts { alpha: coef, accumulate: true, ..Default::default() };
                matmul_act(rec, Form::Nt, &Act::new(&t, 1), &stack.b, y, &expand)?;
            }
        }
        if let Some(b) = &self.bias {
            add_bias(rec, y, b)?;
        }
        Ok(())
    }
}

/// The adapters of one linear layer in a forward pass.
pub(crate) enum LinearLora<'a> {
    None,
    /// Every adapter through the fused kernel, at the batch's per-row coefficients.
    Fused(&'a LoraStack, &'a Tensor),
    /// One after another after the base product, each at weight × scale: the baseline that
    /// `bench fuse` compares the fused kernel with.
    Sequential(Vec<(&'a LoraStack, f32)>),
}

pub struct Layer {
    pub attn_norm: Tensor,
    /// q_proj, k_proj and v_proj stacked: [(H + 2G)·d, hidden].
    pub qkv: Linear,
    pub o: Linear,
    pub mlp_norm: Tensor,
    /// gate_proj and up_proj stacked: [2·intermediate, hidden].
    pub gate_up: Linear,
    pub down: Linear,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    gpu: Gpu,
    /// Token embeddings [V, H] for the row gather (f32 or f16).
    pub(crate) embed: Tensor,
    pub layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Matrix,
    layout: Layout,
    dtype: DType,
    pub(crate) lora: Option<Attached>,
    /// Each attached adapter's weight for rows that do not give their own.
    lora_weights: Vec<f32>,
    /// Adapters attached for sequential application instead: one stack each, with its
    /// weight × scale.
    lora_sequential: Vec<(Attached, f32)>,
}

/// The KV cache: per layer, K and V of `slots` sequences up to `max_len` positions, and the RoPE
/// table for those positions.
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub slots: usize,
    pub max_len: usize,
    rope: RopeTable,
}

impl KvCache {
    pub fn rope(&self) -> &RopeTable {
        &self.rope
    }
}

/// The rows of one forward pass, on the host: token, cache slot and position of each row, and
/// the rows whose logits are wanted (in the order the logits come out).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub slots: Vec<u32>,
    pub positions: Vec<u32>,
    pub logits_rows: Vec<u32>,
    /// Per-row adapter weights, [rows × attached adapters] row-major; empty: the weights given
    /// when the adapters were attached, for every row.
    pub adapter_weights: Vec<f32>,
}

impl Batch {
    /// Appends `tokens` of the sequence in `slot`, starting at position `start`; its last row's
    /// logits are wanted when `want_logits`.
    pub fn push_sequence(&mut self, slot: u32, start: u32, tokens: &[u32], want_logits: bool) {
        for (i, &t) in tokens.iter().enumerate() {
            self.tokens.push(t);
            self.slots.push(slot);
            self.positions.push(start + i as u32);
        }
        if want_logits && !tokens.is_empty() {
            self.logits_rows.push(self.tokens.len() as u32 - 1);
        }
    }

    pub fn rows(&self) -> usize {
        self.tokens.len()
    }
}

/// Loads the Hugging Face linear layers `names` (each [outs[i], inp], with optional bias) stacked
/// along the output dimension into one layer.
fn load_stacked(
    gpu: &Gpu,
    src: &ModelSource,
    cfg: &LlamaConfig,
    names: &[&str],
    outs: &[usize],
    inp: usize,
    opts: (Layout, DType),
) -> Result<Linear> {
    let total: usize = outs.iter().sum();
    let label = names.join("+");
    let bias = stacked_bias(gpu, src, cfg, names, outs, &label)?;
    if opts.1 == DType::Q4 && opts.0 == Layout::Texture && inp.is_multiple_of(32) {
        let mut blocks = Vec::with_capacity(total * inp / 32);
        for (name, &out) in names.iter().zip(outs) {
            match src.tensor_q4(&format!("{name}.weight"), &[out, inp], cfg)? {
                Some(b) => blocks.extend(b),
                None => {
                    blocks.clear();
                    break;
                }
            }
        }
        if !blocks.is_empty() {
            return Ok(Linear { w: Matrix::from_q4(gpu, opts.0, total, inp, &blocks, &label)?, bias });
        }
    }
    // not 4-bit in the file, or no kernel for 4-bit here: half precision
    let dtype = if opts.1 == DType::Q4 { DType::F16 } else { opts.1 };
    let mut w = Vec::with_capacity(total * inp);
    for (name, &out) in names.iter().zip(outs) {
        w.extend(src.tensor(&format!("{name}.weight"), &[out, inp], cfg)?);
    }
    Ok(Linear { w: Matrix::from_host(gpu, opts.0, total, inp, &w, dtype, &label)?, bias })
}

/// The stacked biases of `names`, zeros for layers without one; None when none has one.
fn stacked_bias(
    gpu: &Gpu,
    src: &ModelSource,
    cfg: &LlamaConfig,
    names: &[&str],
    outs: &[usize],
    label: &str,
) -> Result<Option<Tensor>> {
    let mut bias = Vec::new();
    let mut any = false;
    for (name, &out) in names.iter().zip(outs) {
        let bias_name = format!("{name}.bias");
        if src.has(&bias_name) {
            any = true;
            bias.extend(src.tensor(&bias_name, &[out], cfg)?);
        } else {
            bias.extend(std::iter::repeat_n(0.0, out));
        }
    }
    if any { Ok(Some(Tensor::from_f32(gpu, &[bias.len()], &bias, label)?)) } else { Ok(None) }
}

impl Llama {
    pub fn load(gpu: &Gpu, src: &ModelSource, opts: LoadOptions) -> Result<Llama> {
        let cfg = src.config()?;
        let layout = match opts.layout {
            Some(l) => l,
            None => crate::tune::preferred_layout(gpu)?,
        };
        if !matches!(opts.dtype, DType::F32 | DType::F16 | DType::Q4) {
            return Err(Error::Invalid(format!("weights can be q4, f16 or f32, not {}", opts.dtype)));
        }
        let lo = (layout, opts.dtype);
        // embeddings and the LM head: f16 under q4 (the row gather reads f16 or f32)
        let table_dtype = if opts.dtype == DType::Q4 { DType::F16 } else { opts.dtype };
        let (h, f, hd) = (cfg.hidden, cfg.intermediate, cfg.head_dim);
        let (nq, nkv) = (cfg.heads * hd, cfg.kv_heads * hd);
        let embed_host = src.tensor("model.embed_tokens.weight", &[cfg.vocab, h], &cfg)?;
        let embed = match table_dtype {
            DType::F16 => Tensor::from_f32_as_f16(gpu, &[cfg.vocab, h], &embed_host, "embed_tokens")?,
            _ => Tensor::from_f32(gpu, &[cfg.vocab, h], &embed_host, "embed_tokens")?,
        };
        let lm_head = if cfg.tie_embeddings || !src.has("lm_head.weight") {
            Matrix::from_host(gpu, layout, cfg.vocab, h, &embed_host, table_dtype, "lm_head (tied)")?
        } else {
            let w = src.tensor("lm_head.weight", &[cfg.vocab, h], &cfg)?;
            Matrix::from_host(gpu, layout, cfg.vocab, h, &w, table_dtype, "lm_head")?
        };
        drop(embed_host);
        let norm_vec =
            |name: &str| -> Result<Tensor> { Tensor::from_f32(gpu, &[h], &src.tensor(name, &[h], &cfg)?, name) };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            let attn = |m: &str| format!("{p}.self_attn.{m}");
            let mlp = |m: &str| format!("{p}.mlp.{m}");
            let (q, k, v) = (attn("q_proj"), attn("k_proj"), attn("v_proj"));
            let (gate, up) = (mlp("gate_proj"), mlp("up_proj"));
            layers.push(Layer {
                attn_norm: norm_vec(&format!("{p}.input_layernorm.weight"))?,
                qkv: load_stacked(gpu, src, &cfg, &[&q, &k, &v], &[nq, nkv, nkv], h, lo)?,
                o: load_stacked(gpu, src, &cfg, &[&attn("o_proj")], &[h], nq, lo)?,
                mlp_norm: norm_vec(&format!("{p}.post_attention_layernorm.weight"))?,
                gate_up: load_stacked(gpu, src, &cfg, &[&gate, &up], &[f, f], h, lo)?,
                down: load_stacked(gpu, src, &cfg, &[&mlp("down_proj")], &[h], f, lo)?,
            });
        }
        let norm = norm_vec("model.norm.weight")?;
        Ok(Llama {
            cfg,
            gpu: gpu.clone(),
            embed,
            layers,
            norm,
            lm_head,
            layout,
            dtype: opts.dtype,
            lora: None,
            lora_weights: Vec::new(),
            lora_sequential: Vec::new(),
        })
    }

    /// Applies `adapters` to every forward pass from now on (unmerged, through the fused
    /// kernel), adapter i at `weights[i]` unless a batch gives its rows their own weights.
    pub fn attach(&mut self, adapters: &[Adapter], weights: &[f32]) -> Result<()> {
        if weights.len() != adapters.len() {
            return Err(Error::Invalid(format!("{} weights for {} adapters", weights.len(), adapters.len())));
        }
        self.detach();
        self.lora = Some(attach(&self.gpu, self.layout, &self.cfg, adapters)?);
        self.lora_weights = weights.to_vec();
        Ok(())
    }

    /// Changes the weights of the attached adapters (no re-upload).
    pub fn set_adapter_weights(&mut self, weights: &[f32]) -> Result<()> {
        let n = self.lora.as_ref().map_or(0, Attached::n_adapters);
        if weights.len() != n {
            return Err(Error::Invalid(format!("{} weights for {n} attached adapters", weights.len())));
        }
        self.lora_weights = weights.to_vec();
        Ok(())
    }

    /// Applies `adapters` one after another instead (a shrink and an expand launch each after
    /// every base product, at their weights for every row): the sequential baseline.
    pub fn attach_sequential(&mut self, adapters: &[Adapter], weights: &[f32]) -> Result<()> {
        if weights.len() != adapters.len() {
            return Err(Error::Invalid(format!("{} weights for {} adapters", weights.len(), adapters.len())));
        }
        self.detach();
        for (a, &w) in adapters.iter().zip(weights) {
            let one = attach(&self.gpu, self.layout, &self.cfg, std::slice::from_ref(a))?;
            self.lora_sequential.push((one, w * a.scale()));
        }
        Ok(())
    }

    pub fn detach(&mut self) {
        self.lora = None;
        self.lora_weights.clear();
        self.lora_sequential.clear();
    }

    pub fn adapters(&self) -> Option<&Attached> {
        self.lora.as_ref()
    }

    /// The coefficients [R, n] (weight × scale) of a batch for the attached adapters.
    pub(crate) fn coef(&self, batch: &Batch) -> Result<Option<Tensor>> {
        let Some(lora) = &self.lora else { return Ok(None) };
        let r = batch.rows();
        let mix = if batch.adapter_weights.is_empty() {
            Mix::All(self.lora_weights.clone())
        } else {
            Mix::Rows(batch.adapter_weights.clone())
        };
        let n = lora.n_adapters();
        let c = mix.coef(r, &lora.scales)?;
        Ok(Some(Tensor::from_f32(&self.gpu, &[r, n.max(1)], &if n == 0 { vec![0.0; r] } else { c }, "adapter coef")?))
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        let lin = |l: &Linear| l.w.bytes() + l.bias.as_ref().map_or(0, |b| b.bytes());
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.o, &l.gate_up, &l.down].iter().map(|x| lin(x)).sum::<u64>()
                    + l.attn_norm.bytes()
                    + l.mlp_norm.bytes()
            })
            .sum();
        layers + self.embed.bytes() + self.norm.bytes() + self.lm_head.bytes()
    }

    /// Slots × positions one KV cache holds: each layer's K (and V) is one storage binding.
    pub fn cache_capacity(&self) -> usize {
        let per_position = (4 * self.cfg.kv_heads * self.cfg.head_dim) as u64;
        (self.gpu.caps().max_binding() / per_position.max(1)) as usize
    }

    /// A cache for `slots` sequences of up to `max_len` positions.
    pub fn new_cache(&self, slots: usize, max_len: usize) -> Result<KvCache> {
        if max_len > self.cfg.max_positions {
            return Err(Error::Invalid(format!(
                "{max_len} positions exceed the model's context of {} tokens",
                self.cfg.max_positions
            )));
        }
        let shape = [slots, self.cfg.kv_heads, max_len, self.cfg.head_dim];
        let mut k = Vec::with_capacity(self.cfg.layers);
        let mut v = Vec::with_capacity(self.cfg.layers);
        for _ in 0..self.cfg.layers {
            k.push(Tensor::zeros(&self.gpu, &shape, DType::F32, "k cache")?);
            v.push(Tensor::zeros(&self.gpu, &shape, DType::F32, "v cache")?);
        }
        let rope = RopeTable::new(&self.gpu, &self.cfg.inv_freq(), max_len)?;
        Ok(KvCache { k, v, slots, max_len, rope })
    }

    /// Runs `batch` and returns its logits [batch.logits_rows.len(), vocab] (submitted, not
    /// waited for: read the tensor to wait).
    pub fn forward(&self, batch: &Batch, cache: &KvCache) -> Result<Tensor> {
        self.forward_in_pieces(batch, cache, self.max_rows())
    }

    /// The most rows one forward pass takes: its widest activation ([rows, 2·FFN] for
    /// SmolLM2) must fit one storage binding.
    pub fn max_rows(&self) -> usize {
        let c = &self.cfg;
        let width = (2 * c.intermediate).max((c.heads + 2 * c.kv_heads) * c.head_dim).max(c.hidden);
        ((self.gpu.caps().max_binding() / (4 * width as u64)) as usize).max(1)
    }

    /// `forward` with at most `limit` rows a pass.
    pub fn forward_in_pieces(&self, batch: &Batch, cache: &KvCache, limit: usize) -> Result<Tensor> {
        self.run_in_pieces(batch, cache, limit, |piece| {
            let mut rec = Recorder::new(&self.gpu);
            let logits = self.record_forward(&mut rec, piece, cache)?;
            rec.submit()?;
            Ok(logits)
        })
    }

    /// `forward`, with every launch timed into `profile` under `phase` (waits for the GPU).
    pub fn forward_profiled(
        &self,
        batch: &Batch,
        cache: &KvCache,
        profile: &mut Profile,
        phase: &str,
    ) -> Result<Tensor> {
        self.run_in_pieces(batch, cache, self.max_rows(), |piece| {
            let mut rec = Recorder::profiled(&self.gpu);
            let logits = self.record_forward(&mut rec, piece, cache)?;
            let submitted = std::time::Instant::now();
            profile.add(phase, submitted, rec.run()?);
            Ok(logits)
        })
    }

    /// Runs `batch` through `pass` whole, or, over `limit` rows, as contiguous pieces in order:
    /// every row still sees the earlier rows of its sequence, which the earlier pieces left in
    /// the KV cache. The logits come back in the batch's order.
    fn run_in_pieces(
        &self,
        batch: &Batch,
        cache: &KvCache,
        limit: usize,
        mut pass: impl FnMut(&Batch) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let limit = limit.max(1);
        if batch.rows() <= limit {
            return pass(batch);
        }
        self.check_batch(batch, cache)?;
        let (r, vocab) = (batch.rows(), self.cfg.vocab);
        let per_row = if batch.adapter_weights.is_empty() { 0 } else { batch.adapter_weights.len() / r };
        let mut out = vec![0f32; batch.logits_rows.len() * vocab];
        for start in (0..r).step_by(limit) {
            let end = (start + limit).min(r);
            // (index in the batch's logits, row in the piece)
            let wanted: Vec<(usize, u32)> = (batch.logits_rows.iter().enumerate())
                .filter(|(_, row)| (start..end).contains(&(**row as usize)))
                .map(|(i, &row)| (i, row - start as u32))
                .collect();
            let piece = Batch {
                tokens: batch.tokens[start..end].to_vec(),
                slots: batch.slots[start..end].to_vec(),
                positions: batch.positions[start..end].to_vec(),
                // a pass needs a logits row: a piece that wants none computes its last, unread
                logits_rows: if wanted.is_empty() {
                    vec![(end - start - 1) as u32]
                } else {
                    wanted.iter().map(|w| w.1).collect()
                },
                adapter_weights: batch.adapter_weights[start * per_row..end * per_row].to_vec(),
            };
            let logits = pass(&piece)?;
            if wanted.is_empty() {
                continue;
            }
            let l = logits.read_f32(&self.gpu)?;
            for (k, (i, _)) in wanted.iter().enumerate() {
                out[i * vocab..(i + 1) * vocab].copy_from_slice(&l[k * vocab..(k + 1) * vocab]);
            }
        }
        Tensor::from_f32(&self.gpu, &[batch.logits_rows.len(), vocab], &out, "logits")
    }

    /// Records the forward pass of `batch` into `rec` and returns the logits tensor it fills.
    pub fn record_forward(&self, rec: &mut Recorder, batch: &Batch, cache: &KvCache) -> Result<Tensor> {
        let cfg = &self.cfg;
        let r = batch.rows();
        self.check_batch(batch, cache)?;
        let gpu = &self.gpu;
        let (h, f) = (cfg.hidden, cfg.intermediate);
        let (nq, nkv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let eps = cfg.rms_eps as f32;
        let t = |shape: &[usize], name: &str| Tensor::zeros(gpu, shape, DType::F32, name);
        let tokens = Tensor::from_u32(gpu, &[r], &batch.tokens, "tokens")?;
        let pos = Tensor::from_u32(gpu, &[r], &batch.positions, "positions")?;
        let slot = Tensor::from_u32(gpu, &[r], &batch.slots, "slots")?;
        let rows = Rows { pos: &pos, slot: &slot };
        let (hs, xn) = (t(&[r, h], "h")?, t(&[r, h], "x")?);
        let (qkv, att) = (t(&[r, nq + 2 * nkv], "qkv")?, t(&[r, nq], "attn")?);
        let (gate_up, act) = (t(&[r, 2 * f], "gate_up")?, t(&[r, f], "act")?);

        let coef = self.coef(batch)?;
        let lora = |i: usize, site: Site| -> LinearLora {
            if !self.lora_sequential.is_empty() {
                let stacks = self.lora_sequential.iter().filter_map(|(a, c)| Some((a.layers[i].get(site)?, *c)));
                return LinearLora::Sequential(stacks.collect());
            }
            match (self.lora.as_ref().and_then(|a| a.layers[i].get(site)), coef.as_ref()) {
                (Some(stack), Some(c)) => LinearLora::Fused(stack, c),
                _ => LinearLora::None,
            }
        };
        gather(rec, &self.embed, &tokens, &hs)?;
        for (i, l) in self.layers.iter().enumerate() {
            let cache_l = Cache { k: &cache.k[i], v: &cache.v[i] };
            rmsnorm(rec, &hs, &l.attn_norm, &xn, eps)?;
            l.qkv.forward(rec, &Act::new(&xn, 0), &qkv, false, lora(i, Site::Qkv))?;
            rope_kv(rec, &qkv, cfg.heads, &rows, &cache.rope, &cache_l)?;
            attention(rec, &qkv, cfg.heads, &cache_l, &rows, &att, None)?;
            let a = Act::new(&att, 0);
            l.o.forward(rec, &a, &hs, true, lora(i, Site::O))?;

            rmsnorm(rec, &hs, &l.mlp_norm, &xn, eps)?;
            l.gate_up.forward(rec, &Act::new(&xn, 0), &gate_up, false, lora(i, Site::GateUp))?;
            swiglu(rec, &gate_up, &act)?;
            let a = Act::new(&act, 0);
            l.down.forward(rec, &a, &hs, true, lora(i, Site::Down))?;
        }
        let b = batch.logits_rows.len();
        let wanted = Tensor::from_u32(gpu, &[b], &batch.logits_rows, "logits rows")?;
        let (sel, seln) = (t(&[b, h], "last h")?, t(&[b, h], "last x")?);
        gather(rec, &hs, &wanted, &sel)?;
        rmsnorm(rec, &sel, &self.norm, &seln, eps)?;
        let logits = t(&[b, cfg.vocab], "logits")?;
        let x = Act::new(&seln, 0);
        matmul_act(rec, Form::Nt, &x, &self.lm_head, &logits, &MatmulOpts::default())?;
        Ok(logits)
    }

    fn check_batch(&self, batch: &Batch, cache: &KvCache) -> Result<()> {
        let r = batch.rows();
        if r == 0 || batch.slots.len() != r || batch.positions.len() != r {
            return Err(Error::Invalid(format!(
                "a batch needs rows: {} tokens, {} slots, {} positions",
                r,
                batch.slots.len(),
                batch.positions.len()
            )));
        }
        if let Some(&t) = batch.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::Invalid(format!("token id {t} is outside the vocabulary of {}", self.cfg.vocab)));
        }
        if let Some(&s) = batch.slots.iter().find(|&&s| s as usize >= cache.slots) {
            return Err(Error::Invalid(format!("cache slot {s} of {}", cache.slots)));
        }
        if let Some(&p) = batch.positions.iter().find(|&&p| p as usize >= cache.max_len) {
            return Err(Error::Invalid(format!(
                "position {p} is past the cache's {} positions (the sequence is over the limit)",
                cache.max_len
            )));
        }
        let n = self.lora.as_ref().map_or(0, Attached::n_adapters);
        if !batch.adapter_weights.is_empty() && batch.adapter_weights.len() != r * n {
            return Err(Error::Invalid(format!(
                "{} adapter weights for {r} rows and {n} attached adapters",
                batch.adapter_weights.len()
            )));
        }
        if batch.logits_rows.is_empty() || batch.logits_rows.iter().any(|&i| i as usize >= r) {
            return Err(Error::Invalid("logits rows must name rows of the batch".into()));
        }
        Ok(())
    }
}
