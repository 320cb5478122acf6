//! The Llama model on the GPU: its weights, the adapters attached to it, its KV caches, and its
//! forward pass, written as the paper's equations with kernel launches as the only lines (each
//! layer's in model/layer.rs). Rows of a batch are any mix of sequences and positions (ragged: a
//! prefill of several prompts, a decode step of several sequences), each tied to a KV-cache slot.
//!
//!   h = embed(tokens);  per layer: h = layer(h)  (layer.rs);  logits = rmsnorm(h[rows])·Wlmᵀ
//!
//! The loss and the backward over the same forward are in loss.rs; the trainable parameters
//! (the adapters), their gradients and optimizer state in params.rs.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Layout, Matrix, Profile, Recorder, Tensor};
use crate::kernels::embedding::gather;
use crate::kernels::lora::Mix;
use crate::kernels::matmul::{Act, Form, MatmulOpts, matmul_act};
use crate::kernels::rope::{RopeTable, Rows};
use crate::lora::attach::{Attached, Site, attach};
use crate::lora::peft::Adapter;
use crate::model::batch::{Batch, RowTensors};
pub use crate::model::cache::KvCache;
use crate::model::config::LlamaConfig;
use crate::model::layer::{AttnActs, Layer, LayerSave, Linear, Pass, PassLora, Scratch};
use crate::model::source::{Blocks, ModelSource};

/// How weights are held on the GPU.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Q4: a GGUF's quantized matrices stay in their blocks and are dequantized inside the
    /// matmul kernels (the texture kernels; others expand to f16): Q4_0, Q4_1 and Q4_K as 4-bit,
    /// Q8_0 as 8-bit, the LM head included (SmolLM2's tied head is Q8_0); f16: everything
    /// expanded to half precision; f32: exact dequantized values, for parity checks. The
    /// embedding table the row gather reads is f16 under Q4.
    pub dtype: DType,
    /// Weight layout; None lets the autotuner decide for the device.
    pub layout: Option<Layout>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { dtype: DType::F16, layout: None }
    }
}

pub struct Llama {
    cfg: LlamaConfig,
    /// The file or folder it was loaded from, for messages.
    origin: std::path::PathBuf,
    gpu: Gpu,
    /// Token embeddings [V, H] for the row gather (f32 or f16).
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Matrix,
    layout: Layout,
    dtype: DType,
    lora: Option<Attached>,
    /// Each attached adapter's weight for rows that do not give their own.
    lora_weights: Vec<f32>,
    /// Adapters attached for sequential application instead: one stack each, with its
    /// weight × scale.
    lora_sequential: Vec<(Attached, f32)>,
}

/// The LM head's intermediates over some rows: the gathered hidden states, their normalization
/// (written only where the head's kernel does not normalize as it reads) and the logits.
pub(super) struct Head {
    pub h: Tensor,
    pub x: Tensor,
    pub logits: Tensor,
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
    if opts.1 == DType::Q4
        && let Some(w) = file_blocks(gpu, src, cfg, names, outs, inp, opts.0, &label)?
    {
        return Ok(Linear { w, bias });
    }
    // not quantized alike in the file, or no kernel for blocks here: half precision
    let dtype = if opts.1 == DType::Q4 { DType::F16 } else { opts.1 };
    let mut w = Vec::with_capacity(total * inp);
    for (name, &out) in names.iter().zip(outs) {
        w.extend(src.tensor(&format!("{name}.weight"), &[out, inp], cfg)?);
    }
    Ok(Linear { w: Matrix::from_host(gpu, opts.0, total, inp, &w, dtype, &label)?, bias })
}

