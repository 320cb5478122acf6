//! Records kernel launches and submits them in one command buffer. Kernel parameters go into one
//! uniform buffer per submission (each at a 256-byte aligned offset) rather than a buffer per
//! launch. When profiling, each launch gets its own compute pass bracketed by GPU timestamps (or,
//! on adapters without timestamp queries, its own submission timed by the wall clock).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::pipeline::Pipeline;
use crate::gpu::profiler::{Clock, KernelTiming};
use crate::gpu::tensor::map_read;
use crate::gpu::{Gpu, Tensor};

/// Arithmetic and memory traffic of one launch, for GFLOP/s and GB/s in profiles and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    pub flops: u64,
    pub bytes: u64,
}

/// A resource bound to a kernel.
#[derive(Clone, Debug)]
pub enum Resource {
    Buffer(wgpu::Buffer),
    View(wgpu::TextureView),
}

impl From<&Tensor> for Resource {
    fn from(t: &Tensor) -> Self {
        Resource::Buffer(t.buffer().clone())
    }
}

struct Launch {
    pipeline: Arc<Pipeline>,
    params: (u64, u64),
    binds: Vec<(u32, Resource)>,
    grid: [u32; 3],
    label: Cow<'static, str>,
    work: Work,
    group: u32,
}

pub struct Recorder {
    gpu: Gpu,
    launches: Vec<Launch>,
    uniforms: Vec<u8>,
    group: u32,
    profile: bool,
    /// Records launches but never submits them (`Gpu::dry_run`).
    dry: bool,
}

impl Recorder {
    pub fn new(gpu: &Gpu) -> Recorder {
        let (profile, dry) = (gpu.capturing(), gpu.dry());
        Recorder { gpu: gpu.clone(), launches: Vec::new(), uniforms: Vec::new(), group: 0, profile, dry }
    }

    /// A recorder whose `submit` times every launch.
    pub fn profiled(gpu: &Gpu) -> Recorder {
        Recorder { profile: true, ..Recorder::new(gpu) }
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn len(&self) -> usize {
        self.launches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.launches.is_empty()
    }

    /// A recorder of a dry run: what it records is never submitted.
    pub fn is_dry(&self) -> bool {
        self.dry
    }

    /// Tags the launches that follow, so timings can be summed per group (one group per
    /// repetition of an operation in benchmarks).
    pub fn set_group(&mut self, group: u32) {
        self.group = group;
    }

    /// Records one launch: `params` at binding 0, `binds` at their binding numbers.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        pipeline: Arc<Pipeline>,
        params: &P,
        binds: Vec<(u32, Resource)>,
        grid: [u32; 3],
        label: impl Into<Cow<'static, str>>,
        work: Work,
    ) -> Result<()> {
        let label = label.into();
        let max = self.gpu.caps().limits.max_compute_workgroups_per_dimension;
        if grid.iter().any(|&g| g > max) {
            return Err(Error::OverLimit {
                what: format!("grid {grid:?} of kernel '{label}'"),
                requested: *grid.iter().max().unwrap_or(&0) as u64,
                limit_name: "max_compute_workgroups_per_dimension",
                limit: max as u64,
            });
        }
        let align = self.gpu.caps().limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        let offset = self.uniforms.len().div_ceil(align) * align;
        let bytes = bytemuck::bytes_of(params);
        self.uniforms.resize(offset, 0);
        self.uniforms.extend_from_slice(bytes);
        let size = (bytes.len() as u64).div_ceil(16) * 16;
        self.uniforms.resize(offset + size as usize, 0);
        if grid.contains(&0) {
            return Ok(()); // empty problem: nothing to launch
        }
        self.launches.push(Launch {
            pipeline,
            params: (offset as u64, size),
            binds,
            grid,
            label,
            work,
            group: self.group,
        });
        Ok(())
    }

