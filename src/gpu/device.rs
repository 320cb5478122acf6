//! Adapter choice and device creation. The device is opened with the adapter's own limits (not the
//! WebGPU defaults: real models need storage bindings far over 128 MiB) and with every optional
//! feature the kernels can use, so the kernels see what the hardware really offers.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::TexMatrix;
use crate::gpu::pipeline::PipelineCache;

/// Which wgpu backend to search for adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendChoice {
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    pub fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => wgpu::Backends::all(),
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Vulkan => "vulkan",
            BackendChoice::Metal => "metal",
            BackendChoice::Dx12 => "dx12",
            BackendChoice::Gl => "gl",
        }
    }
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(BackendChoice::Auto),
            "vulkan" | "vk" => Ok(BackendChoice::Vulkan),
            "metal" | "mtl" => Ok(BackendChoice::Metal),
            "dx12" | "d3d12" => Ok(BackendChoice::Dx12),
            "gl" | "gles" | "opengl" => Ok(BackendChoice::Gl),
            other => Err(Error::UnknownBackend(other.to_string())),
        }
    }
}

/// Optional features a caller can refuse, to exercise the fallback kernels on a device that has
/// them (tests do this) or to work around a driver bug.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Disabled {
    pub subgroups: bool,
    pub shader_f16: bool,
    pub timestamps: bool,
}

impl FromStr for Disabled {
    type Err = Error;
    /// Comma-separated list: `subgroups,f16,timestamps`.
    fn from_str(s: &str) -> Result<Self> {
        let mut d = Disabled::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "subgroups" => d.subgroups = true,
                "f16" | "shader-f16" => d.shader_f16 = true,
                "timestamps" => d.timestamps = true,
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown feature '{other}' in the disabled list (expected subgroups, f16, timestamps)"
                    )));
                }
            }
        }
        Ok(d)
    }
}

#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub backend: BackendChoice,
    /// Index into the adapters of `backend`, in the order `lorafuse devices` lists them.
    pub adapter: Option<usize>,
    pub disabled: Disabled,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { backend: BackendChoice::Auto, adapter: None, disabled: Disabled::default() }
    }
}

impl GpuOptions {
    /// Options from the environment: `LORAFUSE_BACKEND`, `LORAFUSE_GPU` (the adapter index) and
    /// `LORAFUSE_DISABLE`.
    pub fn from_env() -> Result<Self> {
        let backend = match std::env::var("LORAFUSE_BACKEND") {
            Ok(v) => v.parse()?,
            Err(_) => BackendChoice::Auto,
        };
        let adapter = match std::env::var("LORAFUSE_GPU") {
            Ok(v) => Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| Error::Invalid(format!("LORAFUSE_GPU='{v}' is not an adapter index")))?,
            ),
            Err(_) => None,
        };
        let disabled = match std::env::var("LORAFUSE_DISABLE") {
            Ok(v) => v.parse()?,
            Err(_) => Disabled::default(),
        };
        Ok(GpuOptions { backend, adapter, disabled })
    }
}

/// What the kernels may rely on, decided once when the device is opened.
#[derive(Clone, Debug)]
pub struct Caps {
    pub limits: wgpu::Limits,
    pub shader_f16: bool,
    pub subgroups: bool,
    /// The subgroup size when the adapter reports a single one. Kernels that share data with
    /// `subgroupBroadcast` at constant lanes are compiled for it and offered only when it is known.
    pub fixed_subgroup_size: Option<u32>,
    pub timestamps: bool,
    /// Nanoseconds per timestamp tick.
    pub timestamp_period: f32,
}

impl Caps {
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }
}

/// A summary of one adapter, as `lorafuse devices` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub subgroup_sizes: (u32, u32),
    pub features: Vec<&'static str>,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_texture_dimension_2d: u32,
    pub max_texture_array_layers: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

/// The features the kernels know how to use; anything else is not requested.
const WANTED: [(wgpu::Features, &str); 3] = [
    (wgpu::Features::SHADER_F16, "shader-f16"),
    (wgpu::Features::SUBGROUP, "subgroups"),
    (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
];

fn new_instance(backend: BackendChoice) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backend.backends();
    wgpu::Instance::new(desc)
}

fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "CPU (software)",
        wgpu::DeviceType::Other => "other",
    }
}

/// Adapters in the order `--adapter N` indexes them: best first (discrete, integrated, virtual,
/// software), native APIs before GL within a kind.
fn sorted_adapters(instance: &wgpu::Instance, backend: BackendChoice) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backend.backends()));
    let rank = |a: &wgpu::Adapter| {
        let info = a.get_info();
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        let api = if info.backend == wgpu::Backend::Gl { 1 } else { 0 };
        (kind, api)
    };
    adapters.sort_by_key(rank);
    adapters
}

