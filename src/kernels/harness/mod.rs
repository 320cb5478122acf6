//! One harness for every kernel, in the manner of ggml's test-backend-ops: a table of cases
//! (op, shape, dtype, variant), each building fresh random inputs, its launch and its f64 CPU
//! reference, run in three modes.
//!
//! - check: every output is poisoned (NaN) or set to its prior value (accumulating and in-place
//!   kernels), and its buffer runs on past the shape into a guard of sentinel words. After the
//!   launch each output's relative Frobenius error against the reference must be within the
//!   case's tolerance (NaN or infinity never passes; exact outputs must match bit for bit), and
//!   no sentinel may have changed. Kernels bind whole buffers and index them from the start with
//!   unsigned offsets (a negative one wraps, and the bounds check clamps it to the end), so every
//!   stray write lands in the guard after the output.
//! - grad: for the backward kernels, sampled entries of each gradient against central finite
//!   differences of the forward's f64 reference (which checks the analytic reference too).
//! - perf: best-of-N time of the case's launches, GFLOP/s and GB/s from the launches' own work
//!   counts, against the same run's FMA and copy ceilings; the variants of one problem are timed
//!   interleaved, so a noisy machine hits them alike.
//!
//! The table (cases.rs) has a check table of awkward sizes and a perf table of model-sized ones;
//! `lorafuse bench kernels` prints the perf rows, tests/kernels.rs runs check and grad.

mod cases;

use std::fmt;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Op, Recorder, Tensor, TexMatrix, time_ops_with_work};
use crate::kernels::ceiling::Ceilings;
use crate::rng::Rng;

pub use cases::{PerfGrid, check_table, perf_table};

/// Sentinel words after every output.
const GUARD: usize = 64;

/// Builds a case's instance on a device from the case's random stream.
pub type Build = Box<dyn Fn(&Gpu, &mut Rng) -> Result<Instance>>;

/// Records a case's launches.
pub type Launcher = Box<dyn Fn(&mut Recorder) -> Result<()>>;

/// A scalar function of one input (a forward reference's loss).
pub type Loss = Box<dyn Fn(&[f32]) -> f64>;

/// A row of the table: what is run, and how to build an instance of it.
pub struct Case {
    /// The kernel: its launcher's name ("matmul nt", "attention backward", ...).
    pub op: String,
    pub shape: String,
    pub dtype: DType,
    /// The forced kernel variant, or "-" where the launcher has one.
    pub variant: String,
    /// Cases of one group are timed together, interleaved (the variants of one problem).
    pub group: String,
    /// Shown beside its perf row ("tuner's pick").
    pub note: String,
    pub build: Build,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}", self.op, self.shape, self.dtype, self.variant)
    }
}

/// A case built: its launches over fresh inputs, the outputs they write, and their references.
pub struct Instance {
    pub launch: Launcher,
    pub outputs: Vec<Output>,
    /// The arithmetic the case does, where the launches' own count is only a bound (attention
    /// counts every key of the cache: it cannot see the rows' positions). Perf rows use it.
    pub flops: Option<u64>,
}

/// Where an output lives.
pub enum Target {
    Tensor(Tensor),
    /// A texture matrix, compared texel for texel (padding included) with the host packer's
    /// layout: f32 textures value by value, others byte by byte (`texel_values`).
    Texture(Box<TexMatrix>),
}

/// What a texture output is compared as: the f32 values of an f32 texture's texel bytes, or the
/// bytes themselves.
pub fn texel_values(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(bytes).iter().map(|&v| v as f64).collect(),
        _ => bytes.iter().map(|&b| b as f64).collect(),
    }
}

/// How an output is compared with its reference.
pub enum Expect {
    /// Relative Frobenius error at most this.
    Close(f64),
    /// Bit for bit (masks, indices, packed texels).
    Exact,
}

/// One output of an instance.
pub struct Output {
    pub name: &'static str,
    pub target: Target,
    /// The values it holds before the launch (accumulating and in-place kernels); None: NaN.
    pub prior: Option<Vec<f32>>,
    /// The reference: values for a tensor, texel bytes (as f64s) for a texture.
    pub want: Vec<f64>,
    pub expect: Expect,
    /// For gradients: the finite-difference check of grad mode.
    pub fd: Option<FiniteDiff>,
}

/// A gradient's check by finite differences: `loss(x)` is the forward reference's scalar loss
/// (Σ upstream ⊙ output), `x` the input the gradient is of; `samples` entries are compared.
pub struct FiniteDiff {
    pub loss: Loss,
    pub x: Vec<f32>,
    pub h: f32,
    pub samples: usize,
    /// |gpu − fd| ≤ tol · max(|fd|, floor)
    pub tol: f64,
    pub floor: f64,
}

