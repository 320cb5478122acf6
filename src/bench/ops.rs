//! `lorafuse bench kernels`: the kernel harness's perf rows (every kernel at the model's sizes,
//! every matmul variant at the reference shapes, each rated against the device's ceilings
//! measured in the same run), and the fused multi-LoRA layer against its sequential and merged
//! baselines and the base matmul alone, all timed in one run on one device.

use std::time::Instant;

use serde::Serialize;

use crate::bench::Progress;
use crate::error::Result;
use crate::gpu::{DType, Gpu, Layout, Matrix, Recorder, Tensor, time_ops};
use crate::kernels::ceiling::{self, Ceilings};
use crate::kernels::harness::{self, PerfGrid, PerfRow, perf_table};
use crate::kernels::lora::{
    FusedLinear, HostAdapter, LoraStack, Mix, SeqAdapter, Sequential, lora_forward, lora_merge, lora_sequential,
};
use crate::kernels::matmul::tune;
use crate::kernels::matmul::{Form, MatmulOpts, matmul};
use crate::rng::Rng;

/// What to measure. `standard()` is the grid; `quick()` a minute-long subset.
#[derive(Clone, Debug)]
pub struct Grid {
    /// (form, m, k, n): Y[m,n] from an inner dimension k.
    pub matmuls: Vec<(Form, usize, usize, usize)>,
    pub dtypes: Vec<DType>,
    pub lora_ms: Vec<usize>,
    pub lora_ranks: Vec<usize>,
    pub lora_adapters: Vec<usize>,
    pub lora_hidden: Vec<usize>,
    /// Weight dtype of the fused-LoRA rows.
    pub lora_dtype: DType,
    /// Sequence lengths of the attention rows, and rows of the other kernels' rows.
    pub seqs: Vec<usize>,
    pub rows: usize,
    pub reps: u32,
}

impl Grid {
    pub fn standard() -> Grid {
        Grid {
            matmuls: vec![
                (Form::Nt, 256, 2048, 2048),
                (Form::Nt, 1, 2048, 2048),
                (Form::Nt, 16, 576, 1536),
                (Form::Nn, 256, 2048, 2048),
                (Form::Nn, 1024, 576, 1536),
                (Form::Tn, 16, 1024, 576),
            ],
            dtypes: vec![DType::F32, DType::F16, DType::Q4, DType::Q8],
            lora_ms: vec![1, 16, 256, 2048],
            lora_ranks: vec![8, 16, 64],
            lora_adapters: vec![1, 2, 4, 8],
            lora_hidden: vec![576, 2048],
            lora_dtype: DType::F32,
            seqs: vec![128, 512, 1536],
            rows: 256,
            reps: 5,
        }
    }

