//! Fused base + multi-LoRA linear layers, forward and backward, and the two baselines every
//! benchmark shows beside them. PEFT shapes: Aᵢ is [rᵢ, K], Bᵢ is [N, rᵢ], scale sᵢ = alpha/rᵢ.
//!
//! All adapters of a layer are stacked: A = [A₁; A₂; …] is [Rp, K] and B = [B₁ B₂ …] is [N, Rp],
//! Rp = Σrᵢ rounded up to 4 with zero rows/columns. `seg[j]` names the adapter owning rank
//! column j, and `coef[m, i]` is the weight of adapter i on row m times its scale (λᵢ sᵢ for a
//! fusion, one-hot for a per-row adapter index, zero for "no adapter"). Then
//!
//!   forward:  T = coef ⊙ (X·Aᵀ)            (shrink, [M, Rp], kept for backward)
//!             Y = X·Wᵀ + T·Bᵀ              (base matmul with the expand in its epilogue)
//!   backward: G = coef ⊙ (dY·B)            [M, Rp]
//!             dX = dY·W + G·A              (base nn matmul with the LoRA term in its epilogue)
//!             dA = Gᵀ·X,  dB = dYᵀ·T       (tn matmuls: one invocation per gradient element,
//!                                           summing over M in a fixed order: deterministic)
//!
//! so a fused forward is two launches whatever the number of adapters, and Y is written once.
//! This file has no shader of its own: it composes the matmul kernels (their options carry the
//! LoRA parts) and lora_merge.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Layout, Matrix, Recorder, Tensor};
use crate::kernels::lora_merge;
use crate::kernels::matmul::pack;
use crate::kernels::matmul::{Act, Epilogue, Form, MatmulOpts, RowCoef, Variant, matmul, matmul_act, matmul_ref};

/// One adapter's weights on the host.
#[derive(Clone, Debug)]
pub struct HostAdapter {
    pub rank: usize,
    /// [rank, K]
    pub a: Vec<f32>,
    /// [N, rank]
    pub b: Vec<f32>,
    /// alpha / rank (or alpha / √rank for rsLoRA).
    pub scale: f32,
}

/// One adapter's factors for a run of the layer's output rows: the whole layer, or one
/// projection of a stacked one (q_proj's rows of a stacked q/k/v layer). A is [rank, K] and B
/// [rows.len(), rank].
#[derive(Clone, Debug)]
pub struct LoraBlock {
    pub adapter: usize,
    pub rank: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub rows: std::ops::Range<usize>,
}

/// Where a block sits in the stack: rank columns col..col+rank, output rows `rows`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockInfo {
    pub adapter: usize,
    pub col: usize,
    pub rank: usize,
    pub rows: std::ops::Range<usize>,
}

