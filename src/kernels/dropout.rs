//! Launcher for shaders/dropout.wgsl (inverted dropout with a regenerable mask) and its CPU
//! reference.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, PipelineKey, Recorder, Tensor, Work, flat_grid};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
}

/// A dropout mask: drop probability `p` in [0, 1), drawn from `seed`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

impl Dropout {
    /// An independent mask for stream `n` of this one (one per layer and stacked linear).
    pub fn stream(&self, n: u64) -> Dropout {
        Dropout { p: self.p, seed: crate::rng::Rng::new(self.seed, n).next_u64() }
    }

    fn threshold(&self) -> u32 {
        (self.p as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
    }

    fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.p as f64)) as f32
    }
}

/// out (+)= a ⊙ mask / (1 − p), a and out f32 of the same shape (accumulating when asked: the
/// backward adds the masked gradient to one already there).
pub fn dropout(rec: &mut Recorder, d: &Dropout, a: &Tensor, out: &Tensor, accumulate: bool) -> Result<()> {
    let op = "dropout";
    if !(0.0..1.0).contains(&d.p) {
        return Err(Error::Invalid(format!("{op}: probability {} is outside [0, 1)", d.p)));
    }
    if a.shape() != out.shape() || a.dtype() != DType::F32 || out.dtype() != DType::F32 {
        return Err(Error::shape(op, format!("{a:?} into {out:?}")));
    }
    let n = a.numel();
    let defines: Defines = accumulate.then_some(("ACCUMULATE", 1)).into_iter().collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("dropout", "main", &defines))?;
    let grid = flat_grid(rec.gpu(), n);
    let params = Params {
        n: n as u32,
        seed_lo: d.seed as u32,
        seed_hi: (d.seed >> 32) as u32,
        threshold: d.threshold(),
        scale: d.scale(),
    };
    let work = Work { flops: n as u64, bytes: (2 + accumulate as u64) * a.bytes() };
    rec.dispatch(pipeline, &params, vec![(1, a.into()), (2, out.into())], grid, op, work)
}

fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// CPU reference: whether element i survives (the shader's hash, bit for bit).
pub fn keep_ref(d: &Dropout, i: u32) -> bool {
    fmix(fmix(i ^ d.seed as u32) ^ (d.seed >> 32) as u32) >= d.threshold()
}

/// CPU reference of `dropout` without accumulation.
pub fn dropout_ref(d: &Dropout, a: &[f32]) -> Vec<f32> {
    a.iter().enumerate().map(|(i, &x)| if keep_ref(d, i as u32) { x * d.scale() } else { 0.0 }).collect()
}