    pub fn quick() -> Grid {
        Grid {
            matmuls: vec![(Form::Nt, 256, 2048, 2048), (Form::Nt, 1, 2048, 2048), (Form::Nn, 256, 576, 576)],
            dtypes: vec![DType::F32, DType::F16, DType::Q4],
            lora_ms: vec![1, 256],
            lora_ranks: vec![16],
            lora_adapters: vec![1, 2],
            lora_hidden: vec![576, 2048],
            lora_dtype: DType::F32,
            seqs: vec![128, 512],
            rows: 128,
            reps: 3,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceRow {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    /// How kernel times were taken: GPU timestamp queries or the host wall clock.
    pub clock: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoraRow {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub rank: usize,
    pub adapters: usize,
    pub dtype: DType,
    pub layout: Layout,
    pub base_ms: f64,
    pub fused_ms: f64,
    pub sequential_ms: f64,
    pub merged_ms: f64,
    /// fused / base: the cost of the adapters when fused.
    pub fused_over_base: f64,
    /// sequential / fused: what fusing saves.
    pub sequential_over_fused: f64,
    /// Dispatches per forward: fused (pack + shrink + base) vs sequential.
    pub fused_dispatches: usize,
    pub sequential_dispatches: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: DeviceRow,
    pub ceiling: Ceilings,
    /// The harness's perf rows (src/kernels/harness).
    pub ops: Vec<PerfRow>,
    pub fused_lora: Vec<LoraRow>,
    pub seconds: f64,
}

/// Runs the grid, reporting rows to `progress` as they finish.
pub fn run(gpu: &Gpu, grid: &Grid, progress: &mut dyn Progress) -> Result<Report> {
    let start = Instant::now();
    let ceiling = ceiling::measure(gpu, grid.reps)?;
    progress.note(&format!("ceilings: FMA {:.1} GFLOP/s, copy {:.2} GB/s", ceiling.fma_gflops, ceiling.copy_gbps));
    let info = gpu.info();
    let device = DeviceRow {
        name: info.name.clone(),
        backend: info.backend.to_str().into(),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        clock: if gpu.caps().timestamps { "gpu-timestamps" } else { "wall-clock" },
    };
    let perf = PerfGrid {
        matmuls: grid.matmuls.clone(),
        dtypes: grid.dtypes.clone(),
        seqs: grid.seqs.clone(),
        rows: grid.rows,
    };
    let table = perf_table(gpu, &perf);
    progress.start("kernels", table.len());
    let ops = harness::perf(gpu, &table, grid.reps, &ceiling, |r| {
        progress.row(&format!(
            "{} {} {} {}: {:.3} ms, {:.2} GFLOP/s ({:.0}% of FMA), {:.2} GB/s ({:.0}% of copy)",
            r.op, r.shape, r.dtype, r.variant, r.ms, r.gflops, r.pct_fma, r.gbps, r.pct_copy
        ))
    })?;
    let lora_rows = bench_lora(gpu, grid, progress)?;
    Ok(Report { device, ceiling, ops, fused_lora: lora_rows, seconds: start.elapsed().as_secs_f64() })
}

fn bench_lora(gpu: &Gpu, grid: &Grid, progress: &mut dyn Progress) -> Result<Vec<LoraRow>> {
    let layout = tune::preferred_layout(gpu);
    let dtype = grid.lora_dtype;
    let mut jobs = Vec::new();
    for &h in &grid.lora_hidden {
        for &m in &grid.lora_ms {
            for &r in &grid.lora_ranks {
                for &na in &grid.lora_adapters {
                    jobs.push((h, m, r, na));
                }
            }
        }
    }
    progress.start("fused vs sequential vs merged", jobs.len());
    let mut rows = Vec::new();
    let mut base: Option<(usize, Matrix, Tensor)> = None;
    for (h, m, r, na) in jobs {
        let (k, n) = (h, h);
        if base.as_ref().map(|(bh, _, _)| *bh != h).unwrap_or(true) {
            let w = Rng::new(3, 0).vec(n * k, 0.5);
            let wm = Matrix::from_host(gpu, layout, n, k, &w, dtype, "bench w")?;
            let wb = match dtype {
                DType::F16 => Tensor::from_f32_as_f16(gpu, &[n, k], &w, "bench w buffer")?,
                _ => Tensor::from_f32(gpu, &[n, k], &w, "bench w buffer")?,
            };
            base = Some((h, wm, wb));
        }
        let Some((_, wm, wb)) = &base else { unreachable!() };
        let ads: Vec<HostAdapter> = (0..na)
            .map(|i| HostAdapter {
                rank: r,
                a: Rng::new(10 + i as u64, 0).vec(r * k, 0.5),
                b: Rng::new(20 + i as u64, 0).vec(n * r, 0.5),
                scale: 32.0 / r as f32,
            })
            .collect();
        let weights: Vec<f32> = (0..na).map(|i| 1.0 / (i + 1) as f32).collect();
        let x = Tensor::from_f32(gpu, &[m, k], &Rng::new(4, 0).vec(m * k, 0.5), "bench x")?;
        let y = Tensor::zeros(gpu, &[m, n], DType::F32, "bench y")?;
        let stack = LoraStack::new(gpu, layout, k, n, &ads)?;
        let coef = Mix::All(weights.clone()).coef_tensor(gpu, m, &stack)?;
        let t = Tensor::zeros(gpu, &[m, stack.rp()], DType::F32, "bench t")?;

        let factors: Vec<(Matrix, Matrix)> = ads
            .iter()
            .map(|ad| {
                Ok((
                    Matrix::from_host(gpu, layout, r, k, &ad.a, DType::F32, "seq a")?,
                    Matrix::from_host(gpu, layout, n, r, &ad.b, DType::F32, "seq b")?,
                ))
            })
            .collect::<Result<_>>()?;
        let seq: Vec<SeqAdapter> = factors
            .iter()
            .zip(&ads)
            .zip(&weights)
            .map(|((f, ad), &wt)| SeqAdapter { a: &f.0, b: &f.1, weight: wt * ad.scale })
            .collect();
        let ts: Vec<Tensor> =
            (0..na).map(|_| Tensor::zeros(gpu, &[m, r], DType::F32, "seq t")).collect::<Result<_>>()?;
        let sequential = Sequential { w: wm, adapters: &seq, ts: &ts, accumulate: false };
        let fused = FusedLinear { w: wm, lora: &stack, coef: &coef, t: &t };
        let merged = Tensor::zeros(gpu, &[n, k], DType::F32, "merged w")?;
        let mut rec = crate::gpu::Recorder::new(gpu);
        lora_merge(&mut rec, wb, &stack, &weights, &merged)?;
        rec.run()?;
        let merged_m = Matrix::from_host(gpu, layout, n, k, &merged.read_f32(gpu)?, dtype, "merged w")?;

        let plain = MatmulOpts::default();
        let mut base_op = |rec: &mut Recorder| matmul(rec, Form::Nt, &x, wm, &y, &plain);
        let mut fused_op = |rec: &mut Recorder| lora_forward(rec, &fused, &x, &y, None);
        let mut seq_op = |rec: &mut Recorder| lora_sequential(rec, &sequential, &x, &y);
        let mut merged_op = |rec: &mut Recorder| matmul(rec, Form::Nt, &x, &merged_m, &y, &plain);
        let times = time_ops(gpu, grid.reps, &mut [&mut base_op, &mut fused_op, &mut seq_op, &mut merged_op])?;
        let [base_ms, fused_ms, sequential_ms, merged_ms] = [times[0], times[1], times[2], times[3]];

        let count = |f: &mut dyn FnMut(&mut crate::gpu::Recorder) -> Result<()>| -> Result<usize> {
            let mut rec = crate::gpu::Recorder::new(gpu);
            f(&mut rec)?;
            Ok(rec.len())
        };
        let fused_dispatches = count(&mut |rec| lora_forward(rec, &fused, &x, &y, None))?;
        let sequential_dispatches = count(&mut |rec| lora_sequential(rec, &sequential, &x, &y))?;
        let row = LoraRow {
            m,
            k,
            n,
            rank: r,
            adapters: na,
            dtype,
            layout,
            base_ms,
            fused_ms,
            sequential_ms,
            merged_ms,
            fused_over_base: fused_ms / base_ms,
            sequential_over_fused: sequential_ms / fused_ms,
            fused_dispatches,
            sequential_dispatches,
        };
        progress.row(&format!(
            "M={m} h={h} r={r} x{na}: base {base_ms:.3} ms, fused {fused_ms:.3} ({:.2}x base), sequential {sequential_ms:.3} ({:.2}x fused), merged {merged_ms:.3}",
            row.fused_over_base, row.sequential_over_fused
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// The report as Markdown tables (what BENCHMARKS.md records).
pub fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let d = &r.device;
    let _ = writeln!(
        s,
        "Device: {} ({}, {}, {}); kernel times from {}.\n",
        d.name, d.backend, d.driver, d.driver_info, d.clock
    );
    let _ = writeln!(
        s,
        "Ceilings measured in this run: FMA-bound shader {:.1} GFLOP/s, copy shader {:.2} GB/s (read + write), \
         {:.1} µs per launch in a batch.\n",
        r.ceiling.fma_gflops, r.ceiling.copy_gbps, r.ceiling.dispatch_us
    );
    let _ =
        writeln!(s, "| kernel | shape | dtype | variant | launches | ms | GFLOP/s | % of FMA | GB/s | % of copy | |");
    let _ = writeln!(s, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|");
    for o in &r.ops {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.3} | {:.2} | {:.0}% | {:.2} | {:.0}% | {} |",
            o.op, o.shape, o.dtype, o.variant, o.launches, o.ms, o.gflops, o.pct_fma, o.gbps, o.pct_copy, o.note
        );
    }
    let _ = writeln!(
        s,
        "\nFused multi-LoRA forward (Y = X·Wᵀ + Σ λᵢ sᵢ (X·Aᵢᵀ)·Bᵢᵀ, K = N = hidden) against the base matmul alone, \
         the sequential baseline (base, then a shrink and an expand-and-add per adapter) and the merged baseline \
         (W' = W + Σ λ s B A, then one matmul; merging itself not timed). Times in ms, autotuned variants.\n"
    );
    let _ = writeln!(
        s,
        "| M | hidden | rank | adapters | base | fused | sequential | merged | fused/base | seq/fused | launches fused/seq |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in &r.fused_lora {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {}/{} |",
            l.m,
            l.k,
            l.rank,
            l.adapters,
            l.base_ms,
            l.fused_ms,
            l.sequential_ms,
            l.merged_ms,
            l.fused_over_base,
            l.sequential_over_fused,
            l.fused_dispatches,
            l.sequential_dispatches
        );
    }
    let _ = writeln!(s, "\nWhole run: {:.0} s.", r.seconds);
    s
}