/// A guarded output tensor: `shape` plus sentinel words after it.
pub fn output(gpu: &Gpu, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
    Tensor::guarded(gpu, shape, dtype, GUARD, label)
}

impl Output {
    /// An output poisoned before the launch.
    pub fn new(name: &'static str, t: &Tensor, want: Vec<f64>, expect: Expect) -> Output {
        Output { name, target: Target::Tensor(t.clone()), prior: None, want, expect, fd: None }
    }

    /// An output that holds `prior` before the launch (added to, or rewritten in place).
    pub fn with_prior(mut self, prior: Vec<f32>) -> Output {
        self.prior = Some(prior);
        self
    }

    pub fn with_fd(mut self, fd: FiniteDiff) -> Output {
        self.fd = Some(fd);
        self
    }

    fn prepare(&self, gpu: &Gpu) -> Result<()> {
        match (&self.target, &self.prior) {
            (Target::Tensor(t), None) => t.poison(gpu),
            (Target::Tensor(t), Some(v)) => {
                if t.dtype() == DType::U32 {
                    let words: Vec<u32> = v.iter().map(|&x| x as u32).collect();
                    gpu.queue().write_buffer(t.buffer(), 0, bytemuck::cast_slice(&words));
                } else {
                    t.write_f32(gpu, v)?;
                }
                t.fill_guard(gpu);
            }
            (Target::Texture(t), _) => t.poison_rows(gpu),
        }
        Ok(())
    }

    /// What went wrong with this output after a launch, if anything.
    fn verify(&self, gpu: &Gpu) -> Result<Option<String>> {
        let got: Vec<f64> = match &self.target {
            Target::Tensor(t) => {
                if let Some(at) = t.guard_write(gpu)? {
                    return Ok(Some(format!("wrote past its shape {:?} (guard byte {at})", t.shape())));
                }
                match t.dtype() {
                    DType::U32 => t.read_u32(gpu)?.iter().map(|&u| u as f64).collect(),
                    _ => t.read_f32(gpu)?.iter().map(|&v| v as f64).collect(),
                }
            }
            Target::Texture(t) => texel_values(t.dtype(), &t.read_texels(gpu)?),
        };
        if got.len() != self.want.len() {
            return Ok(Some(format!("{} values for a reference of {}", got.len(), self.want.len())));
        }
        Ok(match self.expect {
            Expect::Exact => (got.iter().zip(&self.want))
                .position(|(g, w)| g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan()))
                .map(|i| format!("element {i} is {} where the reference has {}", got[i], self.want[i])),
            Expect::Close(tol) => {
                let e = rel_err(&got, &self.want);
                (e > tol).then(|| format!("relative error {e:.3e} > {tol:.1e}"))
            }
        })
    }
}

/// ‖got − want‖_F / ‖want‖_F; infinite when `got` has a NaN or an infinity.
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        num += (g - w).powi(2);
        den += w * w;
    }
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

/// The case's seed: the run's seed and the case's place in its table.
fn case_rng(seed: u64, index: usize) -> Rng {
    Rng::new(seed, index as u64 + 1)
}

/// A failed case: which one, with which seed, and what went wrong.
#[derive(Debug)]
pub struct Failure {
    pub case: String,
    pub seed: u64,
    pub what: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (seed {})", self.case, self.what, self.seed)
    }
}

/// Builds case `i` of a table from the run's seed and runs it once: the instance and the case's
/// random stream (for grad mode's samples), or what went wrong.
fn build_and_run(gpu: &Gpu, c: &Case, seed: u64, i: usize) -> std::result::Result<(Instance, Rng), String> {
    let mut rng = case_rng(seed, i);
    let inst = (c.build)(gpu, &mut rng).map_err(|e| format!("could not be built: {e}"))?;
    run_once(gpu, &inst).map_err(|e| format!("failed to run: {e}"))?;
    Ok((inst, rng))
}

/// Check mode over `cases`: every failure, none when all pass.
pub fn check(gpu: &Gpu, cases: &[Case], seed: u64) -> Vec<Failure> {
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let fail = |what: String| Failure { case: c.to_string(), seed, what };
        let inst = match build_and_run(gpu, c, seed, i) {
            Ok((inst, _)) => inst,
            Err(what) => {
                failures.push(fail(what));
                continue;
            }
        };
        for o in &inst.outputs {
            match o.verify(gpu) {
                Ok(None) => {}
                Ok(Some(what)) => failures.push(fail(format!("{}: {what}", o.name))),
                Err(e) => failures.push(fail(format!("{}: could not be read: {e}", o.name))),
            }
        }
    }
    failures
}

