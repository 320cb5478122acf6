//! Launcher for shaders/matmul_tiled.wgsl: 64×64 shared-memory tiles, the classic GPU design.
//! On lavapipe its barriers are coroutine switches and it runs at 1–2 GF/s; the autotuner keeps
//! it for real GPUs.

use crate::error::Result;
use crate::gpu::{PipelineKey, Recorder, Tensor, Work, fold_grid};
use crate::kernels::matmul::{Form, MatmulOpts, Problem, buffer_setup, traffic};

const TILE: u32 = 64;

pub(crate) fn launch(
    rec: &mut Recorder,
    form: Form,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    opts: &MatmulOpts,
    prob: &Problem,
) -> Result<()> {
    let (params, defines, binds) = buffer_setup(form, x, w, y, opts, prob)?;
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("matmul_tiled", "main", &defines))?;
    let grid = fold_grid(rec.gpu(), (prob.n as u32).div_ceil(TILE), (prob.m as u32).div_ceil(TILE));
    let work = Work { flops: form.flops(prob.m, prob.n, prob.k + prob.e), bytes: traffic(prob, w.dtype()) };
    rec.dispatch(pipeline, &params, binds, grid, format!("matmul_{form}_tiled_64x64"), work)
}
