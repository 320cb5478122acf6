//! Launchers for shaders/ceiling.wgsl: the arithmetic, memory and launch-overhead ceilings that
//! benchmark rows are rated against, measured on the device itself in the same run.
//!
//! The FMA kernel's result is never stored (it only keeps the compiler from deleting the
//! arithmetic), so it has no CPU reference; the copy kernel's reference is the identity.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, Gpu, PipelineKey, Recorder, Resource, Tensor, Work, time_op};

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
    /// FMA-bound shader, GFLOP/s.
    pub fma_gflops: f64,
    /// vec4 copy shader, GB/s counting bytes read plus bytes written.
    pub copy_gbps: f64,
    /// One minimal launch among many in a submission, µs.
    pub dispatch_us: f64,
}

/// Workgroups of every ceiling launch: enough to fill any device.
const GROUPS: u32 = 1024;

fn pipeline(gpu: &Gpu, entry: &'static str) -> Result<std::sync::Arc<crate::gpu::pipeline::Pipeline>> {
    gpu.pipeline(&PipelineKey::new("ceiling", entry, &Defines::new()))
}

/// `groups` × 64 invocations, each `iters` rounds of 8 independent vec4 multiply-adds.
/// `sink` must hold `groups` × 64 vec4s.
pub fn fma(rec: &mut Recorder, sink: &Tensor, groups: u32, iters: u32) -> Result<()> {
    let p = Params { iters, n4: 0, stride: 0, seed: 3.0 };
    let flops = groups as u64 * 64 * iters as u64 * 64;
    let pipe = pipeline(rec.gpu(), "fma")?;
    rec.dispatch(pipe, &p, vec![(2, Resource::from(sink))], [groups, 1, 1], "ceiling_fma", Work { flops, bytes: 0 })
}

/// dst = src, both f32 with the same element count (a multiple of 4).
pub fn copy(rec: &mut Recorder, src: &Tensor, dst: &Tensor) -> Result<()> {
    if src.numel() != dst.numel()
        || !src.numel().is_multiple_of(4)
        || src.dtype() != DType::F32
        || dst.dtype() != DType::F32
    {
        return Err(Error::shape("ceiling copy", format!("{:?} into {:?}: same f32 size, a multiple of 4", src, dst)));
    }
    let n4 = (src.numel() / 4) as u32;
    let p = Params { iters: 0, n4, stride: GROUPS * 64, seed: 0.0 };
    let pipe = pipeline(rec.gpu(), "copy")?;
    let bytes = 2 * src.bytes();
    rec.dispatch(
        pipe,
        &p,
        vec![(1, Resource::from(src)), (2, Resource::from(dst))],
        [GROUPS, 1, 1],
        "ceiling_copy",
        Work { flops: 0, bytes },
    )
}

/// Measures the three ceilings (best of `reps`).
pub fn measure(gpu: &Gpu, reps: u32) -> Result<Ceilings> {
    let sink = Tensor::zeros(gpu, &[GROUPS as usize * 64, 4], DType::F32, "ceiling sink")?;
    // Enough rounds to dwarf launch overhead.
    let iters = 4096;
    let flops = GROUPS as f64 * 64.0 * iters as f64 * 64.0;
    let fma_ms = time_op(gpu, reps, |rec| fma(rec, &sink, GROUPS, iters))?;
    // 64 MiB each way: past every cache.
    let n = 16 << 20;
    let src = Tensor::zeros(gpu, &[n], DType::F32, "ceiling src")?;
    let dst = Tensor::zeros(gpu, &[n], DType::F32, "ceiling dst")?;
    let copy_ms = time_op(gpu, reps, |rec| copy(rec, &src, &dst))?;
    // A batch of one-workgroup, one-round launches: what each launch costs by itself.
    let launches = 64;
    let batch_ms = time_op(gpu, reps, |rec| (0..launches).try_for_each(|_| fma(rec, &sink, 1, 1)))?;
    Ok(Ceilings {
        fma_gflops: flops / fma_ms / 1e6,
        copy_gbps: 2.0 * 4.0 * n as f64 / copy_ms / 1e6,
        dispatch_us: 1e3 * batch_ms / launches as f64,
    })
}
