//! The autotuner: which matmul variant to run, per device and shape class, decided by timing
//! the candidates once and remembered on disk.
//!
//! A device is keyed by adapter name, backend, driver, driver version and the shader sources'
//! fingerprint (a driver upgrade or a new build re-tunes). A shape class is (form, weight layout,
//! weight dtype, M bucket, N bucket, K bucket); the first problem of a class is timed at a proxy
//! shape capped at 256 × 1024 × 2048 so tuning stays well under a second a class even where a
//! candidate runs at 1 GF/s. The cache lives in `$LORAFUSE_CACHE_DIR/tune.json` (else
//! `$XDG_CACHE_HOME/lorafuse/` or `~/.cache/lorafuse/`), written atomically. `LORAFUSE_TUNE=off`
//! skips timing and uses the built-in defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::atomic::write_atomic;
use crate::bench::fill;
use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, Layout, Matrix, Recorder, Tensor, group_ms};
use crate::kernels::matmul::{Form, MatmulOpts, Variant, matmul};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Choice {
    pub variant: String,
    /// Best time of each candidate at the proxy shape, ms.
    pub tried: BTreeMap<String, f64>,
    pub proxy: [usize; 3],
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct CacheFile {
    version: u32,
    devices: BTreeMap<String, BTreeMap<String, Choice>>,
}

pub struct Tuner {
    path: Option<PathBuf>,
    device_key: String,
    timing: bool,
    entries: BTreeMap<String, Choice>,
}

/// Where the tune cache lives by default.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("LORAFUSE_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("lorafuse"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("lorafuse"))
}

fn read_cache(path: &Path) -> Result<CacheFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(CacheFile { version: 1, ..Default::default() });
        }
        Err(e) => return Err(Error::file(path, e)),
    };
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not a lorafuse tune cache: {e}")))
}

fn bucket_m(m: usize) -> usize {
    match m {
        0..=1 => 1,
        2..=8 => 8,
        9..=32 => 32,
        33..=128 => 128,
        129..=512 => 512,
        _ => 4096,
    }
}

fn class_key(form: Form, layout: Layout, dtype: DType, m: usize, n: usize, k: usize) -> String {
    format!(
        "matmul/{form}/{}/{dtype}/m{}/n{}/k{}",
        layout.name(),
        bucket_m(m),
        n.max(1).next_power_of_two(),
        k.max(1).next_power_of_two()
    )
}

