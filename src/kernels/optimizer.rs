//! Launchers for shaders/optimizer.wgsl (gradient norm partials, AdamW) and their CPU
//! references.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, PipelineKey, Recorder, Resource, Tensor, Work, flat_grid};

const CHUNK: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    wd: f32,
    bc1: f32,
    bc2: f32,
    grad_scale: f32,
}

/// AdamW hyper-parameters (PyTorch's defaults but the learning rate).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// One parameter tensor under AdamW: the parameter, its gradient (counted only where `mask` is
/// 1, when given), and its first and second moments, all of one shape.
pub struct AdamwState<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub mask: Option<&'a Tensor>,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
}

/// The host side of an `AdamwState`, for the CPU reference (updated in place).
pub struct HostAdamw<'a> {
    pub param: &'a mut [f64],
    pub grad: &'a [f32],
    pub mask: Option<&'a [f32]>,
    pub m: &'a mut [f64],
    pub v: &'a mut [f64],
}

fn check(op: &str, g: &Tensor, mask: Option<&Tensor>) -> Result<()> {
    g.expect_dtype(op, "gradient", &[DType::F32])?;
    if let Some(m) = mask
        && (m.numel() != g.numel() || m.dtype() != DType::F32)
    {
        return Err(Error::shape(op, format!("mask {:?} for gradient {:?}", m.shape(), g.shape())));
    }
    Ok(())
}

/// Partial sums of squares of (mask ⊙) g into `partials` ([⌈n/256⌉] f32; add them in order).
pub fn sumsq(rec: &mut Recorder, g: &Tensor, mask: Option<&Tensor>, partials: &Tensor) -> Result<()> {
    let op = "gradient norm";
    check(op, g, mask)?;
    let chunks = g.numel().div_ceil(CHUNK);
    if partials.numel() != chunks {
        return Err(Error::shape(op, format!("{} partials for {} chunks", partials.numel(), chunks)));
    }
    let defines: Defines = mask.map(|_| ("MASK", 1)).into_iter().collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("optimizer", "sumsq", &defines))?;
    let mut binds = vec![(1, Resource::from(g)), (6, partials.into())];
    if let Some(m) = mask {
        binds.push((2, m.into()));
    }
    let params = Params { n: g.numel() as u32, ..Default::default() };
    let work = Work { flops: 2 * g.numel() as u64, bytes: g.bytes() };
    rec.dispatch(pipeline, &params, binds, flat_grid(rec.gpu(), chunks), "grad_sumsq", work)
}

/// Number of partials `sumsq` writes for `n` elements.
pub fn sumsq_partials(n: usize) -> usize {
    n.div_ceil(CHUNK)
}

/// One AdamW step (step number `t`, from 1) on `s`, its gradient scaled by `grad_scale`.
pub fn adamw(rec: &mut Recorder, hp: &AdamW, t: u32, grad_scale: f32, s: &AdamwState) -> Result<()> {
    let (param, g, mask, m, v) = (s.param, s.grad, s.mask, s.m, s.v);
    let op = "AdamW";
    check(op, g, mask)?;
    if param.shape() != g.shape() || m.shape() != g.shape() || v.shape() != g.shape() {
        return Err(Error::shape(
            op,
            format!("param {:?}, grad {:?}, moments {:?}/{:?}", param.shape(), g.shape(), m.shape(), v.shape()),
        ));
    }
    let mut defines: Defines = [("ADAMW", 1)].into_iter().collect();
    if mask.is_some() {
        defines.insert("MASK", 1);
    }
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("optimizer", "adamw", &defines))?;
    let mut binds = vec![(1, Resource::from(g)), (3, param.into()), (4, m.into()), (5, v.into())];
    if let Some(mk) = mask {
        binds.push((2, mk.into()));
    }
    let params = Params {
        n: g.numel() as u32,
        lr: hp.lr,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        wd: hp.weight_decay,
        bc1: 1.0 - hp.beta1.powi(t as i32),
        bc2: 1.0 - hp.beta2.powi(t as i32),
        grad_scale,
    };
    let work = Work { flops: 16 * g.numel() as u64, bytes: 7 * g.bytes() };
    rec.dispatch(pipeline, &params, binds, flat_grid(rec.gpu(), g.numel()), "adamw", work)
}

/// CPU reference of one AdamW step (f64), updating the parameter and moments in place.
pub fn adamw_ref(hp: &AdamW, t: u32, grad_scale: f64, s: HostAdamw) {
    let HostAdamw { param: p, grad: g, mask, m, v } = s;
    let (b1, b2) = (hp.beta1 as f64, hp.beta2 as f64);
    let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
    for i in 0..p.len() {
        let gi = g[i] as f64 * mask.map_or(1.0, |mk| mk[i] as f64) * grad_scale;
        p[i] *= 1.0 - hp.lr as f64 * hp.weight_decay as f64;
        m[i] = b1 * m[i] + (1.0 - b1) * gi;
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        p[i] -= hp.lr as f64 / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + hp.eps as f64);
    }
}
