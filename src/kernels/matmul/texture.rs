//! Launcher for shaders/matmul_texture.wgsl, the matmul for CPU drivers.
//!
//! Why this shape (measured on lavapipe, ../docs/LAVAPIPE.md): an indexed storage-buffer load is
//! executed one invocation at a time (~50 ns per 8-wide vec4), a texel fetch costs ~32 ns, a
//! `subgroupBroadcast` at a constant lane ~7 ns, and workgroup barriers are coroutine switches.
//! So both operands live in textures, there is no workgroup memory, and the activation is
//! fetched once per subgroup and broadcast: per chunk of 4·SG inner values a lane issues R
//! activation fetches and SG·C weight fetches for R·C·4·SG multiply-adds. f16 weights halve the
//! weight fetches (8 values a texel) and unpack for free next to the fetch cost; 8-bit blocks
//! take 16 values a texel and a scale texel per 4 blocks, 4-bit 32 and one per 2 blocks.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::texture::col_align;
use crate::gpu::{DType, Matrix, PipelineKey, Recorder, Resource, TexMatrix, Work, fold_grid};
use crate::kernels::matmul::{Form, Launch, Prologue, Variant, XOperand, traffic};

/// (rows, cols) per invocation that the autotuner tries for nt. Measured on lavapipe (Mesa 25,
/// 256×2048×2048): 32×2 and 16×4 reach 35–45 GF/s, 8×4 wins at M≈16, and one-row strips win the
/// decode matvec, where the weight fetches bound the time.
pub const NT_BLOCKINGS: [(u32, u32); 7] = [(32, 2), (16, 4), (16, 2), (8, 4), (4, 4), (1, 8), (1, 4)];
/// (rows, texel columns) for nn. On lavapipe 8×1 to 32×1 all run dX of a 1024-token batch at
/// 15–25 GF/s; blocks over 16 rows add nothing but take LLVM 5–20 s to compile cold with f16
/// weights (their R·C·2 vec4 accumulators spill), so the list stops at 16×1.
/// (rows, cols) per subgroup for nt_dot, the one-row kernel whose lanes walk the inner dimension
/// together: the decode matvec, 10–15% faster than texture_r1c* on lavapipe with f32 weights
/// (it reads neighbouring texels of one weight row per fetch). More rows were never faster.
pub const NT_DOT_BLOCKINGS: [(u32, u32); 2] = [(1, 4), (1, 8)];
pub const NN_BLOCKINGS: [(u32, u32); 3] = [(16, 1), (8, 1), (1, 2)];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    ldy: u32,
    chunks: u32,
    x_rpl: u32,
    w_rpl: u32,
    e_chunks: u32,
    e_ld4: u32,
    b_rpl: u32,
    n_adapters: u32,
    w_width: u32,
    b_width: u32,
    alpha: f32,
    eps: f32,
    k: u32,
}