impl Tuner {
    pub(crate) fn load(cache_dir: Option<PathBuf>, timing: bool, info: &wgpu::AdapterInfo, caps: &Caps) -> Tuner {
        // The kernels' own fingerprint is part of the key: a new build re-times its kernels.
        let device_key = format!(
            "{}|{}|{}|{}|sg{:?}|kernels {:016x}",
            info.name,
            info.backend.to_str(),
            info.driver,
            info.driver_info,
            caps.fixed_subgroup_size,
            crate::gpu::shader::sources_hash()
        );
        let path = cache_dir.map(|d| d.join("tune.json"));
        let entries = match &path {
            Some(p) => match read_cache(p) {
                Ok(mut f) => f.devices.remove(&device_key).unwrap_or_default(),
                Err(e) => {
                    eprintln!("lorafuse: ignoring the tune cache ({e}); it will be rewritten");
                    BTreeMap::new()
                }
            },
            None => BTreeMap::new(),
        };
        Tuner { path, device_key, timing, entries }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn entries(&self) -> &BTreeMap<String, Choice> {
        &self.entries
    }

    fn record(&mut self, key: String, choice: Choice) {
        self.entries.insert(key, choice);
        if let Some(path) = &self.path {
            // Merge with what other processes and devices wrote since we loaded.
            let mut file = read_cache(path).unwrap_or_default();
            file.version = 1;
            file.devices.insert(self.device_key.clone(), self.entries.clone());
            let text = serde_json::to_string_pretty(&file).unwrap_or_default();
            if let Err(e) = write_atomic(path, &text) {
                eprintln!("lorafuse: could not save the tune cache: {e}");
            }
        }
    }

    /// Forgets every choice for this device (the next use of each class re-times it).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The variant to run for this problem. Times the candidates on first use of a shape class.
pub fn select(gpu: &Gpu, form: Form, layout: Layout, dtype: DType, m: usize, n: usize, k: usize) -> Result<Variant> {
    let mut candidates = Variant::candidates(gpu, form, layout);
    // One row: blocks of several rows only repeat the work, and timing noise at the small proxy
    // shape would sometimes crown one anyway.
    if m == 1 && candidates.iter().any(|v| v.rows() == 1) {
        candidates.retain(|v| v.rows() == 1);
    }
    if candidates.is_empty() {
        return Err(Error::Unsupported {
            kernel: format!("matmul {form}"),
            variant: layout.name().into(),
            reason: format!("no kernel takes a {} B operand on this device", layout.name()),
        });
    }
    let key = class_key(form, layout, dtype, m, n, k);
    let timing = {
        let t = gpu.tuner();
        if let Some(v) = t.entries.get(&key).and_then(|c| c.variant.parse::<Variant>().ok())
            && candidates.contains(&v)
        {
            return Ok(v);
        }
        t.timing
    };
    if !timing || candidates.len() == 1 {
        return Ok(default_variant(gpu, &candidates, m));
    }
    let choice = time_candidates(gpu, form, layout, dtype, m, n, k, &candidates)?;
    let v = choice.variant.parse()?;
    eprintln!("lorafuse: tuned {key}: {}", describe(&choice));
    gpu.tuner().record(key, choice);
    Ok(v)
}

fn describe(c: &Choice) -> String {
    let others: Vec<String> = c.tried.iter().map(|(v, ms)| format!("{v} {ms:.3} ms")).collect();
    format!("{} at {:?} ({})", c.variant, c.proxy, others.join(", "))
}

/// The built-in choice when timing is off: the texture kernel's widest row block on CPU
/// drivers, row strips for decode-sized M, shared-memory tiles on GPUs.
fn default_variant(gpu: &Gpu, candidates: &[Variant], m: usize) -> Variant {
    let wanted = if m <= 4 {
        candidates.iter().find(|v| matches!(v, Variant::TextureDot { rows: 1, .. } | Variant::Blocked { rows: 1, .. }))
    } else if gpu.is_software() {
        candidates.iter().find(|v| !matches!(v, Variant::Tiled))
    } else {
        candidates.iter().find(|v| matches!(v, Variant::Tiled))
    };
    *wanted.unwrap_or(&candidates[0])
}

/// Times every candidate at the proxy shape of (m, n, k) and returns the fastest.
#[allow(clippy::too_many_arguments)]
pub fn time_candidates(
    gpu: &Gpu,
    form: Form,
    layout: Layout,
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    candidates: &[Variant],
) -> Result<Choice> {
    let pm = m.clamp(1, 256);
    let pn = n.clamp(1, 1024);
    let pk = k.clamp(1, 2048);
    let (a_shape, b_shape) = match form {
        Form::Nt => ([pm, pk], [pn, pk]),
        Form::Nn => ([pm, pk], [pk, pn]),
        Form::Tn => ([pk, pm], [pk, pn]),
    };
    let a = Tensor::from_f32(gpu, &a_shape, &fill(pm * pk, 1), "tune a")?;
    let b = Matrix::from_host(gpu, layout, b_shape[0], b_shape[1], &fill(pn * pk, 2), dtype, "tune b")?;
    let y = Tensor::zeros(gpu, &[pm, pn], DType::F32, "tune y")?;
    let opts: Vec<MatmulOpts> =
        candidates.iter().map(|&v| MatmulOpts { variant: Some(v), ..Default::default() }).collect();
    let (a, b, y) = (&a, &b, &y);
    let mut closures: Vec<Box<Op>> =
        opts.iter().map(|o| Box::new(move |rec: &mut Recorder| matmul(rec, form, a, b, y, o)) as Box<Op>).collect();
    let mut refs: Vec<&mut Op> = closures.iter_mut().map(|c| c.as_mut()).collect();
    let times = time_ops(gpu, 5, &mut refs)?;
    let tried: BTreeMap<String, f64> = candidates.iter().map(|v| v.to_string()).zip(times).collect();
    let best = tried.iter().min_by(|a, b| a.1.total_cmp(b.1)).map(|(v, _)| v.clone()).unwrap_or_default();
    Ok(Choice { variant: best, tried, proxy: [pm, pn, pk] })
}

/// Best time (ms) of `reps` runs of `op`, after one warm-up run (pipeline compilation, lazy
/// texture clears).
pub fn time_op(gpu: &Gpu, reps: u32, op: impl FnMut(&mut Recorder) -> Result<()>) -> Result<f64> {
    let mut op = op;
    Ok(time_ops(gpu, reps, &mut [&mut op])?[0])
}

/// Best time (ms) of each op over `reps` rounds. Rounds interleave the ops (a, b, c, a, b, c, …)
/// in one profiled submission, so a slow spell of a shared machine hits every op alike and the
/// ratios between them hold even when absolute times drift.
pub type Op<'a> = dyn FnMut(&mut Recorder) -> Result<()> + 'a;

pub fn time_ops(gpu: &Gpu, reps: u32, ops: &mut [&mut Op]) -> Result<Vec<f64>> {
    let mut warm = Recorder::new(gpu);
    for op in ops.iter_mut() {
        op(&mut warm)?;
    }
    warm.run()?;
    let n = ops.len() as u32;
    let mut rec = Recorder::profiled(gpu);
    for r in 0..reps {
        for (i, op) in ops.iter_mut().enumerate() {
            rec.set_group(r * n + i as u32);
            op(&mut rec)?;
        }
    }
    let per_group = group_ms(&rec.run()?, reps * n);
    Ok((0..n as usize)
        .map(|i| per_group.iter().skip(i).step_by(n as usize).copied().fold(f64::INFINITY, f64::min))
        .collect())
}

/// The weight layout for this device: texture when a texture kernel beats every storage-buffer
/// kernel on a mid-sized product, else buffer. Timed once and cached like the variants.
pub fn preferred_layout(gpu: &Gpu) -> Result<Layout> {
    if Variant::candidates(gpu, Form::Nt, Layout::Texture).is_empty() {
        return Ok(Layout::Buffer);
    }
    let key = "layout".to_string();
    let timing = {
        let t = gpu.tuner();
        if let Some(c) = t.entries.get(&key) {
            return Ok(if c.variant.starts_with("texture") { Layout::Texture } else { Layout::Buffer });
        }
        t.timing
    };
    if !timing {
        return Ok(if gpu.is_software() { Layout::Texture } else { Layout::Buffer });
    }
    let (m, n, k) = (64, 1024, 1024);
    let mut best: Option<Choice> = None;
    for layout in [Layout::Texture, Layout::Buffer] {
        let candidates = Variant::candidates(gpu, Form::Nt, layout);
        let c = time_candidates(gpu, Form::Nt, layout, DType::F32, m, n, k, &candidates)?;
        best = Some(match best {
            None => c,
            Some(mut b) => {
                let (bt, ct) = (b.tried[&b.variant], c.tried[&c.variant]);
                let winner = if ct < bt { c.variant.clone() } else { b.variant.clone() };
                b.tried.extend(c.tried);
                b.variant = winner;
                b
            }
        });
    }
    let choice = best.ok_or_else(|| Error::Invalid("no layout candidates".into()))?;
    let layout = if choice.variant.starts_with("texture") { Layout::Texture } else { Layout::Buffer };
    eprintln!("lorafuse: tuned weight layout: {} ({})", layout.name(), describe(&choice));
    gpu.tuner().record(key, choice);
    Ok(layout)
}
