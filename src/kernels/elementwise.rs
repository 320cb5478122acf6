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

/// y[r, :] += bias, y [R, N], bias [N].
pub fn add_bias(rec: &mut Recorder, y: &Tensor, bias: &Tensor) -> Result<()> {
    let (r, n) = y.dims2("add_bias")?;
    if bias.numel() != n {
        return Err(Error::shape("add_bias", format!("bias {:?} for rows of {n}", bias.shape())));
    }
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("elementwise", "main", &Defines::new()))?;
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

/// CPU reference of silu(g)·u.
pub fn swiglu_ref(gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| (g as f64) / (1.0 + (-(g as f64)).exp()) * u as f64).collect()
}