/// Y = op(X)·Wᵀ or op(X)·W for `l`, W in a texture and X in a texture or (one-row kernels) a
/// buffer.
pub(crate) fn launch(rec: &mut Recorder, l: &Launch, x: XOperand, w: &TexMatrix) -> Result<()> {
    let (form, y, opts, prob, variant) = (l.form, l.y, l.opts, &l.dims, l.variant);
    let (rows, cols, dot) = match variant {
        Variant::Texture { rows, cols } => (rows, cols, false),
        Variant::TextureDot { rows, cols } => (rows, cols, true),
        _ => unreachable!("texture launcher given {variant}"),
    };
    let sg = col_align(rec.gpu())? as u32 / 4;
    let unsupported =
        |reason: String| Error::Unsupported { kernel: format!("matmul {form}"), variant: variant.to_string(), reason };
    if form == Form::Tn {
        return Err(unsupported("the tn form has no texture kernel".into()));
    }
    let x_aligned = match x {
        XOperand::Texture(t) => t.col_align == 4 * sg as usize && t.dtype() == DType::F32,
        XOperand::Buffer(t, prologue) => {
            let one_row = dot || (rows == 1 && form == Form::Nt);
            let want = match prologue {
                Some(Prologue::SwiGlu) => [prob.m, 2 * prob.k],
                _ => [prob.m, prob.k],
            };
            one_row && prob.k.is_multiple_of(4) && t.dtype() == DType::F32 && t.shape() == want
        }
    };
    if !x_aligned || w.col_align != 4 * sg as usize {
        return Err(unsupported("operands not in this kernel's layout (padding, dtype or a buffer activation)".into()));
    }
    let f16 = w.dtype() == DType::F16;
    let q4 = w.dtype() == DType::Q4;
    let q8 = w.dtype() == DType::Q8;
    if (q4 || q8) && sg != 8 && sg != 16 {
        return Err(unsupported(format!("{} weights need subgroups of 8 or 16", w.dtype())));
    }
    let mut params = Params {
        m: prob.m as u32,
        n: prob.n as u32,
        ldy: prob.n as u32,
        // nt_dot with f16 weights walks 8 values a lane per step, with quantized weights a block
        // of 32; nt with quantized weights two blocks a step (one scale texel or half of one)
        chunks: (prob.k as u32).div_ceil(match (dot, f16, q4 || q8) {
            (true, _, true) => 32 * sg,
            (true, true, _) => 8 * sg,
            (false, _, true) if form == Form::Nt => 64,
            _ => 4 * sg,
        }),
        x_rpl: match x {
            XOperand::Texture(t) => t.rows_per_layer,
            // the buffer path reads rows of K/4 vec4s
            XOperand::Buffer(..) => (prob.k / 4) as u32,
        },
        w_rpl: w.rows_per_layer,
        e_chunks: 0,
        e_ld4: 0,
        b_rpl: 1,
        n_adapters: 0,
        // nn over 4-bit weights: a lane column is one word of a block texel
        w_width: if q4 && form == Form::Nn { 4 * w.width } else { w.width },
        b_width: 1,
        alpha: opts.alpha,
        eps: 0.0,
        k: prob.k as u32,
    };
    let mut defines: Defines = [
        ("SG", sg),
        ("HSG", sg / 2),
        ("R", rows),
        ("C", cols),
        ("W_F16", f16 as u32),
        ("W_Q4", q4 as u32),
        ("W_Q8", q8 as u32),
        ("W8", (f16 || q4 || q8) as u32),
        ("W_BLOCKS", (q4 || q8) as u32),
        ("QB", if q4 { sg / 8 } else { 0 }),
        ("QP", if q4 || q8 { 16 / sg } else { 0 }),
        ("EPILOGUE", opts.epilogue.is_some() as u32),
        ("ROW_COEF", opts.row_coef.is_some() as u32),
        ("ACCUMULATE", opts.accumulate as u32),
        ("X_BUF", matches!(x, XOperand::Buffer(..)) as u32),
        ("NORM", matches!(x, XOperand::Buffer(_, Some(Prologue::RmsNorm { .. }))) as u32),
        ("SWIGLU", matches!(x, XOperand::Buffer(_, Some(Prologue::SwiGlu))) as u32),
    ]
    .into_iter()
    .collect();
    defines.retain(|_, v| *v != 0);
    let mut binds = vec![(1, x_resource(&x)), (2, Resource::View(w.view.clone())), (3, Resource::from(y))];
    if let XOperand::Buffer(_, Some(Prologue::RmsNorm { gain, eps })) = &x {
        if gain.numel() != prob.k || gain.dtype() != DType::F32 {
            return Err(unsupported(format!("an RMSNorm gain {:?} for rows of {}", gain.shape(), prob.k)));
        }
        params.eps = *eps;
        binds.push((9, Resource::from(gain)));
    }
    if let Some((_, scales)) = &w.scales {
        binds.push((8, Resource::View(scales.clone())));
    }
    if let Some(ep) = &opts.epilogue {
        let Matrix::Texture(b) = ep.b else {
            return Err(unsupported("the epilogue B is not in a texture".into()));
        };
        let e = prob.e as u32;
        params.e_chunks = e.div_ceil(4 * sg);
        params.e_ld4 = e / 4;
        params.b_rpl = b.rows_per_layer;
        params.b_width = b.width;
        binds.push((4, Resource::from(ep.t)));
        binds.push((5, Resource::View(b.view.clone())));
    }
    if let Some(rc) = &opts.row_coef {
        params.n_adapters = rc.coef.shape()[1] as u32;
        binds.push((6, Resource::from(rc.coef)));
        binds.push((7, Resource::from(rc.seg)));
    }
    let (entry, col_groups) = match form {
        Form::Nt if dot => ("nt_dot", (prob.n as u32).div_ceil(cols)),
        Form::Nt => ("nt", (prob.n as u32).div_ceil(cols * sg)),
        _ => {
            let per = match w.dtype() {
                DType::Q8 => 16,
                DType::F16 | DType::Q4 => 8,
                _ => 4,
            };
            ("nn", (prob.n as u32).div_ceil(per).div_ceil(cols * sg))
        }
    };
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("matmul_texture", entry, &defines))?;
    let grid = fold_grid(rec.gpu(), col_groups, (prob.m as u32).div_ceil(rows));
    let work = Work { flops: form.flops(prob.m, prob.n, prob.k + prob.e), bytes: traffic(prob, w.dtype()) };
    rec.dispatch(pipeline, &params, binds, grid, format!("matmul_{form}_{variant}"), work)
}

fn x_resource(x: &XOperand) -> Resource {
    match x {
        XOperand::Texture(t) => Resource::View(t.view.clone()),
        XOperand::Buffer(t, _) => Resource::from(*t),
    }
}
