//! Per-kernel timings, their summary table, and timing of recorded operations.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::gpu::recorder::{Recorder, Work};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// GPU timestamp queries around the launch.
    Gpu,
    /// Host wall clock around a submission of the launch alone (includes submit and wait).
    Wall,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelTiming {
    pub label: String,
    pub group: u32,
    /// Start, from the first launch of its submission.
    pub start_ns: f64,
    pub ns: f64,
    #[serde(skip)]
    pub work: Work,
    pub clock: Clock,
}

/// Sum of the launch times in each group, in milliseconds, indexed by group.
pub fn group_ms(timings: &[KernelTiming], groups: u32) -> Vec<f64> {
    let mut ms = vec![0.0; groups as usize];
    for t in timings {
        if let Some(slot) = ms.get_mut(t.group as usize) {
            *slot += t.ns / 1e6;
        }
    }
    ms
}

/// An operation recorded into a recorder, to be timed.
pub type Op<'a> = dyn FnMut(&mut Recorder) -> Result<()> + 'a;

/// Best time (ms) of `reps` runs of `op`, after one warm-up run (pipeline compilation, lazy
/// texture clears).
pub fn time_op(gpu: &Gpu, reps: u32, op: impl FnMut(&mut Recorder) -> Result<()>) -> Result<f64> {
    let mut op = op;
    Ok(time_ops(gpu, reps, &mut [&mut op])?[0])
}

/// Best time (ms) of each op over `reps` rounds. Rounds interleave the ops (a, b, c, a, b, c, …)
/// in one profiled submission, so a slow spell of a shared machine hits every op alike and the
/// ratios between them hold even when absolute times drift.
pub fn time_ops(gpu: &Gpu, reps: u32, ops: &mut [&mut Op]) -> Result<Vec<f64>> {
    Ok(time_ops_with_work(gpu, reps, ops)?.into_iter().map(|t| t.ms).collect())
}

/// One op's timing: its best time and what one run of it launches (count and work).
#[derive(Clone, Copy, Debug)]
pub struct OpTiming {
    pub ms: f64,
    pub launches: usize,
    pub work: Work,
}

/// `time_ops`, with each op's launches and their work counts.
pub fn time_ops_with_work(gpu: &Gpu, reps: u32, ops: &mut [&mut Op]) -> Result<Vec<OpTiming>> {
    let mut warm = Recorder::new(gpu);
    for op in ops.iter_mut() {
        op(&mut warm)?;
    }
    warm.run()?;
    let (n, reps) = (ops.len() as u32, reps.max(1));
    let mut rec = Recorder::profiled(gpu);
    for r in 0..reps {
        for (i, op) in ops.iter_mut().enumerate() {
            rec.set_group(r * n + i as u32);
            op(&mut rec)?;
        }
    }
    let timings = rec.run()?;
    let per_group = group_ms(&timings, reps * n);
    Ok((0..n as usize)
        .map(|i| {
            let first: Vec<&KernelTiming> = timings.iter().filter(|t| t.group == i as u32).collect();
            let work = (first.iter())
                .fold(Work::default(), |w, t| Work { flops: w.flops + t.work.flops, bytes: w.bytes + t.work.bytes });
            let ms = per_group.iter().skip(i).step_by(n as usize).copied().fold(f64::INFINITY, f64::min);
            OpTiming { ms, launches: first.len(), work }
        })
        .collect())
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KernelSummary {
    pub label: String,
    pub dispatches: usize,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub share: f64,
    pub gflops: f64,
    pub gbps: f64,
}

/// One row per kernel label, heaviest first.
pub fn summarize(timings: &[KernelTiming]) -> Vec<KernelSummary> {
    let mut by: BTreeMap<&str, (usize, f64, u64, u64)> = BTreeMap::new();
    for t in timings {
        let e = by.entry(&t.label).or_default();
        e.0 += 1;
        e.1 += t.ns;
        e.2 += t.work.flops;
        e.3 += t.work.bytes;
    }
    let total: f64 = timings.iter().map(|t| t.ns).sum();
    let mut rows: Vec<KernelSummary> = by
        .into_iter()
        .map(|(label, (n, ns, flops, bytes))| KernelSummary {
            label: label.to_string(),
            dispatches: n,
            total_ms: ns / 1e6,
            mean_ms: ns / 1e6 / n as f64,
            share: if total > 0.0 { ns / total } else { 0.0 },
            gflops: if ns > 0.0 { flops as f64 / ns } else { 0.0 },
            gbps: if ns > 0.0 { bytes as f64 / ns } else { 0.0 },
        })
        .collect();
    rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    rows
}

/// The summary as a text table.
pub fn table(rows: &[KernelSummary]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<44} {:>6} {:>10} {:>10} {:>6} {:>8} {:>7}",
        "kernel", "calls", "total ms", "mean ms", "share", "GFLOP/s", "GB/s"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<44} {:>6} {:>10.3} {:>10.4} {:>5.1}% {:>8.2} {:>7.2}",
            r.label,
            r.dispatches,
            r.total_ms,
            r.mean_ms,
            100.0 * r.share,
            r.gflops,
            r.gbps
        );
    }
    s
}