/// A block's factors as read back: A [rank, K], B [rows, rank].
#[derive(Clone, Debug)]
pub struct BlockFactors {
    pub info: BlockInfo,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// The adapters of one linear layer, stacked, on the GPU.
pub struct LoraStack {
    k: usize,
    n: usize,
    blocks: Vec<BlockInfo>,
    scales: Vec<f32>,
    rp: usize,
    /// The f32 master copies (what training updates): A [Rp, K], B [N, Rp].
    pub a_buf: Tensor,
    pub b_buf: Tensor,
    /// Adapter index of each rank column, [Rp] u32.
    pub seg: Tensor,
    /// [N, Rp]: 1 where an entry of B is a parameter (inside its block's rows), 0 elsewhere: B's
    /// gradient outside the blocks is not a gradient of anything.
    pub b_mask: Tensor,
    /// A and B where the kernels read them (the buffers themselves in the buffer layout).
    pub a: Matrix,
    pub b: Matrix,
}

impl LoraStack {
    /// Stacks `blocks` for a layer y = x·Wᵀ with W [n, k]; `scales[i]` is adapter i's
    /// lora_alpha / r (every adapter has one, whether or not it has a block here).
    pub fn from_blocks(
        gpu: &Gpu,
        layout: Layout,
        k: usize,
        n: usize,
        blocks: &[LoraBlock],
        scales: &[f32],
    ) -> Result<LoraStack> {
        let total: usize = blocks.iter().map(|b| b.rank).sum();
        let rp = total.max(1).div_ceil(4) * 4;
        let mut a = vec![0.0f32; rp * k];
        let mut b = vec![0.0f32; n * rp];
        let mut mask = vec![0.0f32; n * rp];
        let mut seg = vec![0u32; rp];
        let mut infos = Vec::with_capacity(blocks.len());
        let mut col = 0;
        for (i, blk) in blocks.iter().enumerate() {
            let h = blk.rows.len();
            if blk.a.len() != blk.rank * k
                || blk.b.len() != h * blk.rank
                || blk.rows.end > n
                || blk.adapter >= scales.len()
            {
                return Err(Error::shape(
                    "LoRA adapter",
                    format!(
                        "block {i} (adapter {}): A has {} values and B {} for rank {}, expected A [{}, {k}] and B [{h}, {}] within {n} rows",
                        blk.adapter,
                        blk.a.len(),
                        blk.b.len(),
                        blk.rank,
                        blk.rank,
                        blk.rank
                    ),
                ));
            }
            a[col * k..(col + blk.rank) * k].copy_from_slice(&blk.a);
            for (r, row) in blk.rows.clone().enumerate() {
                b[row * rp + col..row * rp + col + blk.rank].copy_from_slice(&blk.b[r * blk.rank..(r + 1) * blk.rank]);
                mask[row * rp + col..row * rp + col + blk.rank].fill(1.0);
            }
            seg[col..col + blk.rank].fill(blk.adapter as u32);
            infos.push(BlockInfo { adapter: blk.adapter, col, rank: blk.rank, rows: blk.rows.clone() });
            col += blk.rank;
        }
        let a_buf = Tensor::from_f32(gpu, &[rp, k], &a, "lora A")?;
        let b_buf = Tensor::from_f32(gpu, &[n, rp], &b, "lora B")?;
        let (am, bm) = match layout {
            Layout::Buffer => (Matrix::Buffer(a_buf.clone()), Matrix::Buffer(b_buf.clone())),
            Layout::Texture => (
                Matrix::from_host(gpu, layout, rp, k, &a, DType::F32, "lora A")?,
                Matrix::from_host(gpu, layout, n, rp, &b, DType::F32, "lora B")?,
            ),
        };
        Ok(LoraStack {
            k,
            n,
            blocks: infos,
            scales: scales.to_vec(),
            rp,
            a_buf,
            b_buf,
            seg: Tensor::from_u32(gpu, &[rp], &seg, "lora seg")?,
            b_mask: Tensor::from_f32(gpu, &[n, rp], &mask, "lora B mask")?,
            a: am,
            b: bm,
        })
    }

    /// One block per adapter covering every output row.
    pub fn new(gpu: &Gpu, layout: Layout, k: usize, n: usize, adapters: &[HostAdapter]) -> Result<LoraStack> {
        let blocks: Vec<LoraBlock> = adapters
            .iter()
            .enumerate()
            .map(|(i, ad)| LoraBlock { adapter: i, rank: ad.rank, a: ad.a.clone(), b: ad.b.clone(), rows: 0..n })
            .collect();
        let scales: Vec<f32> = adapters.iter().map(|a| a.scale).collect();
        LoraStack::from_blocks(gpu, layout, k, n, &blocks, &scales)
    }

    /// Re-packs the texture copies after the master buffers changed (an optimizer step).
    pub fn refresh(&self, rec: &mut Recorder) -> Result<()> {
        if let (Matrix::Texture(a), Matrix::Texture(b)) = (&self.a, &self.b) {
            pack::pack(rec, &self.a_buf, a)?;
            pack::pack(rec, &self.b_buf, b)?;
        }
        Ok(())
    }

    pub fn n_adapters(&self) -> usize {
        self.scales.len()
    }

    pub fn blocks(&self) -> &[BlockInfo] {
        &self.blocks
    }

    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Stacked rank, padded to a multiple of 4.
    pub fn rp(&self) -> usize {
        self.rp
    }

    /// Rank columns that belong to a block (the rest is padding).
    pub fn used_rank(&self) -> usize {
        self.blocks.iter().map(|b| b.rank).sum()
    }

    pub fn layout(&self) -> Layout {
        self.a.layout()
    }

    /// Adapter index of each rank column (host copy of `seg`).
    pub fn seg_host(&self) -> Vec<u32> {
        let mut seg = vec![0u32; self.rp];
        for b in &self.blocks {
            seg[b.col..b.col + b.rank].fill(b.adapter as u32);
        }
        seg
    }