fn run_once(gpu: &Gpu, inst: &Instance) -> Result<()> {
    for o in &inst.outputs {
        o.prepare(gpu)?;
    }
    let mut rec = Recorder::new(gpu);
    (inst.launch)(&mut rec)?;
    rec.run()?;
    Ok(())
}

/// Grad mode over `cases`: the outputs with a finite-difference check, sampled entries against
/// central differences of their forward reference. Returns the failures and how many entries
/// were compared.
pub fn grad(gpu: &Gpu, cases: &[Case], seed: u64) -> (Vec<Failure>, usize) {
    let (mut failures, mut compared) = (Vec::new(), 0);
    for (i, c) in cases.iter().enumerate() {
        let fail = |what: String| Failure { case: c.to_string(), seed, what };
        let (inst, mut rng) = match build_and_run(gpu, c, seed, i) {
            Ok(built) => built,
            Err(what) => {
                failures.push(fail(what));
                continue;
            }
        };
        for o in &inst.outputs {
            let (Some(fd), Target::Tensor(t)) = (&o.fd, &o.target) else { continue };
            let got = match t.read_f32(gpu) {
                Ok(g) => g,
                Err(e) => {
                    failures.push(fail(format!("{}: could not be read: {e}", o.name)));
                    continue;
                }
            };
            for _ in 0..fd.samples.min(fd.x.len()) {
                let j = rng.below(fd.x.len());
                let (mut a, mut b) = (fd.x.clone(), fd.x.clone());
                a[j] += fd.h;
                b[j] -= fd.h;
                let num = ((fd.loss)(&a) - (fd.loss)(&b)) / (a[j] as f64 - b[j] as f64);
                let g = got[j] as f64;
                compared += 1;
                if !g.is_finite() || (g - num).abs() > fd.tol * num.abs().max(fd.floor) {
                    failures.push(fail(format!("{}[{j}]: GPU {g} vs finite difference {num}", o.name)));
                    break;
                }
            }
        }
    }
    (failures, compared)
}

/// A perf row: one case timed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PerfRow {
    pub op: String,
    pub shape: String,
    pub dtype: DType,
    pub variant: String,
    /// Launches of one run of the case.
    pub launches: usize,
    pub ms: f64,
    pub gflops: f64,
    pub gbps: f64,
    /// Shares of the measured FMA and copy ceilings.
    pub pct_fma: f64,
    pub pct_copy: f64,
    pub note: String,
}

/// Perf mode over `cases`: each group's cases timed interleaved, best of `reps` rounds; rows
/// in table order, reported to `row` as each group finishes.
pub fn perf(
    gpu: &Gpu,
    cases: &[Case],
    reps: u32,
    ceiling: &Ceilings,
    mut row: impl FnMut(&PerfRow),
) -> Result<Vec<PerfRow>> {
    let mut rows = Vec::new();
    let mut i = 0;
    while i < cases.len() {
        let end = i + cases[i..].iter().take_while(|c| c.group == cases[i].group).count();
        let group = &cases[i..end];
        let insts = (group.iter().enumerate())
            .map(|(k, c)| (c.build)(gpu, &mut case_rng(0, i + k)).map_err(|e| Error::Invalid(format!("{c}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        for o in insts.iter().flat_map(|inst| &inst.outputs) {
            o.prepare(gpu)?; // prior values keep in-place kernels' data sensible
        }
        let mut launches: Vec<Box<Op>> =
            insts.iter().map(|inst| Box::new(|rec: &mut Recorder| (inst.launch)(rec)) as Box<Op>).collect();
        let mut ops: Vec<&mut Op> = launches.iter_mut().map(|l| l.as_mut()).collect();
        let times = time_ops_with_work(gpu, reps, &mut ops)?;
        for ((c, t), inst) in group.iter().zip(times).zip(&insts) {
            let (best, work) = (t.ms, t.work);
            let flops = inst.flops.unwrap_or(work.flops);
            let (gflops, gbps) = (flops as f64 / best / 1e6, work.bytes as f64 / best / 1e6);
            let r = PerfRow {
                op: c.op.clone(),
                shape: c.shape.clone(),
                dtype: c.dtype,
                variant: c.variant.clone(),
                launches: t.launches,
                ms: best,
                gflops,
                gbps,
                pct_fma: 100.0 * gflops / ceiling.fma_gflops,
                pct_copy: 100.0 * gbps / ceiling.copy_gbps,
                note: c.note.clone(),
            };
            row(&r);
            rows.push(r);
        }
        i = end;
    }
    Ok(rows)
}
