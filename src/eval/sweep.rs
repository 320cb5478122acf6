//! The λ sweep of the paper: a task and a safety adapter fused at [1-λ, λ] (runtime fusion, the
//! paper's convention) plus the base model, evaluated together; the trade-off table and its
//! charts: harmfulness, XSTest safe-prompt refusal and MMLU against λ, and harmfulness against
//! over-refusal with the Pareto front marked.

use std::fmt::Write;

use crate::eval::report::ArmReport;
use crate::eval::run::Arm;
use crate::eval::stats::{Paired, Proportion};
use crate::plot::{Chart, Series};

/// The arms of a sweep over two attached adapters (task, safety): the base (both at weight 0,
/// which the fused kernel computes as the base model exactly), then [1-λ, λ] per λ.
pub fn arms(lambdas: &[f64]) -> Vec<Arm> {
    let mut v = vec![Arm { name: "base".into(), weights: vec![0.0, 0.0] }];
    v.extend(lambdas.iter().map(|&l| Arm { name: format!("λ={l:.2}"), weights: vec![(1.0 - l) as f32, l as f32] }));
    v
}

/// Parses "0,0.1,0.4" or a range "0:1:0.1" (start:end:step, end included).
/// The most λ values a sweep takes (each is an arm evaluated on every set).
pub const MAX_LAMBDAS: usize = 1000;

pub fn parse_lambdas(s: &str) -> Result<Vec<f64>, String> {
    let bad = || format!("--lambdas '{s}': give a list (0,0.2,0.4) or a range start:end:step (0:1:0.1)");
    let v: Vec<f64> = if let [a, b, st] = s.split(':').collect::<Vec<_>>()[..] {
        let (a, b, st): (f64, f64, f64) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
            st.trim().parse().map_err(|_| bad())?,
        );
        if st <= 0.0 || b < a {
            return Err(bad());
        }
        // counted in f64 before anything is allocated: 0:1e9:1e-9 asks for 10^18 values
        let n = ((b - a) / st + 1e-9).floor();
        if !n.is_finite() || n + 1.0 > MAX_LAMBDAS as f64 {
            return Err(format!("--lambdas '{s}' gives {:.3e} values; a sweep takes at most {MAX_LAMBDAS}", n + 1.0));
        }
        let n = n as usize;
        (0..=n).map(|i| ((a + i as f64 * st) * 1e6).round() / 1e6).collect()
    } else {
        s.split(',').map(|x| x.trim().parse::<f64>().map_err(|_| bad())).collect::<Result<_, _>>()?
    };
    if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
        return Err(bad());
    }
    if v.len() > MAX_LAMBDAS {
        return Err(format!("--lambdas '{s}' gives {} values; a sweep takes at most {MAX_LAMBDAS}", v.len()));
    }
    Ok(v)
}

/// λ of an arm (None for the base).
fn lambda(a: &Arm) -> Option<f64> {
    (a.name != "base").then(|| a.weights[1] as f64)
}

/// The harmfulness measure of a report: the judge's rate when there is one, else keyword ASR.
fn harm(r: &ArmReport) -> Option<Proportion> {
    let h = r.harmful.as_ref()?;
    Some(h.judge.as_ref().map_or(h.asr, |j| j.harmfulness))
}

fn harm_label(reports: &[ArmReport]) -> &'static str {
    if reports.iter().any(|r| r.harmful.as_ref().is_some_and(|h| h.judge.is_some())) {
        "harmfulness rate (judge score 5)"
    } else {
        "attack success rate (no refusal keyword)"
    }
}

/// Indices of the points not dominated in (x, y), both to be minimized.
pub fn pareto(points: &[(f64, f64)]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            let (xi, yi) = points[i];
            xi.is_finite() && yi.is_finite() && !points.iter().any(|&(x, y)| x <= xi && y <= yi && (x < xi || y < yi))
        })
        .collect()
}

/// The trade-off table, Markdown.
pub fn table(reports: &[ArmReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| arm | weights (task, safety) | {} | keyword refusal | XSTest safe refused | XSTest unsafe complied | MMLU | task loss |",
        harm_label(reports)
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    let show = |p: Option<Proportion>| match p {
        Some(p) if p.n > 0 => format!("{:.3} [{:.2}, {:.2}] n={}", p.rate, p.lo, p.hi, p.n),
        _ => "–".into(),
    };
    for r in reports {
        let _ = writeln!(
            s,
            "| {} | {:.2}, {:.2} | {} | {} | {} | {} | {} | {} |",
            r.arm.name,
            r.arm.weights[0],
            r.arm.weights[1],
            show(harm(r)),
            show(r.harmful.as_ref().map(|h| h.keyword_refusal)),
            show(r.xstest.as_ref().map(|x| x.safe_refusal)),
            show(r.xstest.as_ref().map(|x| x.unsafe_compliance)),
            show(r.mmlu.as_ref().map(|m| m.micro)),
            r.task.as_ref().map_or("–".into(), |t| format!("{:.3}", t.loss)),
        );
    }
    s
}

/// What the paired table compares, said before its numbers.
pub const PAIRED_PLAN: &str = "Paired comparisons, fixed before the numbers: every other arm against λ = 0 \
(the task adapter alone) on the same prompts, for keyword refusal of the harmful prompts, refusal of XSTest's safe \
prompts and MMLU answers right; each cell is the difference of the two rates, the prompts where only the arm or \
only λ = 0 had the outcome, and the exact two-sided McNemar p of that difference (uncorrected for the number of \
comparisons).";

/// The paired table (PAIRED_PLAN), or None without a λ = 0 arm.
pub fn paired(reports: &[ArmReport]) -> Option<String> {
    let reference = reports.iter().find(|r| lambda(&r.arm) == Some(0.0))?;
    let mut s = String::new();
    let _ = writeln!(s, "| arm against λ = 0 | keyword refusal (harmful) | XSTest safe refused | MMLU right |");
    let _ = writeln!(s, "|---|---|---|---|");
    for r in reports.iter().filter(|r| r.arm.name != reference.arm.name) {
        let (a, b) = (&r.items, &reference.items);
        let cell = |x: &std::collections::BTreeMap<String, bool>, y| Paired::of(x, y).show();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            r.arm.name,
            cell(&a.harmful_refused, &b.harmful_refused),
            cell(&a.xstest_safe_refused, &b.xstest_safe_refused),
            cell(&a.mmlu_right, &b.mmlu_right)
        );
    }
    Some(s)
}