    /// Each block's current factors, read back from the GPU.
    pub fn read_blocks(&self, gpu: &Gpu) -> Result<Vec<BlockFactors>> {
        let a = self.a_buf.read_f32(gpu)?;
        let b = self.b_buf.read_f32(gpu)?;
        Ok(self
            .blocks
            .iter()
            .map(|blk| {
                let fa = a[blk.col * self.k..(blk.col + blk.rank) * self.k].to_vec();
                let fb = blk
                    .rows
                    .clone()
                    .flat_map(|row| b[row * self.rp + blk.col..row * self.rp + blk.col + blk.rank].to_vec())
                    .collect();
                BlockFactors { info: blk.clone(), a: fa, b: fb }
            })
            .collect())
    }
}

/// How the adapters apply to the rows of a batch.
#[derive(Clone, Debug)]
pub enum Mix {
    /// Every row uses every adapter, adapter i with weight λᵢ (a fusion).
    All(Vec<f32>),
    /// Row m uses adapter `index[m]` at weight 1, or none.
    PerRow(Vec<Option<usize>>),
    /// Explicit weights, [M, n_adapters] row-major (each prompt its own mix).
    Rows(Vec<f32>),
}

impl Mix {
    /// coef [M, n_adapters] = weight × scale, for a stack with `scales`.
    pub fn coef(&self, m: usize, scales: &[f32]) -> Result<Vec<f32>> {
        let na = scales.len();
        let mut c = vec![0.0f32; m * na];
        match self {
            Mix::All(w) => {
                if w.len() != na {
                    return Err(Error::shape("LoRA mix", format!("{} weights for {na} adapters", w.len())));
                }
                for row in c.chunks_mut(na.max(1)) {
                    for i in 0..na {
                        row[i] = w[i] * scales[i];
                    }
                }
            }
            Mix::PerRow(idx) => {
                if idx.len() != m {
                    return Err(Error::shape("LoRA mix", format!("{} row indices for {m} rows", idx.len())));
                }
                for (r, ix) in idx.iter().enumerate() {
                    if let Some(i) = *ix {
                        if i >= na {
                            return Err(Error::shape("LoRA mix", format!("row {r} names adapter {i} of {na}")));
                        }
                        c[r * na + i] = scales[i];
                    }
                }
            }
            Mix::Rows(w) => {
                if w.len() != m * na {
                    return Err(Error::shape("LoRA mix", format!("{} weights for {m} rows × {na} adapters", w.len())));
                }
                for (i, v) in c.iter_mut().enumerate() {
                    *v = w[i] * scales[i % na];
                }
            }
        }
        Ok(c)
    }

    pub fn coef_tensor(&self, gpu: &Gpu, m: usize, lora: &LoraStack) -> Result<Tensor> {
        let c = self.coef(m, &lora.scales)?;
        // A stack with no adapters still binds a (zero) one-column coefficient tensor.
        let (cols, c) = if lora.n_adapters() == 0 { (1, vec![0.0; m]) } else { (lora.n_adapters(), c) };
        Tensor::from_f32(gpu, &[m, cols], &c, "lora coef")
    }
}

fn check_stack(op: &str, w: &Matrix, lora: &LoraStack) -> Result<()> {
    if (w.rows(), w.cols()) != (lora.n, lora.k) {
        return Err(Error::shape(
            op,
            format!("weight [{}, {}] but adapters for [{}, {}]", w.rows(), w.cols(), lora.n, lora.k),
        ));
    }
    if w.layout() != lora.layout() {
        return Err(Error::Invalid(format!(
            "{op}: the weight is in a {} layout and the adapters in a {} layout",
            w.layout().name(),
            lora.layout().name()
        )));
    }
    Ok(())
}

/// The operands of a fused base + LoRA product besides its input and output: the weight, the
/// adapters, the per-row coefficients [M, n_adapters], and T [M, Rp] (the forward writes it, the
/// backward reads it).
pub struct FusedLinear<'a> {
    pub w: &'a Matrix,
    pub lora: &'a LoraStack,
    pub coef: &'a Tensor,
    pub t: &'a Tensor,
}

