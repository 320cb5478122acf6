//! Launcher for shaders/embedding.wgsl (row gather) and its CPU reference.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, PipelineKey, Recorder, Resource, Tensor, Work, fold_grid};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    width: u32,
    table_rows: u32,
}

/// out[i, :] = table[index[i], :]. table [V, H] f32 or f16, index [R] u32 (each < V: checked by
/// the caller, clamped by the kernel), out [R, H] f32.
pub fn gather(rec: &mut Recorder, table: &Tensor, index: &Tensor, out: &Tensor) -> Result<()> {
    let (v, h) = table.dims2("gather")?;
    table.expect_dtype("gather", "table", &[DType::F32, DType::F16])?;
    index.expect_dtype("gather", "index", &[DType::U32])?;
    let r = index.numel();
    if out.shape() != [r, h] || out.dtype() != DType::F32 {
        return Err(Error::shape("gather", format!("output {out:?}, expected [{r}, {h}] f32")));
    }
    let defines: Defines =
        if table.dtype() == DType::F16 { [("F16", 1)].into_iter().collect() } else { Defines::new() };
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("embedding", "gather", &defines))?;
    let params = Params { rows: r as u32, width: h as u32, table_rows: v as u32 };
    let grid = fold_grid(rec.gpu(), (h as u32).div_ceil(64), r as u32);
    let work = Work { flops: 0, bytes: 2 * out.bytes() };
    rec.dispatch(
        pipeline,
        &params,
        vec![(1, table.into()), (2, index.into()), (3, Resource::from(out))],
        grid,
        "gather",
        work,
    )
}

/// out[index[i], :] = src[i, :]: src [R, H] f32, index [R] u32 (distinct, each < out's rows),
/// out [T, H] f32.
pub fn scatter(rec: &mut Recorder, src: &Tensor, index: &Tensor, out: &Tensor) -> Result<()> {
    let (r, h) = src.dims2("scatter")?;
    let (t, oh) = out.dims2("scatter")?;
    if index.numel() != r || oh != h || src.dtype() != DType::F32 || out.dtype() != DType::F32 {
        return Err(Error::shape("scatter", format!("src {src:?}, index {index:?}, out {out:?}")));
    }
    index.expect_dtype("scatter", "index", &[DType::U32])?;
    let defines: Defines = [("SCATTER", 1)].into_iter().collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("embedding", "scatter", &defines))?;
    let params = Params { rows: r as u32, width: h as u32, table_rows: t as u32 };
    let grid = fold_grid(rec.gpu(), (h as u32).div_ceil(64), r as u32);
    let work = Work { flops: 0, bytes: 2 * src.bytes() };
    rec.dispatch(pipeline, &params, vec![(1, src.into()), (2, index.into()), (3, out.into())], grid, "scatter", work)
}

/// CPU reference.
pub fn gather_ref(table: &[f32], width: usize, index: &[u32]) -> Vec<f32> {
    index.iter().flat_map(|&i| table[i as usize * width..(i as usize + 1) * width].iter().copied()).collect()
}
