//! Launcher for shaders/matmul_tiled.wgsl: 64×64 shared-memory tiles, the classic GPU design.
//! On lavapipe its barriers are coroutine switches and it runs at 1–2 GF/s; the autotuner keeps
//! it for real GPUs.

use crate::error::Result;
use crate::gpu::{PipelineKey, Recorder, Tensor, Work, fold_grid};
use crate::kernels::matmul::{Launch, buffer_setup, traffic};

const TILE: u32 = 64;

/// Y = op(X)·op(W) for `l`, X and W in storage buffers.
pub(crate) fn launch(rec: &mut Recorder, l: &Launch, x: &Tensor, w: &Tensor) -> Result<()> {
    let (form, prob) = (l.form, &l.dims);
    let (params, defines, binds) = buffer_setup(l, x, w)?;
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("matmul_tiled", "main", &defines))?;
    let grid = fold_grid(rec.gpu(), (prob.n as u32).div_ceil(TILE), (prob.m as u32).div_ceil(TILE));
    let work = Work { flops: form.flops(prob.m, prob.n, prob.k + prob.e), bytes: traffic(prob, w.dtype()) };
    rec.dispatch(pipeline, &params, binds, grid, format!("matmul_{form}_tiled_64x64"), work)
}