/// Fused forward: Y = X·Wᵀ + Σᵢ coef[:, i] ⊙ (X·Aᵢᵀ)·Bᵢᵀ, writing T = coef ⊙ (X·Aᵀ) [M, Rp]
/// for the backward. Two launches (plus one activation pack on the texture path).
pub fn lora_forward(
    rec: &mut Recorder,
    f: &FusedLinear,
    x: &Tensor,
    y: &Tensor,
    variant: Option<Variant>,
) -> Result<()> {
    fused_forward(rec, f, &Act::new(x, 0), None, y, &MatmulOpts { variant, ..Default::default() })
}

/// y (+)= x·Wᵀ + coef ⊙ (x_lora·Aᵀ)·Bᵀ with T written: the adapters read their own input when
/// `x_lora` is given (x after LoRA dropout), else x. `base` carries accumulation and a forced
/// variant.
pub(crate) fn fused_forward(
    rec: &mut Recorder,
    f: &FusedLinear,
    x: &Act,
    x_lora: Option<&Act>,
    y: &Tensor,
    base: &MatmulOpts,
) -> Result<()> {
    check_stack("fused LoRA forward", f.w, f.lora)?;
    let shrink = MatmulOpts {
        row_coef: Some(RowCoef { coef: f.coef, seg: &f.lora.seg }),
        variant: base.variant,
        ..Default::default()
    };
    matmul_act(rec, Form::Nt, x_lora.unwrap_or(x), &f.lora.a, f.t, &shrink)?;
    let base = MatmulOpts { epilogue: Some(Epilogue { t: f.t, b: &f.lora.b }), ..*base };
    matmul_act(rec, Form::Nt, x, f.w, y, &base)
}

/// One adapter of the sequential baseline: its own A [r, K] and B [N, r], applied with
/// `weight` = λ·s.
pub struct SeqAdapter<'a> {
    pub a: &'a Matrix,
    pub b: &'a Matrix,
    pub weight: f32,
}

/// The sequential baseline's operands: the base weight, the adapters with a scratch T [M, rᵢ]
/// each, and whether Y is added to.
pub struct Sequential<'a> {
    pub w: &'a Matrix,
    pub adapters: &'a [SeqAdapter<'a>],
    pub ts: &'a [Tensor],
    pub accumulate: bool,
}

/// Sequential baseline: Y (+)= X·Wᵀ, then per adapter a shrink Tᵢ = X·Aᵢᵀ and an expand-and-add
/// Y += wᵢ Tᵢ·Bᵢᵀ, each its own launch and its own pass over Y.
pub fn lora_sequential(rec: &mut Recorder, s: &Sequential, x: &Tensor, y: &Tensor) -> Result<()> {
    if s.ts.len() != s.adapters.len() {
        return Err(Error::shape(
            "sequential LoRA",
            format!("{} scratch tensors for {} adapters", s.ts.len(), s.adapters.len()),
        ));
    }
    let act = Act::new(x, 0);
    matmul_act(rec, Form::Nt, &act, s.w, y, &MatmulOpts { accumulate: s.accumulate, ..Default::default() })?;
    for (ad, t) in s.adapters.iter().zip(s.ts) {
        matmul_act(rec, Form::Nt, &act, ad.a, t, &MatmulOpts::default())?;
        let expand = MatmulOpts { alpha: ad.weight, accumulate: true, ..Default::default() };
        // The expand is an ordinary product with a short inner dimension; on the texture path
        // the tuner's choice packs Tᵢ (a second scratch slot: X's pack stays valid).
        let tp = Act::new(t, 1);
        matmul_act(rec, Form::Nt, &tp, ad.b, y, &expand)?;
    }
    Ok(())
}

/// Merged baseline: out = W + B·diag(c)·A with c[j] = λ·s of rank column j's adapter (a uniform
/// fusion). `w` is the base weight as a buffer (f32 or f16); `out` f32 or f16 [N, K].
pub fn lora_merge(rec: &mut Recorder, w: &Tensor, lora: &LoraStack, weights: &[f32], out: &Tensor) -> Result<()> {
    if weights.len() != lora.n_adapters() {
        return Err(Error::shape(
            "LoRA merge",
            format!("{} weights for {} adapters", weights.len(), lora.n_adapters()),
        ));
    }
    let seg = lora.seg_host();
    let total = lora.used_rank();
    let c: Vec<f32> = (0..lora.rp)
        .map(|j| if j < total { weights[seg[j] as usize] * lora.scales[seg[j] as usize] } else { 0.0 })
        .collect();
    let ct = Tensor::from_f32(rec.gpu(), &[lora.rp], &c, "merge coef")?;
    lora_merge::merge(rec, w, &lora.a_buf, &lora.b_buf, &ct, out)
}

