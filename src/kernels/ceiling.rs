//! Launcher for shaders/ceiling.wgsl: the arithmetic and memory ceilings that benchmark rows are
//! rated against, measured on the device itself in the same run.

use crate::error::Result;
use crate::gpu::shader::Defines;
use crate::gpu::{DType, Gpu, PipelineKey, Recorder, Resource, Tensor, Work};
use crate::tune::time_op;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    iters: u32,
    n4: u32,
    stride: u32,
    seed: f32,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Ceilings {
    pub fma_gflops: f64,
    pub copy_gbps: f64,
}

/// Measures both ceilings (best of `reps`).
pub fn measure(gpu: &Gpu, reps: u32) -> Result<Ceilings> {
    let defines = Defines::new();
    let fma = gpu.pipeline(&PipelineKey::new("ceiling", "fma", &defines))?;
    let copy = gpu.pipeline(&PipelineKey::new("ceiling", "copy", &defines))?;
    // Enough invocations to fill any device, enough rounds to dwarf launch overhead.
    let groups = 1024u32;
    let iters = 4096u32;
    let sink = Tensor::zeros(gpu, &[groups as usize * 64, 4], DType::F32, "ceiling sink")?;
    let flops = groups as u64 * 64 * iters as u64 * 64;
    let p = Params { iters, n4: 0, stride: 0, seed: 3.0 };
    let fma_ms = time_op(gpu, reps, |rec: &mut Recorder| {
        rec.dispatch(
            fma.clone(),
            &p,
            vec![(2, Resource::from(&sink))],
            [groups, 1, 1],
            "ceiling_fma",
            Work { flops, bytes: 0 },
        )
    })?;
    // 64 MiB each way: past every cache.
    let n4 = 4 << 20;
    let src = Tensor::zeros(gpu, &[n4, 4], DType::F32, "ceiling src")?;
    let dst = Tensor::zeros(gpu, &[n4, 4], DType::F32, "ceiling dst")?;
    let stride = groups * 64;
    let p = Params { iters: 0, n4: n4 as u32, stride, seed: 0.0 };
    let bytes = 2 * 16 * n4 as u64;
    let copy_ms = time_op(gpu, reps, |rec: &mut Recorder| {
        rec.dispatch(
            copy.clone(),
            &p,
            vec![(1, Resource::from(&src)), (2, Resource::from(&dst))],
            [groups, 1, 1],
            "ceiling_copy",
            Work { flops: 0, bytes },
        )
    })?;
    Ok(Ceilings { fma_gflops: flops as f64 / fma_ms / 1e6, copy_gbps: bytes as f64 / copy_ms / 1e6 })
}
