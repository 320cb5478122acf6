//! Buffer → texture packing (shaders/pack.wgsl): puts activations and computed weights into the
//! texture layout of src/gpu/texture.rs, whose host-side packer (`pack_host`) is this kernel's
//! CPU reference.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, PipelineKey, Recorder, Resource, Tensor, TexMatrix, Work, flat_grid, fold_grid};
use crate::kernels::matmul::Prologue;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    ld: u32,
    width: u32,
    rpl: u32,
    eps: f32,
}

/// Packs `src` ([rows, cols] f32, row-major) into `dst`, which must have the same shape.
pub fn pack(rec: &mut Recorder, src: &Tensor, dst: &TexMatrix) -> Result<()> {
    src.expect_dtype("pack", "source", &[DType::F32])?;
    let (rows, cols) = src.dims2("pack")?;
    if (rows, cols) != (dst.rows(), dst.cols()) {
        return Err(Error::shape(
            "pack",
            format!("source [{rows}, {cols}] into texture [{}, {}]", dst.rows(), dst.cols()),
        ));
    }
    let f16 = dst.dtype() == DType::F16;
    let vec4 = cols % 4 == 0;
    let defines: Defines = [("F16", f16 as u32), ("VEC4", vec4 as u32)].into_iter().filter(|(_, v)| *v != 0).collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("pack", "pack", &defines))?;
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
        ld: cols as u32,
        width: dst.width,
        rpl: dst.rows_per_layer,
        eps: 0.0,
    };
    let grid = fold_grid(rec.gpu(), dst.width.div_ceil(64), rows as u32);
    let work = Work { flops: 0, bytes: src.bytes() + dst.bytes() };
    rec.dispatch(
        pipeline,
        &params,
        vec![(1, Resource::from(src)), (2, Resource::View(dst.view.clone()))],
        grid,
        if f16 { "pack_f16" } else { "pack_f32" },
        work,
    )
}

/// Packs the value of `prologue` applied to `src` into the f32 texture `dst` (the matrix the
/// prologue would have written, [rows, cols]; src [rows, cols] for RMSNorm, [rows, 2·cols] for
/// SwiGLU): one launch where the prologue's own and a pack would be two, bit for bit the same.
pub(crate) fn pack_prologue(rec: &mut Recorder, src: &Tensor, prologue: &Prologue, dst: &TexMatrix) -> Result<()> {
    let op = "pack prologue";
    src.expect_dtype(op, "source", &[DType::F32])?;
    let (rows, src_cols) = src.dims2(op)?;
    let cols = dst.cols();
    let want = match prologue {
        Prologue::RmsNorm { .. } => cols,
        Prologue::SwiGlu => 2 * cols,
    };
    if dst.dtype() != DType::F32 || (rows, src_cols) != (dst.rows(), want) {
        return Err(Error::shape(op, format!("source [{rows}, {src_cols}] into f32 texture [{}, {cols}]", dst.rows())));
    }
    let mut params = Params {
        rows: rows as u32,
        cols: cols as u32,
        ld: src_cols as u32,
        width: dst.width,
        rpl: dst.rows_per_layer,
        eps: 0.0,
    };
    let mut binds = vec![(1, Resource::from(src)), (2, Resource::View(dst.view.clone()))];
    let (entry, defines, grid, label) = match prologue {
        Prologue::RmsNorm { gain, eps } => {
            if gain.numel() != cols {
                return Err(Error::shape(op, format!("an RMSNorm gain {:?} for rows of {cols}", gain.shape())));
            }
            params.eps = *eps;
            binds.push((3, Resource::from(gain)));
            ("pack_norm", [("NORM", 1)], flat_grid(rec.gpu(), rows), "pack_norm")
        }
        Prologue::SwiGlu => {
            ("pack", [("SWIGLU", 1)], fold_grid(rec.gpu(), dst.width.div_ceil(64), rows as u32), "pack_swiglu")
        }
    };
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("pack", entry, &defines.into_iter().collect()))?;
    let work = Work { flops: 4 * (rows * cols) as u64, bytes: src.bytes() + dst.bytes() };
    rec.dispatch(pipeline, &params, binds, grid, label, work)
}

/// Packs an f32 tensor into a fresh texture matrix of `dtype`.
pub fn to_texture(rec: &mut Recorder, src: &Tensor, dtype: DType, label: &str) -> Result<TexMatrix> {
    let (rows, cols) = src.dims2("pack")?;
    let align = crate::gpu::texture::col_align(rec.gpu())?;
    let dst = TexMatrix::zeros(rec.gpu(), rows, cols, dtype, align, label)?;
    pack(rec, src, &dst)?;
    Ok(dst)
}

/// The scratch texture used to pack activations of this shape (reused across calls; see
/// `Gpu::scratch_texture`).
pub fn to_scratch_texture(rec: &mut Recorder, src: &Tensor, slot: u32) -> Result<TexMatrix> {
    let (rows, cols) = src.dims2("pack")?;
    let dst = rec.gpu().scratch_texture(rows, cols, slot)?;
    pack(rec, src, &dst)?;
    Ok(dst)
}
