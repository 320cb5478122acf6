//! Per-kernel timings and their summary table.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::gpu::recorder::Work;

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