/// Launch timings of a whole workload, tagged by phase (prefill, decode, ...), placed on the
/// host's clock by the time of each submission: the per-kernel table and a Chrome trace.
#[derive(Default)]
pub struct Profile {
    spans: Vec<(String, f64, KernelTiming)>,
    start: Option<std::time::Instant>,
}

impl Profile {
    pub fn new() -> Profile {
        Profile { spans: Vec::new(), start: Some(std::time::Instant::now()) }
    }

    /// Adds the launches of one submission made at `submitted`.
    pub fn add(&mut self, phase: &str, submitted: std::time::Instant, timings: Vec<KernelTiming>) {
        let start = *self.start.get_or_insert(submitted);
        let at_ns = submitted.saturating_duration_since(start).as_nanos() as f64;
        self.spans.extend(timings.into_iter().map(|t| (phase.to_string(), at_ns, t)));
    }

    /// (submissions, launches) of `phase`: a generation phase submits once per step.
    pub fn counts(&self, phase: &str) -> (usize, usize) {
        let spans: Vec<f64> = self.spans.iter().filter(|(ph, _, _)| ph == phase).map(|(_, at, _)| *at).collect();
        let mut at = spans.clone();
        at.dedup();
        (at.len(), spans.len())
    }

    pub fn phases(&self) -> Vec<String> {
        let mut p: Vec<String> = Vec::new();
        for (ph, _, _) in &self.spans {
            if !p.contains(ph) {
                p.push(ph.clone());
            }
        }
        p
    }

    /// The per-kernel summary of one phase (or of everything with `None`).
    pub fn summary(&self, phase: Option<&str>) -> Vec<KernelSummary> {
        let t: Vec<KernelTiming> =
            self.spans.iter().filter(|(ph, _, _)| phase.is_none_or(|p| p == ph)).map(|(_, _, t)| t.clone()).collect();
        summarize(&t)
    }

    /// Chrome trace JSON (chrome://tracing, Perfetto): one complete event a launch.
    pub fn chrome_trace(&self) -> serde_json::Value {
        let events: Vec<serde_json::Value> = self
            .spans
            .iter()
            .map(|(phase, at_ns, t)| {
                let dur_us = t.ns / 1e3;
                let mut args = serde_json::json!({ "group": t.group, "clock": t.clock });
                if t.work.flops > 0 {
                    args["gflops"] = serde_json::json!(t.work.flops as f64 / t.ns);
                }
                if t.work.bytes > 0 {
                    args["gbps"] = serde_json::json!(t.work.bytes as f64 / t.ns);
                }
                serde_json::json!({
                    "name": t.label,
                    "cat": phase,
                    "ph": "X",
                    "ts": (at_ns + t.start_ns) / 1e3,
                    "dur": dur_us,
                    "pid": 1,
                    "tid": phase,
                    "args": args,
                })
            })
            .collect();
        serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
    }
}