/// A metric against λ with its intervals, the base as a dashed level.
fn against_lambda(
    reports: &[ArmReport],
    title: &str,
    y_label: &str,
    metric: impl Fn(&ArmReport) -> Option<Proportion>,
) -> Chart {
    let pts: Vec<(f64, Proportion)> = reports.iter().filter_map(|r| Some((lambda(&r.arm)?, metric(r)?))).collect();
    let mut main = Series::line("fused [1-λ, λ]", pts.iter().map(|(l, p)| (*l, p.rate)).collect(), true);
    main.y_err = pts.iter().map(|(_, p)| (p.lo, p.hi)).collect();
    let mut series = vec![main];
    if let Some(b) = reports.iter().find(|r| r.arm.name == "base").and_then(&metric)
        && let (Some(x0), Some(x1)) = (pts.first().map(|p| p.0), pts.last().map(|p| p.0))
    {
        series.push(Series { dashed: true, ..Series::line("base model", vec![(x0, b.rate), (x1, b.rate)], false) });
    }
    Chart { title: title.into(), x_label: "λ (safety adapter weight)".into(), y_label: y_label.into(), series }
}

/// The sweep's charts as (file name, chart), for those metrics the reports hold.
pub fn charts(reports: &[ArmReport]) -> Vec<(&'static str, Chart)> {
    let mut out = Vec::new();
    if reports.iter().any(|r| r.harmful.is_some()) {
        out.push(("harmfulness.svg", against_lambda(reports, "Harmfulness against λ", harm_label(reports), harm)));
    }
    if reports.iter().any(|r| r.xstest.is_some()) {
        out.push((
            "xstest.svg",
            against_lambda(
                reports,
                "XSTest: safe prompts refused (exaggerated safety)",
                "refusal rate on safe prompts",
                |r| r.xstest.as_ref().map(|x| x.safe_refusal),
            ),
        ));
    }
    if reports.iter().any(|r| r.mmlu.is_some()) {
        out.push((
            "mmlu.svg",
            against_lambda(reports, "MMLU against λ", "accuracy (micro)", |r| r.mmlu.as_ref().map(|m| m.micro)),
        ));
    }
    if reports.iter().any(|r| r.harmful.is_some()) && reports.iter().any(|r| r.xstest.is_some()) {
        let pts: Vec<(String, (f64, f64))> = reports
            .iter()
            .filter_map(|r| Some((r.arm.name.clone(), (r.xstest.as_ref()?.safe_refusal.rate, harm(r)?.rate))))
            .collect();
        let xy: Vec<(f64, f64)> = pts.iter().map(|p| p.1).collect();
        let mut front: Vec<(f64, f64)> = pareto(&xy).into_iter().map(|i| xy[i]).collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        let all = Series { labels: pts.iter().map(|p| p.0.clone()).collect(), ..Series::scatter("arms", xy) };
        out.push((
            "tradeoff.svg",
            Chart {
                title: "Harmfulness against over-refusal (Pareto front: no arm is better on both)".into(),
                x_label: "XSTest safe prompts refused".into(),
                y_label: harm_label(reports).into(),
                series: vec![all, Series::line("Pareto front", front, true)],
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambdas_parse() {
        assert_eq!(parse_lambdas("0,0.2,0.4").unwrap(), vec![0.0, 0.2, 0.4]);
        assert_eq!(parse_lambdas("0:1:0.25").unwrap(), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(parse_lambdas("0:1:0.1").unwrap().len(), 11);
        assert!(parse_lambdas("0:1:0").is_err() && parse_lambdas("a,b").is_err() && parse_lambdas("").is_err());
        // no allocation of 10^18 values, no ten-million-arm sweep
        for huge in ["0:1e9:1e-9", "0:1:1e-7", "0:1e308:1e-308"] {
            assert!(parse_lambdas(huge).unwrap_err().contains("at most 1000"), "{huge}");
        }
        assert_eq!(parse_lambdas("0:1:0.002").unwrap().len(), 501);
        let a = arms(&[0.0, 0.4]);
        assert_eq!(a[0].weights, vec![0.0, 0.0]);
        assert_eq!(a[2].weights, vec![0.6, 0.4]);
    }

    #[test]
    fn pareto_front() {
        let pts = [(0.1, 0.9), (0.5, 0.2), (0.6, 0.3), (0.9, 0.1), (0.1, 0.95), (f64::NAN, 0.0)];
        assert_eq!(pareto(&pts), vec![0, 1, 3]);
    }
}
