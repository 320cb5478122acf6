//! The autotuner: which matmul variant runs, per device and shape class, and which weight
//! layout a model is loaded in.
//!
//! Recording a workload only looks choices up (`choose`, `preferred_layout`); a class without a
//! choice runs the built-in default. Timing is an explicit step: `lorafuse tune`, or the warm-up
//! phase a command runs before its work (`warm_up`), which dry-runs that work (every kernel
//! recorded, none run) to learn which classes it will need and times the ones not yet chosen,
//! behind one progress line.
//!
//! A device is keyed by adapter name, backend, driver, driver version and the shader sources'
//! fingerprint (a driver upgrade or a new build re-tunes). A shape class is (form, weight layout,
//! weight dtype, M bucket, N bucket, K bucket); a class is timed at the first problem of it the
//! workload records, as a proxy shape capped at 256 × 1024 × 2048 so tuning stays well under a
//! second a class even where a candidate runs at 1 GF/s. The cache lives in
//! `$LORAFUSE_CACHE_DIR/tune.json` (else `$XDG_CACHE_HOME/lorafuse/` or `~/.cache/lorafuse/`),
//! written atomically. `LORAFUSE_TUNE=off` never times (cached choices still apply).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Layout, Matrix, Op, Recorder, Tensor, time_ops};
use crate::kernels::matmul::{Form, MatmulOpts, Variant, matmul};
use crate::progress::Progress;
use crate::rng::Rng;

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

/// Where choices are kept and whether timing may happen.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Folder of the cache file (`None`: choices live in memory only).
    pub cache_dir: Option<PathBuf>,
    /// Time candidates in `warm_up` and `tune_now`; when false only cached choices and the
    /// built-in defaults are used.
    pub timing: bool,
}

impl Settings {
    /// `LORAFUSE_TUNE=off` (or 0) and the default cache folder.
    pub fn from_env() -> Settings {
        let timing = !matches!(std::env::var("LORAFUSE_TUNE").as_deref(), Ok("off") | Ok("0"));
        Settings { cache_dir: default_cache_dir(), timing }
    }
}

/// One matmul problem, as a class is timed at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Problem {
    pub form: Form,
    pub layout: Layout,
    pub dtype: DType,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl Problem {
    fn key(&self) -> String {
        format!(
            "matmul/{}/{}/{}/m{}/n{}/k{}",
            self.form,
            self.layout.name(),
            self.dtype,
            bucket_m(self.m),
            self.n.max(1).next_power_of_two(),
            self.k.max(1).next_power_of_two()
        )
    }
}

