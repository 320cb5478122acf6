//! Compiled compute pipelines, one per (shader, entry point, defines), built on first use. Drivers
//! like lavapipe spend up to a second in LLVM per pipeline, so nothing is ever compiled twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::shader::{self, Defines};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub shader: &'static str,
    pub entry: &'static str,
    pub defines: Vec<(&'static str, u32)>,
}

impl PipelineKey {
    pub fn new(shader: &'static str, entry: &'static str, defines: &Defines) -> Self {
        PipelineKey { shader, entry, defines: defines.iter().map(|(k, v)| (*k, *v)).collect() }
    }
}

pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
}

impl PipelineCache {
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pipelines compiled so far.
    pub fn keys(&self) -> Vec<PipelineKey> {
        self.map.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }
}

impl Gpu {
    /// The pipeline for `key`, compiled on first use.
    pub fn pipeline(&self, key: &PipelineKey) -> Result<Arc<Pipeline>> {
        let cache = &self.pipelines().map;
        if let Some(p) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Ok(p.clone());
        }
        // Compiled outside the lock: two threads may race to build the same pipeline, which
        // wastes one compile but never blocks unrelated kernels behind a slow one.
        let start = std::time::Instant::now();
        let built = Arc::new(self.build_pipeline(key)?);
        if std::env::var_os("LORAFUSE_LOG_COMPILE").is_some() {
            eprintln!(
                "lorafuse: compiled {}::{} {:?} in {:.2} s",
                key.shader,
                key.entry,
                key.defines,
                start.elapsed().as_secs_f64()
            );
        }
        let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.entry(key.clone()).or_insert(built).clone())
    }

    fn build_pipeline(&self, key: &PipelineKey) -> Result<Pipeline> {
        let text = shader::source(key.shader)
            .ok_or_else(|| Error::Shader { name: key.shader.into(), message: "no such shader".into() })?;
        let defines: Defines = key.defines.iter().copied().collect();
        let code = shader::preprocess(key.shader, text, &defines)?;
        let label = format!("{}::{} {:?}", key.shader, key.entry, key.defines);
        let device = self.device();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(code.as_str().into()),
        };
        // Our kernels bound every loop by a uniform size, so wgpu's injected loop counters (which
        // cost a third of a tight loop's speed on lavapipe) are dropped; bounds checks stay on.
        let mut checks = wgpu::ShaderRuntimeChecks::checked();
        checks.force_loop_bounding = false;
        // SAFETY: the only check relaxed is force_loop_bounding; every loop in shaders/ terminates
        // (its trip count comes from a uniform or a constant).
        let module = unsafe { device.create_shader_module_trusted(desc, checks) };
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                // Every kernel writes its workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { name: label, message: e.to_string() });
        }
        let layout = pipeline.get_bind_group_layout(0);
        Ok(Pipeline { pipeline, layout })
    }
}