pub fn summarize(index: usize, adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let limits = adapter.limits();
    let features = adapter.features();
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: info.backend.to_str().to_string(),
        device_type: device_type_name(info.device_type).to_string(),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
        features: WANTED.iter().filter(|(f, _)| features.contains(*f)).map(|(_, n)| *n).collect(),
        max_buffer_size: limits.max_buffer_size,
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_texture_dimension_2d: limits.max_texture_dimension_2d,
        max_texture_array_layers: limits.max_texture_array_layers,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
    }
}

/// Every adapter wgpu finds for `backend`.
pub fn list_adapters(backend: BackendChoice) -> Vec<AdapterSummary> {
    let instance = new_instance(backend);
    sorted_adapters(&instance, backend).iter().enumerate().map(|(i, a)| summarize(i, a)).collect()
}

pub(crate) struct GpuInner {
    pub(crate) adapter: wgpu::Adapter,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) caps: Caps,
    pub(crate) pipelines: PipelineCache,
    /// Per-device state of the layers above this one (the matmul tuner's choices), one value
    /// per type: the GPU layer holds it without knowing what it is.
    states: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    scratch: Mutex<HashMap<(usize, usize, u32), TexMatrix>>,
    memory: Arc<crate::gpu::tensor::MemoryMeter>,
    /// While Some, every recorder the capturing thread makes times its launches and leaves them
    /// here (`Gpu::capture`).
    pub(crate) capture: Mutex<Option<(std::thread::ThreadId, Captured)>>,
    /// The thread whose recorders are dry while it runs `Gpu::dry_run`.
    dry: Mutex<Option<std::thread::ThreadId>>,
}

/// Launch timings of the submissions made while capturing, each with its submission time.
pub type Captured = Vec<(std::time::Instant, Vec<crate::gpu::profiler::KernelTiming>)>;

/// An open GPU device: cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<GpuInner>,
}

impl Gpu {
    /// Opens the device chosen by `opts`. Fails (never falls back silently) when no adapter exists.
    pub fn new(opts: &GpuOptions) -> Result<Gpu> {
        let instance = new_instance(opts.backend);
        let adapters = sorted_adapters(&instance, opts.backend);
        if adapters.is_empty() {
            let hint = if cfg!(target_os = "linux") {
                " (on Linux without a GPU install Mesa's software Vulkan driver: apt-get install mesa-vulkan-drivers)"
            } else {
                ""
            };
            return Err(Error::NoAdapter { backend: opts.backend.name().into(), hint: hint.into() });
        }
        let index = opts.adapter.unwrap_or(0);
        let count = adapters.len();
        let adapter = adapters.into_iter().nth(index).ok_or(Error::AdapterIndex {
            index,
            count,
            backend: opts.backend.name().into(),
        })?;
        Self::open(adapter, opts)
    }

    /// Opens the device from `GpuOptions::from_env()`.
    pub fn from_env() -> Result<Gpu> {
        Gpu::new(&GpuOptions::from_env()?)
    }