/// Gradients of the LoRA layer. `dx` is skipped when None (the first layer's input needs none).
/// With `accumulate`, dA and dB are added to (gradient accumulation over micro-batches).
pub struct LoraGrads<'a> {
    pub dx: Option<&'a Tensor>,
    /// [Rp, K]
    pub da: &'a Tensor,
    /// [N, Rp]
    pub db: &'a Tensor,
    /// G = coef ⊙ (dY·B), [M, Rp] scratch.
    pub g: &'a Tensor,
    pub accumulate: bool,
}

/// Backward of `lora_forward` with the base frozen, for the forward's input `x` and T (in `f`).
/// `variant` forces the nn launches; `tn_variant` the gradient reductions.
pub fn lora_backward(
    rec: &mut Recorder,
    f: &FusedLinear,
    dy: &Tensor,
    x: &Tensor,
    grads: &LoraGrads,
    variant: Option<Variant>,
    tn_variant: Option<Variant>,
) -> Result<()> {
    let (w, lora, coef, g) = (f.w, f.lora, f.coef, grads.g);
    check_stack("fused LoRA backward", w, lora)?;
    let act = Act::new(dy, 0);
    let shrink = MatmulOpts { row_coef: Some(RowCoef { coef, seg: &lora.seg }), variant, ..Default::default() };
    matmul_act(rec, Form::Nn, &act, &lora.b, g, &shrink)?;
    if let Some(dx) = grads.dx {
        let base = MatmulOpts { epilogue: Some(Epilogue { t: g, b: &lora.a }), variant, ..Default::default() };
        matmul_act(rec, Form::Nn, &act, w, dx, &base)?;
    }
    let tn = MatmulOpts { variant: tn_variant, accumulate: grads.accumulate, ..Default::default() };
    matmul(rec, Form::Tn, g, &Matrix::Buffer(x.clone()), grads.da, &tn)?;
    matmul(rec, Form::Tn, dy, &Matrix::Buffer(f.t.clone()), grads.db, &tn)
}

/// Host copies of a stack's operands for the CPU references.
pub struct RefStack<'a> {
    pub k: usize,
    pub n: usize,
    pub rp: usize,
    /// [Rp, K]
    pub a: &'a [f32],
    /// [N, Rp]
    pub b: &'a [f32],
    pub seg: &'a [u32],
    /// [M, n_adapters]
    pub coef: &'a [f32],
    pub n_adapters: usize,
}

impl RefStack<'_> {
    /// T = coef ⊙ (X·Aᵀ), f64.
    pub fn t(&self, m: usize, x: &[f32]) -> Vec<f64> {
        let xa = matmul_ref(Form::Nt, m, self.rp, self.k, x, self.a);
        (0..m * self.rp)
            .map(|i| xa[i] * self.coef[(i / self.rp) * self.n_adapters + self.seg[i % self.rp] as usize] as f64)
            .collect()
    }
}

/// CPU reference of the fused forward (f64): returns (Y, T).
pub fn lora_forward_ref(m: usize, x: &[f32], w: &[f32], s: &RefStack) -> (Vec<f64>, Vec<f64>) {
    let t = s.t(m, x);
    let mut y = matmul_ref(Form::Nt, m, s.n, s.k, x, w);
    for row in 0..m {
        for col in 0..s.n {
            let mut acc = 0.0;
            for j in 0..s.rp {
                acc += t[row * s.rp + j] * s.b[col * s.rp + j] as f64;
            }
            y[row * s.n + col] += acc;
        }
    }
    (y, t)
}

