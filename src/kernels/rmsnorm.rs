//! Launcher for shaders/rmsnorm.wgsl and its CPU reference.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, PipelineKey, Recorder, Tensor, Work, flat_grid};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    h: u32,
    eps: f32,
}

/// out = x / rms(x) · w over the last dimension. x, out [R, H] f32; w [H] f32.
pub fn rmsnorm(rec: &mut Recorder, x: &Tensor, w: &Tensor, out: &Tensor, eps: f32) -> Result<()> {
    let (r, h) = x.dims2("rmsnorm")?;
    if w.numel() != h || out.shape() != x.shape() {
        return Err(Error::shape(
            "rmsnorm",
            format!("x {:?}, weight {:?}, out {:?}", x.shape(), w.shape(), out.shape()),
        ));
    }
    for (t, name) in [(x, "x"), (w, "weight"), (out, "out")] {
        t.expect_dtype("rmsnorm", name, &[DType::F32])?;
    }
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("rmsnorm", "rmsnorm", &Defines::new()))?;
    let grid = flat_grid(rec.gpu(), r);
    let params = Params { rows: r as u32, h: h as u32, eps };
    let work = Work { flops: 4 * (r * h) as u64, bytes: 2 * x.bytes() + w.bytes() };
    rec.dispatch(pipeline, &params, vec![(1, x.into()), (2, w.into()), (3, out.into())], grid, "rmsnorm", work)
}

/// dx (+)= the gradient of rmsnorm(x)·w against x, given dy; all [R, H] f32 but w [H]. With
/// `accumulate` it adds into dx (the residual stream's gradient).
pub fn rmsnorm_backward(
    rec: &mut Recorder,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    eps: f32,
    accumulate: bool,
) -> Result<()> {
    let op = "rmsnorm backward";
    let (r, h) = x.dims2(op)?;
    if w.numel() != h || dy.shape() != x.shape() || dx.shape() != x.shape() {
        return Err(Error::shape(
            op,
            format!("x {:?}, weight {:?}, dy {:?}, dx {:?}", x.shape(), w.shape(), dy.shape(), dx.shape()),
        ));
    }
    for (t, name) in [(x, "x"), (w, "weight"), (dy, "dy"), (dx, "dx")] {
        t.expect_dtype(op, name, &[DType::F32])?;
    }
    let defines: Defines =
        [("BACKWARD", 1), ("ACCUMULATE", accumulate as u32)].into_iter().filter(|(_, v)| *v != 0).collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("rmsnorm", "rmsnorm_backward", &defines))?;
    let grid = flat_grid(rec.gpu(), r);
    let params = Params { rows: r as u32, h: h as u32, eps };
    let work = Work { flops: 8 * (r * h) as u64, bytes: 4 * x.bytes() };
    let binds = vec![(1, x.into()), (2, w.into()), (3, dx.into()), (4, dy.into())];
    rec.dispatch(pipeline, &params, binds, grid, "rmsnorm_backward", work)
}

/// CPU reference of the backward (f64): dx for x, w, dy.
pub fn rmsnorm_backward_ref(x: &[f32], w: &[f32], dy: &[f32], eps: f64) -> Vec<f64> {
    let h = w.len();
    let mut dx = Vec::with_capacity(x.len());
    for (row, drow) in x.chunks(h).zip(dy.chunks(h)) {
        let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / h as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        let s: f64 = (0..h).map(|i| w[i] as f64 * drow[i] as f64 * row[i] as f64).sum();
        let c = inv * inv * inv * s / h as f64;
        dx.extend((0..h).map(|i| inv * w[i] as f64 * drow[i] as f64 - row[i] as f64 * c));
    }
    dx
}

/// CPU reference (f64 accumulation).
pub fn rmsnorm_ref(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
    let h = w.len();
    x.chunks(h)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / h as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(&v, &g)| v as f64 * inv * g as f64)
        })
        .collect()
}