    fn open(adapter: wgpu::Adapter, opts: &GpuOptions) -> Result<Gpu> {
        let disabled = opts.disabled;
        let info = adapter.get_info();
        let available = adapter.features();
        let mut features = wgpu::Features::empty();
        for (f, _) in WANTED {
            if available.contains(f) {
                features |= f;
            }
        }
        if disabled.shader_f16 {
            features.remove(wgpu::Features::SHADER_F16);
        }
        if disabled.subgroups {
            features.remove(wgpu::Features::SUBGROUP);
        }
        if disabled.timestamps {
            features.remove(wgpu::Features::TIMESTAMP_QUERY);
        }
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("lorafuse"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::Device { adapter: info.name.clone(), message: e.to_string() })?;
        let subgroups = features.contains(wgpu::Features::SUBGROUP);
        let caps = Caps {
            limits: device.limits(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups,
            fixed_subgroup_size: (subgroups && info.subgroup_min_size == info.subgroup_max_size)
                .then_some(info.subgroup_min_size),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamp_period: queue.get_timestamp_period(),
        };
        Ok(Gpu {
            inner: Arc::new(GpuInner {
                adapter,
                device,
                queue,
                info,
                caps,
                pipelines: PipelineCache::default(),
                states: Mutex::default(),
                scratch: Mutex::new(HashMap::new()),
                memory: Arc::default(),
                capture: Mutex::new(None),
                dry: Mutex::new(None),
            }),
        })
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    pub fn caps(&self) -> &Caps {
        &self.inner.caps
    }

    pub fn summary(&self) -> AdapterSummary {
        let mut s = summarize(0, &self.inner.adapter);
        s.index = usize::MAX;
        s
    }

    /// One line naming the adapter, backend and driver, for reports and benchmark tables.
    pub fn describe(&self) -> String {
        let i = &self.inner.info;
        format!("{} ({}, {}, {})", i.name, i.backend.to_str(), i.driver, i.driver_info)
    }

    pub fn is_software(&self) -> bool {
        self.inner.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Blocks until every submitted command has finished.
    pub fn wait(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Gpu { during: "wait".into(), message: e.to_string() })
    }

    /// Refuses an allocation or binding over the device limits with an error naming it, instead
    /// of letting wgpu abort the process.
    pub fn check_binding(&self, what: &str, bytes: u64) -> Result<()> {
        let l = &self.inner.caps.limits;
        if bytes > l.max_buffer_size {
            return Err(Error::OverLimit {
                what: what.into(),
                requested: bytes,
                limit_name: "max_buffer_size",
                limit: l.max_buffer_size,
            });
        }
        if bytes > l.max_storage_buffer_binding_size {
            return Err(Error::OverLimit {
                what: what.into(),
                requested: bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: l.max_storage_buffer_binding_size,
            });
        }
        Ok(())
    }

    pub(crate) fn pipelines(&self) -> &PipelineCache {
        &self.inner.pipelines
    }

    /// Every pipeline compiled on this device so far (shader, entry point, defines).
    pub fn compiled_pipelines(&self) -> Vec<crate::gpu::PipelineKey> {
        self.inner.pipelines.keys()
    }

    /// A texture for packing an f32 activation of `rows` × `cols`, reused across calls (creating
    /// and clearing a texture per launch costs more than packing into it). Textures are kept per
    /// (power-of-two row bucket, cols, slot); `slot` separates activations that must be alive at
    /// the same time within one operation. Launches run in submission order, so reuse by a later
    /// launch never disturbs an earlier one.
    pub(crate) fn scratch_texture(&self, rows: usize, cols: usize, slot: u32) -> Result<TexMatrix> {
        let bucket = rows.max(crate::gpu::texture::ROW_ALIGN).next_power_of_two();
        let mut map = self.inner.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let key = (bucket, cols, slot);
        let t = match map.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let align = crate::gpu::texture::col_align(self)?;
                let t = TexMatrix::zeros(self, bucket, cols, crate::gpu::DType::F32, align, "activation scratch")?;
                v.insert(t).clone()
            }
        };
        Ok(t.with_rows(rows))
    }

    /// Profiles a workload that builds its own recorders: while `f` runs, every submission of
    /// this thread times its launches (each waits for the GPU, so the workload runs slower);
    /// returns what `f` returned and the timings of each submission with the time it was made.
    pub fn capture<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, Captured)> {
        let slot = &self.inner.capture;
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::thread::current().id(), Vec::new()));
        let r = f();
        let captured = slot.lock().unwrap_or_else(|p| p.into_inner()).take().map(|c| c.1).unwrap_or_default();
        Ok((r?, captured))
    }

    pub(crate) fn capturing(&self) -> bool {
        self.inner.capture.lock().is_ok_and(|c| c.as_ref().is_some_and(|c| c.0 == std::thread::current().id()))
    }

    /// Runs a workload that builds its own recorders without running any kernel: while `f`
    /// runs, every recorder of this thread records its launches and submits nothing (tensors are
    /// still allocated and uploaded; reads return what the buffers held). Lets a layer above
    /// see which kernels a workload would launch, with which shapes, before it runs (the
    /// matmul tuner's warm-up).
    pub fn dry_run<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let slot = &self.inner.dry;
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current().id());
        let r = f();
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        r
    }

    pub(crate) fn dry(&self) -> bool {
        self.inner.dry.lock().is_ok_and(|d| *d == Some(std::thread::current().id()))
    }

    /// Device memory held by lorafuse's buffers and textures (live and peak).
    pub fn memory(&self) -> &Arc<crate::gpu::tensor::MemoryMeter> {
        &self.inner.memory
    }

    /// This device's value of type `T`, made by `init` on first use.
    pub fn state<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        let mut map = self.inner.states.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(TypeId::of::<T>()).or_insert_with(|| Arc::new(init()) as Arc<dyn Any + Send + Sync>);
        entry.clone().downcast::<T>().unwrap_or_else(|_| unreachable!("states are keyed by their type"))
    }

    /// Replaces this device's value of type `T`.
    pub fn set_state<T: Any + Send + Sync>(&self, value: T) {
        let mut map = self.inner.states.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(TypeId::of::<T>(), Arc::new(value));
    }
}