/// CPU reference of the backward (f64): returns (dX, dA, dB).
pub fn lora_backward_ref(m: usize, dy: &[f32], x: &[f32], w: &[f32], s: &RefStack) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (k, n, rp) = (s.k, s.n, s.rp);
    let dyb = matmul_ref(Form::Nn, m, rp, n, dy, s.b);
    let g: Vec<f64> =
        (0..m * rp).map(|i| dyb[i] * s.coef[(i / rp) * s.n_adapters + s.seg[i % rp] as usize] as f64).collect();
    let mut dx = matmul_ref(Form::Nn, m, k, n, dy, w);
    for row in 0..m {
        for col in 0..k {
            let mut acc = 0.0;
            for j in 0..rp {
                acc += g[row * rp + j] * s.a[j * k + col] as f64;
            }
            dx[row * k + col] += acc;
        }
    }
    let mut da = vec![0.0; rp * k];
    for row in 0..m {
        for j in 0..rp {
            for col in 0..k {
                da[j * k + col] += g[row * rp + j] * x[row * k + col] as f64;
            }
        }
    }
    let t = s.t(m, x);
    let mut db = vec![0.0; n * rp];
    for row in 0..m {
        for col in 0..n {
            for j in 0..rp {
                db[col * rp + j] += dy[row * n + col] as f64 * t[row * rp + j];
            }
        }
    }
    (dx, da, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng_vec(seed: u64, n: usize) -> Vec<f32> {
        crate::rng::Rng::new(seed, 0).vec(n, 0.5)
    }

    /// The analytic backward reference against central finite differences of the forward
    /// reference, for L = Σ dY ⊙ Y: checks the maths every GPU backward is compared with.
    #[test]
    fn backward_reference_matches_finite_differences() {
        let (m, k, n, rp, na) = (3, 5, 4, 4, 2);
        let x = rng_vec(1, m * k);
        let w = rng_vec(2, n * k);
        let a = rng_vec(3, rp * k);
        let b = rng_vec(4, n * rp);
        let dy = rng_vec(5, m * n);
        let coef = rng_vec(6, m * na);
        let seg = [0u32, 0, 1, 1];
        let stack = |a: &[f32], b: &[f32]| -> f64 {
            let s = RefStack { k, n, rp, a, b, seg: &seg, coef: &coef, n_adapters: na };
            let (y, _) = lora_forward_ref(m, &x, &w, &s);
            y.iter().zip(&dy).map(|(y, d)| y * *d as f64).sum()
        };
        let loss_x = |x: &[f32]| -> f64 {
            let s = RefStack { k, n, rp, a: &a, b: &b, seg: &seg, coef: &coef, n_adapters: na };
            let (y, _) = lora_forward_ref(m, x, &w, &s);
            y.iter().zip(&dy).map(|(y, d)| y * *d as f64).sum()
        };
        let s = RefStack { k, n, rp, a: &a, b: &b, seg: &seg, coef: &coef, n_adapters: na };
        let (dx, da, db) = lora_backward_ref(m, &dy, &x, &w, &s);
        let h = 1e-3f32;
        let fd = |f: &dyn Fn(&[f32]) -> f64, v: &[f32], i: usize| {
            let mut p = v.to_vec();
            let mut q = v.to_vec();
            p[i] += h;
            q[i] -= h;
            (f(&p) - f(&q)) / (p[i] as f64 - q[i] as f64)
        };
        for (i, want) in da.iter().enumerate() {
            let g = fd(&|v: &[f32]| stack(v, &b), &a, i);
            assert!((g - want).abs() < 1e-3, "dA[{i}]: fd {g} vs {want}");
        }
        for (i, want) in db.iter().enumerate() {
            let g = fd(&|v: &[f32]| stack(&a, v), &b, i);
            assert!((g - want).abs() < 1e-3, "dB[{i}]: fd {g} vs {want}");
        }
        for (i, want) in dx.iter().enumerate() {
            let g = fd(&loss_x, &x, i);
            assert!((g - want).abs() < 1e-3, "dX[{i}]: fd {g} vs {want}");
        }
    }

    #[test]
    fn mix_coefficients() {
        let scales = [2.0, 0.5];
        assert_eq!(Mix::All(vec![0.6, 0.4]).coef(2, &scales).unwrap(), vec![1.2, 0.2, 1.2, 0.2]);
        assert_eq!(Mix::PerRow(vec![Some(1), None]).coef(2, &scales).unwrap(), vec![0.0, 0.5, 0.0, 0.0]);
        assert!(Mix::PerRow(vec![Some(2)]).coef(1, &scales).is_err());
        assert!(Mix::All(vec![1.0]).coef(1, &scales).is_err());
    }
}
