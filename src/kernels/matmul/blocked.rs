//! Launcher for shaders/matmul_blocked.wgsl: the register-blocked storage-buffer matmul that needs
//! no optional feature. It is the portable fallback (GL backend, adapters without subgroups) and
//! a candidate everywhere.

use crate::error::Result;
use crate::gpu::{DType, PipelineKey, Recorder, Tensor, Work, fold_grid};
use crate::kernels::matmul::{Form, Launch, Variant, buffer_setup, traffic};

/// (rows, cols) per invocation that the autotuner tries: a square block for many rows, a row
/// strip for decode-sized M.
pub const BLOCKINGS: [(u32, u32); 2] = [(4, 4), (1, 8)];

/// Y = op(X)·op(W) for `l`, X and W in storage buffers.
pub(crate) fn launch(rec: &mut Recorder, l: &Launch, x: &Tensor, w: &Tensor) -> Result<()> {
    let Variant::Blocked { rows, cols } = l.variant else { unreachable!("blocked launcher given {}", l.variant) };
    let (form, prob) = (l.form, &l.dims);
    let (params, mut defines, binds) = buffer_setup(l, x, w)?;
    // Four-wide loads need both operands contiguous along K with rows starting on 16 bytes; the
    // same buffers are then read through array<vec4<f32>> bindings.
    let vec4 =
        form == Form::Nt && w.dtype() == DType::F32 && params.k % 4 == 0 && params.lda % 4 == 0 && params.ldb % 4 == 0;
    if vec4 {
        defines.insert("VEC4", 1);
    }
    defines.insert("R", rows);
    defines.insert("C", cols);
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("matmul_blocked", "main", &defines))?;
    let col_blocks = (prob.n as u32).div_ceil(cols);
    let grid = fold_grid(rec.gpu(), col_blocks.div_ceil(64), (prob.m as u32).div_ceil(rows));
    let work = Work { flops: form.flops(prob.m, prob.n, prob.k + prob.e), bytes: traffic(prob, w.dtype()) };
    rec.dispatch(pipeline, &params, binds, grid, format!("matmul_{form}_blocked_r{rows}c{cols}"), work)
}