/// The weights `names` (each [outs[i], inp]) stacked in the file's own blocks, when every one is
/// stored in the same type the GPU holds (all 4-bit or all Q8_0) and the layout has kernels for
/// blocks; None otherwise.
#[allow(clippy::too_many_arguments)]
fn file_blocks(
    gpu: &Gpu,
    src: &ModelSource,
    cfg: &LlamaConfig,
    names: &[&str],
    outs: &[usize],
    inp: usize,
    layout: Layout,
    label: &str,
) -> Result<Option<Matrix>> {
    if layout != Layout::Texture || !inp.is_multiple_of(32) {
        return Ok(None);
    }
    let (mut q4, mut q8) = (Vec::new(), Vec::new());
    for (name, &out) in names.iter().zip(outs) {
        match src.tensor_blocks(&format!("{name}.weight"), &[out, inp], cfg)? {
            Some(Blocks::Q4(b)) if q8.is_empty() => q4.extend(b),
            Some(Blocks::Q8(b)) if q4.is_empty() => q8.extend(b),
            _ => return Ok(None),
        }
    }
    let rows = outs.iter().sum();
    Ok(Some(if q8.is_empty() {
        Matrix::from_q4(gpu, layout, rows, inp, &q4, label)?
    } else {
        Matrix::from_q8(gpu, layout, rows, inp, &q8, label)?
    }))
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
            None => crate::kernels::matmul::tune::tune_layout(gpu, false)?,
        };
        if !matches!(opts.dtype, DType::F32 | DType::F16 | DType::Q4) {
            return Err(Error::Invalid(format!("weights can be q4, f16 or f32, not {}", opts.dtype)));
        }
        let lo = (layout, opts.dtype);
        // the embedding table the row gather reads, and the LM head unless the file's blocks
        // serve: f16 under q4
        let table_dtype = if opts.dtype == DType::Q4 { DType::F16 } else { opts.dtype };
        let (h, f, hd) = (cfg.hidden, cfg.intermediate, cfg.head_dim);
        let (nq, nkv) = (cfg.heads * hd, cfg.kv_heads * hd);
        let embed_host = src.tensor("model.embed_tokens.weight", &[cfg.vocab, h], &cfg)?;
        let embed = match table_dtype {
            DType::F16 => Tensor::from_f32_as_f16(gpu, &[cfg.vocab, h], &embed_host, "embed_tokens")?,
            _ => Tensor::from_f32(gpu, &[cfg.vocab, h], &embed_host, "embed_tokens")?,
        };
        let tied = cfg.tie_embeddings || !src.has("lm_head.weight");
        let (head_name, head_label) =
            if tied { ("model.embed_tokens", "lm_head (tied)") } else { ("lm_head", "lm_head") };
        let head_blocks = match opts.dtype {
            DType::Q4 => file_blocks(gpu, src, &cfg, &[head_name], &[cfg.vocab], h, layout, head_label)?,
            _ => None,
        };
        let lm_head = match head_blocks {
            Some(m) => m,
            None if tied => Matrix::from_host(gpu, layout, cfg.vocab, h, &embed_host, table_dtype, head_label)?,
            None => {
                let w = src.tensor("lm_head.weight", &[cfg.vocab, h], &cfg)?;
                Matrix::from_host(gpu, layout, cfg.vocab, h, &w, table_dtype, head_label)?
            }
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
            origin: src.path().to_path_buf(),
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

    /// The warm-up phase of a command: `work` (what the command is about to run, or a
    /// representative part of it) is recorded without running, and the matmul shape classes it
    /// needs that have no tuned choice on this device yet are timed, behind one progress line
    /// unless `quiet` (kernels/matmul/tune.rs). Returns how many classes were timed.
    pub fn warm_up<T>(&self, quiet: bool, work: impl FnOnce() -> Result<T>) -> Result<usize> {
        crate::kernels::matmul::tune::warm_up(&self.gpu, quiet, work)
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
    pub(super) fn coef(&self, batch: &Batch) -> Result<Option<Tensor>> {
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

    /// The model and its attached adapters at their weights, for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("model {}", self.origin.display());
        if let Some(l) = &self.lora {
            let list: Vec<String> =
                l.names.iter().zip(&self.lora_weights).map(|(n, w)| format!("{n} at weight {w}")).collect();
            s += &format!(" with adapters {}", list.join(", "));
        }
        for (a, ws) in &self.lora_sequential {
            s += &format!(" with {} (weight × scale {ws}, sequential)", a.names.join(", "));
        }
        s
    }

    /// Logit rows ([rows, vocab], already read back) are finite: a NaN or infinity (weights that
    /// overflow, say) would be sampled as token 0 and decode to empty text, so it stops the run
    /// with where it came from. `place(row)` says what row `row` was (prompt, step).
    pub fn check_logits(&self, logits: &[f32], place: impl Fn(usize) -> String) -> Result<()> {
        match crate::validate::first_non_finite(logits) {
            None => Ok(()),
            Some((i, x)) => Err(Error::Invalid(format!(
                "{} gave a non-finite logit ({x} for token {}) at {}: its weights or adapters overflow f32",
                self.describe(),
                i % self.cfg.vocab,
                place(i / self.cfg.vocab)
            ))),
        }
    }

    pub fn cfg(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub(super) fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The weight type of layer `layer`'s stacked linear at `site` on the GPU.
    /// How the LM head's weights are held (the file's blocks under q4 when it has them).
    pub fn head_dtype(&self) -> DType {
        self.lm_head.dtype()
    }

    pub fn weight_dtype(&self, layer: usize, site: Site) -> DType {
        let l = &self.layers[layer];
        match site {
            Site::Qkv => l.qkv.w.dtype(),
            Site::O => l.o.w.dtype(),
            Site::GateUp => l.gate_up.w.dtype(),
            Site::Down => l.down.w.dtype(),
        }
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
                "{max_len} positions exceed the model's context of {} tokens ({})",
                self.cfg.max_positions, self.cfg.context_source
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
        Ok(KvCache::new(&self.gpu, k, v, max_len, rope))
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
        self.check_batch(batch, cache)?;
        let rt = RowTensors::new(&self.gpu, batch, None)?;
        let coef = self.coef(batch)?;
        let pass = self.pass(&rt, cache, coef.as_ref(), None);
        let h = self.record_body(rec, &pass, &rt.tokens, None)?;
        let b = batch.logits_rows.len();
        let wanted = Tensor::from_u32(&self.gpu, &[b], &batch.logits_rows, "logits rows")?;
        Ok(self.record_head(rec, &h, &wanted)?.logits)
    }

    /// The pass over rows `rt`: the attached adapters at the rows' coefficients `coef` (which
    /// `Llama::coef` makes), or the sequentially attached ones, and LoRA dropout when training.
    pub(super) fn pass<'a>(
        &'a self,
        rt: &'a RowTensors,
        cache: &'a KvCache,
        coef: Option<&'a Tensor>,
        dropout: Option<crate::kernels::dropout::Dropout>,
    ) -> Pass<'a> {
        let lora = if !self.lora_sequential.is_empty() {
            PassLora::Sequential(&self.lora_sequential)
        } else {
            match (self.lora.as_ref(), coef) {
                (Some(attached), Some(coef)) => PassLora::Fused { attached, coef },
                _ => PassLora::None,
            }
        };
        let spans = rt.spans.as_ref().map(|(start, len)| crate::kernels::attention::Spans { start, len });
        Pass {
            cfg: &self.cfg,
            rows: Rows { pos: &rt.pos, slot: &rt.slot },
            spans,
            cache,
            distinct_slots: rt.distinct_slots,
            lora,
            dropout,
        }
    }

    /// h = embed(tokens), then every layer: the final hidden states [R, hidden]. With `saves`,
    /// each layer's input and attention results are kept there for a backward.
    pub(super) fn record_body(
        &self,
        rec: &mut Recorder,
        pass: &Pass,
        tokens: &Tensor,
        mut saves: Option<&mut Vec<LayerSave>>,
    ) -> Result<Tensor> {
        let r = tokens.numel();
        let h = Tensor::zeros(&self.gpu, &[r, self.cfg.hidden], DType::F32, "h")?;
        let scratch = Scratch::new(rec, &self.cfg, r)?;
        let shared = if saves.is_none() { Some(AttnActs::new(rec, &self.cfg, r, false)?) } else { None };
        gather(rec, &self.embed, tokens, &h)?;
        for (i, layer) in self.layers.iter().enumerate() {
            match (&mut saves, &shared) {
                (Some(saves), _) => {
                    let save = LayerSave {
                        h_in: Tensor::zeros(&self.gpu, &[r, self.cfg.hidden], DType::F32, "h_in")?,
                        attn: AttnActs::new(rec, &self.cfg, r, true)?,
                    };
                    crate::kernels::elementwise::copy(rec, &h, &save.h_in)?;
                    layer.forward(rec, pass, i, &h, &scratch, &save.attn)?;
                    saves.push(save);
                }
                (None, Some(attn)) => layer.forward(rec, pass, i, &h, &scratch, attn)?,
                (None, None) => unreachable!("attention scratch exists when nothing is saved"),
            }
        }
        Ok(h)
    }

    /// The LM head over the rows `rows` of the final hidden states h: logits [rows, vocab] =
    /// rmsnorm(h[rows])·Wlmᵀ, with the gathered rows and their normalization.
    pub(super) fn record_head(&self, rec: &mut Recorder, h: &Tensor, rows: &Tensor) -> Result<Head> {
        let b = rows.numel();
        let t = |shape: &[usize], name: &str| Tensor::zeros(&self.gpu, shape, DType::F32, name);
        let head = Head {
            h: t(&[b, self.cfg.hidden], "last h")?,
            x: t(&[b, self.cfg.hidden], "last x")?,
            logits: t(&[b, self.cfg.vocab], "logits")?,
        };
        gather(rec, h, rows, &head.h)?;
        let x = Act::normed(&head.h, &self.norm, self.cfg.rms_eps as f32, &head.x, 0);
        matmul_act(rec, Form::Nt, &x, &self.lm_head, &head.logits, &MatmulOpts::default())?;
        Ok(head)
    }

    pub(super) fn lm_head(&self) -> &Matrix {
        &self.lm_head
    }

    pub(super) fn final_norm(&self) -> &Tensor {
        &self.norm
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
        if let Some((s, p)) =
            batch.slots.iter().zip(&batch.positions).find(|(s, p)| **p < cache.shared_len(**s as usize))
        {
            return Err(Error::Invalid(format!(
                "slot {s} reads its first {} keys from a shared prefix: position {p} is one of them",
                cache.shared_len(*s as usize)
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
