//! Launchers for shaders/elementwise.wgsl (SwiGLU gate, bias add) and their CPU references.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, PipelineKey, Recorder, Tensor, Work, fold_grid};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
}

/// out = silu(gate) ⊙ up, where gate_up [R, 2F] holds gate then up (the fused projection's
/// output) and out is [R, F], all f32.
pub fn swiglu(rec: &mut Recorder, gate_up: &Tensor, out: &Tensor) -> Result<()> {
    let (r, f) = out.dims2("swiglu")?;
    if gate_up.shape() != [r, 2 * f] {
        return Err(Error::shape("swiglu", format!("gate_up {:?} for out {:?}", gate_up.shape(), out.shape())));
    }
    for (t, name) in [(gate_up, "gate_up"), (out, "out")] {
        t.expect_dtype("swiglu", name, &[DType::F32])?;
    }
    let defines: Defines = [("SWIGLU", 1)].into_iter().collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("elementwise", "main", &defines))?;
    let grid = fold_grid(rec.gpu(), (f as u32).div_ceil(64), r as u32);
    let work = Work { flops: 5 * (r * f) as u64, bytes: 3 * out.bytes() };
    let binds = vec![(1, gate_up.into()), (3, out.into())];
    rec.dispatch(pipeline, &Params { rows: r as u32, cols: f as u32 }, binds, grid, "swiglu", work)
}

/// d gate_up [R, 2F] from d out [R, F] through out = silu(gate) ⊙ up (gate_up as in `swiglu`).
pub fn swiglu_backward(rec: &mut Recorder, gate_up: &Tensor, dout: &Tensor, dgate_up: &Tensor) -> Result<()> {
    let op = "swiglu backward";
    let (r, f) = dout.dims2(op)?;
    if gate_up.shape() != [r, 2 * f] || dgate_up.shape() != gate_up.shape() {
        return Err(Error::shape(
            op,
            format!("gate_up {:?}, dout {:?}, dgate_up {:?}", gate_up.shape(), dout.shape(), dgate_up.shape()),
        ));
    }
    for (t, name) in [(gate_up, "gate_up"), (dout, "dout"), (dgate_up, "dgate_up")] {
        t.expect_dtype(op, name, &[DType::F32])?;
    }
    let defines: Defines = [("SWIGLU_BACKWARD", 1)].into_iter().collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("elementwise", "main", &defines))?;
    let grid = fold_grid(rec.gpu(), (f as u32).div_ceil(64), r as u32);
    let work = Work { flops: 12 * (r * f) as u64, bytes: 5 * dout.bytes() };
    let binds = vec![(1, gate_up.into()), (2, dout.into()), (3, dgate_up.into())];
    rec.dispatch(pipeline, &Params { rows: r as u32, cols: f as u32 }, binds, grid, "swiglu_backward", work)
}

/// CPU reference of the SwiGLU backward (f64): d gate_up rows [dg | du].
pub fn swiglu_backward_ref(gate_up: &[f32], dout: &[f32], f: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(gate_up.len());
    for (gu, d) in gate_up.chunks(2 * f).zip(dout.chunks(f)) {
        let (g, u) = gu.split_at(f);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        out.extend((0..f).map(|j| {
            let (g, u, d) = (g[j] as f64, u[j] as f64, d[j] as f64);
            d * u * sig(g) * (1.0 + g * (1.0 - sig(g)))
        }));
        out.extend((0..f).map(|j| d[j] as f64 * g[j] as f64 * sig(g[j] as f64)));
    }
    out
}

/// y[r, :] += bias, y [R, N], bias [N].
pub fn add_bias(rec: &mut Recorder, y: &Tensor, bias: &Tensor) -> Result<()> {
    let (r, n) = y.dims2("add_bias")?;
    if bias.numel() != n {
        return Err(Error::shape("add_bias", format!("bias {:?} for rows of {n}", bias.shape())));
    }
    let defines: Defines = [("BIAS", 1)].into_iter().collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("elementwise", "main", &defines))?;
    let grid = fold_grid(rec.gpu(), (n as u32).div_ceil(64), r as u32);
    let work = Work { flops: (r * n) as u64, bytes: 2 * y.bytes() };
    rec.dispatch(
        pipeline,
        &Params { rows: r as u32, cols: n as u32 },
        vec![(1, bias.into()), (3, y.into())],
        grid,
        "add_bias",
        work,
    )
}

/// out = a, both [R, N] f32 (a copy of an activation kept for the backward pass).
pub fn copy(rec: &mut Recorder, a: &Tensor, out: &Tensor) -> Result<()> {
    let (r, n) = a.dims2("copy")?;
    if out.shape() != a.shape() || a.dtype() != DType::F32 || out.dtype() != DType::F32 {
        return Err(Error::shape("copy", format!("{a:?} into {out:?}")));
    }
    let defines: Defines = [("COPY", 1)].into_iter().collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("elementwise", "main", &defines))?;
    let grid = fold_grid(rec.gpu(), (n as u32).div_ceil(64), r as u32);
    let work = Work { flops: 0, bytes: 2 * a.bytes() };
    rec.dispatch(
        pipeline,
        &Params { rows: r as u32, cols: n as u32 },
        vec![(1, a.into()), (3, out.into())],
        grid,
        "copy",
        work,
    )
}

/// CPU reference of silu(g)·u.
pub fn swiglu_ref(gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| (g as f64) / (1.0 + (-(g as f64)).exp()) * u as f64).collect()
}