/// A device's choices: the cached ones, and the classes a dry run met without one.
pub struct Tuner {
    path: Option<PathBuf>,
    device_key: String,
    timing: bool,
    entries: BTreeMap<String, Choice>,
    missing: BTreeMap<String, Problem>,
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

const LAYOUT_KEY: &str = "layout";

impl Tuner {
    fn load(settings: Settings, gpu: &Gpu) -> Tuner {
        let (info, caps) = (gpu.info(), gpu.caps());
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
        let path = settings.cache_dir.map(|d| d.join("tune.json"));
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
        Tuner { path, device_key, timing: settings.timing, entries, missing: BTreeMap::new() }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn entries(&self) -> &BTreeMap<String, Choice> {
        &self.entries
    }

    pub fn timing(&self) -> bool {
        self.timing
    }

    /// Forgets every choice for this device (the next warm-up re-times what it needs).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Writes this device's choices into the cache file, merged with what other processes and
    /// devices wrote since it was read.
    fn save(&self) {
        let Some(path) = &self.path else { return };
        let mut file = read_cache(path).unwrap_or_default();
        file.version = 1;
        file.devices.insert(self.device_key.clone(), self.entries.clone());
        let text = serde_json::to_string_pretty(&file).unwrap_or_default();
        if let Err(e) = write_atomic(path, &text) {
            eprintln!("lorafuse: could not save the tune cache: {e}");
        }
    }
}

/// This device's tuner (loaded from `Settings::from_env` on first use).
pub fn tuner(gpu: &Gpu) -> TunerGuard {
    TunerGuard(gpu.state(|| Mutex::new(Tuner::load(Settings::from_env(), gpu))))
}

/// A handle on a device's tuner; `lock` to read or change it.
pub struct TunerGuard(Arc<Mutex<Tuner>>);

impl TunerGuard {
    pub fn lock(&self) -> MutexGuard<'_, Tuner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Replaces this device's tuner with one under `settings` (tests point it at their own folder).
pub fn configure(gpu: &Gpu, settings: Settings) {
    gpu.set_state(Mutex::new(Tuner::load(settings, gpu)));
}

/// The variants the tuner chooses among for `p`.
pub fn candidates_of(gpu: &Gpu, p: &Problem) -> Result<Vec<Variant>> {
    candidates(gpu, p.form, p.layout, p.m)
}

/// The candidates for a problem of `m` rows.
fn candidates(gpu: &Gpu, form: Form, layout: Layout, m: usize) -> Result<Vec<Variant>> {
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
    Ok(candidates)
}

/// The variant to run for `p`: the cached choice of its class, else the built-in default. In a
/// dry run a class without a choice is noted for the warm-up to time.
pub fn choose(rec: &Recorder, p: &Problem) -> Result<Variant> {
    resolve(rec.gpu(), p, rec.is_dry())
}

/// The variant `choose` would run for `p` (nothing noted).
pub fn lookup(gpu: &Gpu, p: &Problem) -> Result<Variant> {
    resolve(gpu, p, false)
}

fn resolve(gpu: &Gpu, p: &Problem, note: bool) -> Result<Variant> {
    let candidates = candidates(gpu, p.form, p.layout, p.m)?;
    let key = p.key();
    let shared = tuner(gpu);
    let mut t = shared.lock();
    if let Some(v) = t.entries.get(&key).and_then(|c| c.variant.parse::<Variant>().ok())
        && candidates.contains(&v)
    {
        return Ok(v);
    }
    if note && candidates.len() > 1 {
        t.missing.entry(key).or_insert(*p);
    }
    Ok(default_variant(gpu, &candidates, p.m))
}

/// The built-in choice: the texture kernel's widest row block on CPU drivers, row strips for
/// decode-sized M (texture_r1c4, which beat texdot_r1c4 with every weight type at the model's
/// decode shapes on lavapipe: 2.5–6× with 4-bit weights, 1.5× for the f16 LM head), shared-memory
/// tiles on GPUs.
fn default_variant(gpu: &Gpu, candidates: &[Variant], m: usize) -> Variant {
    let wanted = if m <= 4 {
        candidates
            .iter()
            .find(|v| matches!(v, Variant::Texture { rows: 1, cols: 4 } | Variant::Blocked { rows: 1, .. }))
    } else if gpu.is_software() {
        candidates.iter().find(|v| !matches!(v, Variant::Tiled))
    } else {
        candidates.iter().find(|v| matches!(v, Variant::Tiled))
    };
    *wanted.unwrap_or(&candidates[0])
}

/// The warm-up phase of a command: dry-runs `work` (what the command is about to do, or a
/// representative part of it) to learn the shape classes it needs, then times those without a
/// choice, behind one progress line unless `quiet`, and caches the choices. Does nothing when
/// timing is off. Returns how many classes it timed.
pub fn warm_up<T>(gpu: &Gpu, quiet: bool, work: impl FnOnce() -> Result<T>) -> Result<usize> {
    let shared = tuner(gpu);
    if !shared.lock().timing {
        return Ok(0);
    }
    gpu.dry_run(work)?;
    let missing: Vec<Problem> = std::mem::take(&mut shared.lock().missing).into_values().collect();
    tune_now(gpu, &missing, quiet)
}

/// Times every problem of `problems` whose class has no choice yet (whatever the timing
/// setting: this is the explicit step), caches the choices, and returns how many it timed.
pub fn tune_now(gpu: &Gpu, problems: &[Problem], quiet: bool) -> Result<usize> {
    let shared = tuner(gpu);
    let mut todo: BTreeMap<String, Problem> = BTreeMap::new();
    {
        let t = shared.lock();
        for p in problems {
            let key = p.key();
            let cached = t.entries.get(&key).and_then(|c| c.variant.parse::<Variant>().ok());
            let cands = candidates(gpu, p.form, p.layout, p.m)?;
            if cands.len() > 1 && !cached.is_some_and(|v| cands.contains(&v)) {
                todo.entry(key).or_insert(*p);
            }
        }
    }
    if todo.is_empty() {
        return Ok(0);
    }
    let started = Instant::now();
    let path = shared.lock().path.clone();
    let cached_in = path.map_or("kept in memory".to_string(), |p| format!("cached in {}", p.display()));
    let bar =
        Progress::new(todo.len(), &format!("tuning kernels for this device (once; {cached_in})"), "shapes", quiet);
    for (key, p) in &todo {
        let choice = time_candidates(gpu, p, &candidates(gpu, p.form, p.layout, p.m)?)?;
        shared.lock().entries.insert(key.clone(), choice);
        bar.inc(1);
    }
    bar.finish();
    shared.lock().save();
    if !quiet {
        eprintln!("tuned {} kernel shapes in {:.1} s", todo.len(), started.elapsed().as_secs_f64());
    }
    Ok(todo.len())
}

/// Times every candidate at the proxy shape of `p` and returns the fastest.
pub fn time_candidates(gpu: &Gpu, p: &Problem, candidates: &[Variant]) -> Result<Choice> {
    let pm = p.m.clamp(1, 256);
    let pn = p.n.clamp(1, 1024);
    let pk = p.k.clamp(1, 2048);
    let (a_shape, b_shape) = match p.form {
        Form::Nt => ([pm, pk], [pn, pk]),
        Form::Nn => ([pm, pk], [pk, pn]),
        Form::Tn => ([pk, pm], [pk, pn]),
    };
    let a = Tensor::from_f32(gpu, &a_shape, &Rng::new(1, 0).vec(pm * pk, 0.5), "tune a")?;
    let b_host = Rng::new(2, 0).vec(pn * pk, 0.5);
    let b = Matrix::from_host(gpu, p.layout, b_shape[0], b_shape[1], &b_host, p.dtype, "tune b")?;
    let y = Tensor::zeros(gpu, &[pm, pn], DType::F32, "tune y")?;
    let opts: Vec<MatmulOpts> =
        candidates.iter().map(|&v| MatmulOpts { variant: Some(v), ..Default::default() }).collect();
    let (a, b, y, form) = (&a, &b, &y, p.form);
    let mut closures: Vec<Box<Op>> =
        opts.iter().map(|o| Box::new(move |rec: &mut Recorder| matmul(rec, form, a, b, y, o)) as Box<Op>).collect();
    let mut refs: Vec<&mut Op> = closures.iter_mut().map(|c| c.as_mut()).collect();
    let times = time_ops(gpu, 5, &mut refs)?;
    let tried: BTreeMap<String, f64> = candidates.iter().map(|v| v.to_string()).zip(times).collect();
    let best = tried.iter().min_by(|a, b| a.1.total_cmp(b.1)).map(|(v, _)| v.clone()).unwrap_or_default();
    Ok(Choice { variant: best, tried, proxy: [pm, pn, pk] })
}

fn layout_of(choice: &Choice) -> Layout {
    if choice.variant.starts_with("texture") { Layout::Texture } else { Layout::Buffer }
}

/// The weight layout for this device: the cached choice, else texture on CPU drivers (where a
/// texture kernel exists) and buffer elsewhere.
pub fn preferred_layout(gpu: &Gpu) -> Layout {
    if Variant::candidates(gpu, Form::Nt, Layout::Texture).is_empty() {
        return Layout::Buffer;
    }
    if let Some(c) = tuner(gpu).lock().entries.get(LAYOUT_KEY) {
        return layout_of(c);
    }
    if gpu.is_software() { Layout::Texture } else { Layout::Buffer }
}

/// Decides the weight layout by timing (when timing is on and no choice is cached): texture
/// when a texture kernel beats every storage-buffer kernel on a mid-sized product. Part of the
/// warm-up, run before a model is loaded.
pub fn tune_layout(gpu: &Gpu, quiet: bool) -> Result<Layout> {
    let timing = {
        let t = tuner(gpu);
        let t = t.lock();
        t.timing && !t.entries.contains_key(LAYOUT_KEY)
    };
    if !timing || Variant::candidates(gpu, Form::Nt, Layout::Texture).is_empty() {
        return Ok(preferred_layout(gpu));
    }
    let (m, n, k) = (64, 1024, 1024);
    let mut best: Option<Choice> = None;
    for layout in [Layout::Texture, Layout::Buffer] {
        let candidates = Variant::candidates(gpu, Form::Nt, layout);
        let p = Problem { form: Form::Nt, layout, dtype: DType::F32, m, n, k };
        let c = time_candidates(gpu, &p, &candidates)?;
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
    let layout = layout_of(&choice);
    if !quiet {
        eprintln!("tuned the weight layout for this device: {}", layout.name());
    }
    let t = tuner(gpu);
    let mut t = t.lock();
    t.entries.insert(LAYOUT_KEY.to_string(), choice);
    t.save();
    Ok(layout)
}
