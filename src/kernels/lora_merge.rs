//! Launcher for shaders/lora_merge.wgsl: W' = W + Σᵢ λᵢ sᵢ Bᵢ Aᵢ, and its CPU reference.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, PipelineKey, Recorder, Resource, Tensor, Work, flat_grid};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    k: u32,
    rp: u32,
    words: u32,
}

/// out[N,K] = w[N,K] + b[N,Rp] · diag(c) · a[Rp,K]. `w` is f32 or f16; `out` f32 or f16; a, b, c
/// f32 (c: one coefficient per rank column, λ·s of its adapter).
pub fn merge(rec: &mut Recorder, w: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor, out: &Tensor) -> Result<()> {
    let op = "lora merge";
    let (n, k) = w.dims2(op)?;
    let (rp, ak) = a.dims2(op)?;
    if ak != k || b.shape() != [n, rp] || c.numel() != rp || out.shape() != [n, k] {
        return Err(Error::shape(
            op,
            format!(
                "W {:?}, A {:?}, B {:?}, c {:?}, out {:?}: expected A [R, {k}], B [{n}, R], c [R], out [{n}, {k}]",
                w.shape(),
                a.shape(),
                b.shape(),
                c.shape(),
                out.shape()
            ),
        ));
    }
    w.expect_dtype(op, "W", &[DType::F32, DType::F16])?;
    out.expect_dtype(op, "output", &[DType::F32, DType::F16])?;
    for (t, name) in [(a, "A"), (b, "B"), (c, "c")] {
        t.expect_dtype(op, name, &[DType::F32])?;
    }
    let out_f16 = out.dtype() == DType::F16;
    let words = if out_f16 { (n * k).div_ceil(2) } else { n * k } as u32;
    let defines: Defines = [("W_F16", (w.dtype() == DType::F16) as u32), ("OUT_F16", out_f16 as u32)]
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("lora_merge", "main", &defines))?;
    let grid = flat_grid(rec.gpu(), words as usize);
    let params = Params { n: n as u32, k: k as u32, rp: rp as u32, words };
    let work = Work { flops: 3 * (n * k * rp) as u64, bytes: w.bytes() + out.bytes() + a.bytes() + b.bytes() };
    rec.dispatch(
        pipeline,
        &params,
        vec![
            (1, Resource::from(w)),
            (2, Resource::from(a)),
            (3, Resource::from(b)),
            (4, Resource::from(c)),
            (5, Resource::from(out)),
        ],
        grid,
        "lora_merge",
        work,
    )
}

/// CPU reference (f64): w + b · diag(c) · a.
pub fn merge_ref(w: &[f32], a: &[f32], b: &[f32], c: &[f32], n: usize, k: usize, rp: usize) -> Vec<f64> {
    let mut out: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    for row in 0..n {
        for j in 0..rp {
            let bc = b[row * rp + j] as f64 * c[j] as f64;
            if bc == 0.0 {
                continue;
            }
            for col in 0..k {
                out[row * k + col] += bc * a[j * k + col] as f64;
            }
        }
    }
    out
}