    fn bind_groups(&self) -> Vec<wgpu::BindGroup> {
        let device = self.gpu.device();
        let ubuf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kernel params"),
            size: (self.uniforms.len() as u64).max(16),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if !self.uniforms.is_empty() {
            self.gpu.queue().write_buffer(&ubuf, 0, &self.uniforms);
        }
        self.launches
            .iter()
            .map(|l| {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &ubuf,
                        offset: l.params.0,
                        size: wgpu::BufferSize::new(l.params.1),
                    }),
                }];
                for (binding, r) in &l.binds {
                    let resource = match r {
                        Resource::Buffer(b) => b.as_entire_binding(),
                        Resource::View(v) => wgpu::BindingResource::TextureView(v),
                    };
                    entries.push(wgpu::BindGroupEntry { binding: *binding, resource });
                }
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(&l.label),
                    layout: &l.pipeline.layout,
                    entries: &entries,
                })
            })
            .collect()
    }

    /// Submits everything recorded. Returns immediately unless profiling, in which case it waits
    /// and returns the time of every launch.
    pub fn submit(self) -> Result<Vec<KernelTiming>> {
        if self.launches.is_empty() || self.dry {
            return Ok(Vec::new());
        }
        let scope = self.gpu.device().push_error_scope(wgpu::ErrorFilter::Validation);
        let submitted = Instant::now();
        let result = if !self.profile {
            self.submit_plain().map(|_| Vec::new())
        } else if self.gpu.caps().timestamps {
            self.submit_timestamped()
        } else {
            self.submit_wall_clock()
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu { during: "kernel submission".into(), message: e.to_string() });
        }
        if let (Ok(t), Ok(mut guard)) = (&result, self.gpu.inner.capture.lock())
            && let Some((thread, c)) = guard.as_mut()
            && *thread == std::thread::current().id()
        {
            c.push((submitted, t.clone()));
        }
        result
    }

    /// Submits and waits for completion.
    pub fn run(self) -> Result<Vec<KernelTiming>> {
        let gpu = self.gpu.clone();
        let t = self.submit()?;
        gpu.wait()?;
        Ok(t)
    }

    fn submit_plain(&self) -> Result<()> {
        let groups = self.bind_groups();
        let device = self.gpu.device();
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kernels") });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            for (l, bg) in self.launches.iter().zip(&groups) {
                pass.set_pipeline(&l.pipeline.pipeline);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(l.grid[0], l.grid[1], l.grid[2]);
            }
        }
        self.gpu.queue().submit([enc.finish()]);
        Ok(())
    }

    fn submit_timestamped(&self) -> Result<Vec<KernelTiming>> {
        let groups = self.bind_groups();
        let device = self.gpu.device();
        let mut timings = Vec::with_capacity(self.launches.len());
        // Chunks are separate submissions: each is placed where the previous one's launches
        // ended (the host's gap between them is not kernel time).
        let mut chunk_start_ns = 0.0;
        // A query set holds at most 4096 queries: two per launch, so submit in chunks.
        let per_chunk = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;
        for (chunk, bgs) in self.launches.chunks(per_chunk).zip(groups.chunks(per_chunk)) {
            let n = (chunk.len() * 2) as u32;
            let qs = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: n,
            });
            let bytes = n as u64 * 8;
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kernels") });
            for (i, (l, bg)) in chunk.iter().zip(bgs).enumerate() {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(&l.label),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &qs,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    }),
                });
                pass.set_pipeline(&l.pipeline.pipeline);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(l.grid[0], l.grid[1], l.grid[2]);
            }
            enc.resolve_query_set(&qs, 0..n, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
            self.gpu.queue().submit([enc.finish()]);
            let raw = map_read(&self.gpu, &staging)?;
            let ticks: &[u64] = bytemuck::cast_slice(&raw);
            let period = self.gpu.caps().timestamp_period as f64;
            let mut end_ns = chunk_start_ns;
            for (i, l) in chunk.iter().enumerate() {
                let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
                let start_ns = chunk_start_ns + ticks[2 * i].saturating_sub(ticks[0]) as f64 * period;
                end_ns = end_ns.max(start_ns + ns);
                timings.push(KernelTiming {
                    label: l.label.to_string(),
                    group: l.group,
                    start_ns,
                    ns,
                    work: l.work,
                    clock: Clock::Gpu,
                });
            }
            chunk_start_ns = end_ns;
        }
        Ok(timings)
    }

    fn submit_wall_clock(&self) -> Result<Vec<KernelTiming>> {
        let groups = self.bind_groups();
        let device = self.gpu.device();
        let mut timings = Vec::with_capacity(self.launches.len());
        let mut start_ns = 0.0;
        for (l, bg) in self.launches.iter().zip(&groups) {
            let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(&l.label) });
            {
                let mut pass = enc
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&l.label), timestamp_writes: None });
                pass.set_pipeline(&l.pipeline.pipeline);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(l.grid[0], l.grid[1], l.grid[2]);
            }
            let t0 = Instant::now();
            self.gpu.queue().submit([enc.finish()]);
            self.gpu.wait()?;
            let ns = t0.elapsed().as_nanos() as f64;
            timings.push(KernelTiming {
                label: l.label.to_string(),
                group: l.group,
                start_ns,
                ns,
                work: l.work,
                clock: Clock::Wall,
            });
            start_ns += ns;
        }
        Ok(timings)
    }
}

/// The grid of a kernel with one invocation per item, in workgroups of 64 spread over at most
/// 1024 in x and folded over (y, z); the kernel recovers its item from `global_invocation_id` and
/// `num_workgroups`. No items: an empty grid, nothing launched.
pub fn flat_grid(gpu: &Gpu, items: usize) -> [u32; 3] {
    let groups = (items as u32).div_ceil(64);
    if groups == 0 {
        return [0, 1, 1];
    }
    let x = groups.min(1024);
    fold_grid(gpu, x, groups.div_ceil(x))
}

/// Splits `blocks` workgroups over (y, z) so neither exceeds the per-dimension limit; kernels
/// recover the block as `wg.y + wg.z * num_workgroups.y`.
pub fn fold_grid(gpu: &Gpu, x: u32, blocks: u32) -> [u32; 3] {
    let max = gpu.caps().limits.max_compute_workgroups_per_dimension.max(1);
    if blocks <= max {
        [x, blocks, 1]
    } else {
        let z = blocks.div_ceil(max);
        [x, blocks.div_ceil(z), z]
    }
}
