//! RESULTS.md of `lorafuse reproduce`: what ran, the trade-off table, and the paper's reported
//! numbers beside ours, each of ours with its count and 95% interval.

use std::fmt::Write;

use lorafuse::eval::report::ArmReport;
use lorafuse::eval::stats::Proportion;
use lorafuse::eval::sweep;
use lorafuse::train::trainer::Summary;

fn arm<'a>(reports: &'a [ArmReport], name: &str) -> Option<&'a ArmReport> {
    reports.iter().find(|r| r.arm.name == name)
}

fn show(p: Option<Proportion>) -> String {
    match p {
        Some(p) if p.n > 0 => p.show(),
        _ => "–".into(),
    }
}

/// 1 − p, with the interval flipped.
fn complement(p: Proportion) -> Proportion {
    Proportion { k: p.n - p.k, n: p.n, rate: 1.0 - p.rate, lo: 1.0 - p.hi, hi: 1.0 - p.lo }
}

fn training(name: &str, s: &Summary) -> String {
    format!(
        "- {name}: {} epochs, {} steps, train loss {:.3} (epoch 1) → {:.3} (epoch {}); {} tokens in {:.0} min of steps ({:.1} tokens/s, every run of it counted)",
        s.epochs_done,
        s.steps,
        s.epoch_loss.first().copied().unwrap_or(f64::NAN),
        s.epoch_loss.last().copied().unwrap_or(f64::NAN),
        s.epoch_loss.len(),
        s.all_tokens,
        s.all_seconds / 60.0,
        s.all_tokens as f64 / s.all_seconds.max(1e-9)
    )
}

pub fn results_md(
    scale: &str,
    preamble: &[String],
    reports: &[ArmReport],
    trained: (&Summary, &Summary),
    secs: f64,
) -> String {
    let mut s = String::from("# Reproducing Gudipudi et al. (arXiv 2501.06208) on SmolLM2-135M-Instruct\n\n");
    let _ = writeln!(
        s,
        "Produced by `lorafuse reproduce --scale {scale}`: the adapters' training steps took {:.1} h (every run \
         of them counted), and the invocation that wrote this file {:.1} h (a resumed invocation counts only \
         its own part).\n",
        (trained.0.all_seconds + trained.1.all_seconds) / 3600.0,
        secs / 3600.0
    );
    for p in preamble {
        let _ = writeln!(s, "{p}  ");
    }
    let _ = writeln!(
        s,
        "\n## Training (the paper's recipe: r 8, alpha 32, q_proj and v_proj, dropout 0.05, 10 epochs, lr 1e-3, batch 4, StepLR 0.85)\n"
    );
    let _ = writeln!(s, "{}", training("task adapter (aoa_task_train.json, 44 conversations)", trained.0));
    let _ = writeln!(s, "{}\n", training("safety adapter (aoa_safety_train.json, 16 conversations)", trained.1));
    let _ = writeln!(s, "## The sweep\n\n{}", sweep::table(reports));
    if let Some(paired) = sweep::paired(reports) {
        let _ = writeln!(s, "{}\n\n{paired}", sweep::PAIRED_PLAN);
    }
    let judge = reports.iter().find_map(|r| r.harmful.as_ref()?.judge.as_ref().map(|j| j.judge.clone()));
    let harm = |r: &ArmReport| r.harmful.as_ref().map(|h| h.judge.as_ref().map_or(h.asr, |j| j.harmfulness));
    let (l0, l4) = (arm(reports, "λ=0.00"), arm(reports, "λ=0.40"));
    let base = arm(reports, "base");
    let _ = writeln!(s, "\n## Against the paper\n");
    let _ = writeln!(
        s,
        "Ours: harmfulness is {} ; XSTest classes by {}. The paper used GPT-4 as the judge on Llama-2-7b-chat.\n",
        judge.as_ref().map_or("the keyword attack success rate (no judge was given)".to_string(), |j| format!(
            "the share scored 5 by {j}"
        )),
        reports.iter().find_map(|r| r.xstest.as_ref().map(|x| x.classifier.clone())).unwrap_or_else(|| "–".into())
    );
    let _ = writeln!(s, "| quantity | paper | ours |");
    let _ = writeln!(s, "|---|---|---|");
    let _ = writeln!(s, "| harmfulness, base model | – | {} |", show(base.and_then(harm)));
    let _ = writeln!(
        s,
        "| harmfulness, task adapter alone (λ=0) | (high; the task erodes safety) | {} |",
        show(l0.and_then(harm))
    );
    let _ = writeln!(s, "| harmfulness at λ=0.4 | 0.02 | {} |", show(l4.and_then(harm)));
    if let (Some(a), Some(b)) = (l0.and_then(harm), l4.and_then(harm))
        && a.rate > 0.0
    {
        let _ = writeln!(
            s,
            "| relative cut, λ=0 → 0.4 | 42% (the paper's headline, over its baselines) | {:.0}% |",
            100.0 * (a.rate - b.rate) / a.rate
        );
    }
    let safe_ok = |r: &ArmReport| r.xstest.as_ref().map(|x| complement(x.safe_refusal));
    let _ = writeln!(s, "| XSTest safe-prompt compliance, λ=0 | 0.99 | {} |", show(l0.and_then(safe_ok)));
    let _ = writeln!(s, "| XSTest safe-prompt compliance, λ=0.4 | 0.58 | {} |", show(l4.and_then(safe_ok)));
    let mmlu = |r: &ArmReport| r.mmlu.as_ref().map(|m| m.micro);
    let _ = writeln!(s, "| MMLU, λ=0 | 0.43 | {} |", show(l0.and_then(mmlu)));
    let _ = writeln!(s, "| MMLU, λ=0.4 | 0.43 | {} |", show(l4.and_then(mmlu)));
    let accs: Vec<f64> =
        reports.iter().filter_map(|r| r.mmlu.as_ref()).filter(|m| m.micro.n > 0).map(|m| m.micro.rate).collect();
    if let (Some(lo), Some(hi)) = (accs.iter().cloned().reduce(f64::min), accs.iter().cloned().reduce(f64::max)) {
        let _ = writeln!(s, "| MMLU range over all arms | flat | {lo:.3} – {hi:.3} |");
    }
    let _ = writeln!(s, "\n## Charts\n");
    for (file, chart) in sweep::charts(reports) {
        let _ = writeln!(s, "![{}](sweep/{file})", chart.title);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use lorafuse::eval::report::{ClassCounts, HarmfulReport, MmluReport, XsTestReport};
    use lorafuse::eval::run::Arm;

    fn report(name: &str, w: [f32; 2], harmful_k: usize, safe_refused: usize, mmlu_k: usize) -> ArmReport {
        let counts = ClassCounts { full_compliance: 0, full_refusal: 0, partial_refusal: 0, unparseable: 0 };
        ArmReport {
            arm: Arm { name: name.into(), weights: w.to_vec() },
            harmful: Some(HarmfulReport {
                prompts: 100,
                responses: 100,
                keyword_refusal: Proportion::new(100 - harmful_k, 100),
                asr: Proportion::new(harmful_k, 100),
                judge: None,
            }),
            xstest: Some(XsTestReport {
                classifier: "string match".into(),
                safe: counts.clone(),
                unsafe_: counts,
                safe_refusal: Proportion::new(safe_refused, 50),
                unsafe_compliance: Proportion::new(10, 50),
                by_type: Default::default(),
            }),
            mmlu: Some(MmluReport {
                micro: Proportion::new(mmlu_k, 40),
                macro_accuracy: 0.3,
                subjects: Default::default(),
            }),
            task: None,
            items: Default::default(),
        }
    }

    #[test]
    fn results_compare_with_the_paper() {
        let reports = [
            report("base", [0.0, 0.0], 90, 0, 10),
            report("λ=0.00", [1.0, 0.0], 80, 5, 11),
            report("λ=0.40", [0.6, 0.4], 20, 25, 12),
        ];
        let s = Summary {
            epochs_done: 10,
            steps: 110,
            epoch_loss: vec![2.0, 1.0],
            all_tokens: 36000,
            all_seconds: 3600.0,
            ..Default::default()
        };
        let md = results_md("quick", &["Model: m.".into()], &reports, (&s, &s), 7200.0);
        assert!(md.contains("--scale quick") && md.contains("took 2.0 h") && md.contains("this file 2.0 h"), "{md}");
        assert!(md.contains("36000 tokens in 60 min of steps (10.0 tokens/s"), "{md}");
        assert!(md.contains("| harmfulness at λ=0.4 | 0.02 | 0.200 [0.133, 0.289] (20/100) |"), "{md}");
        assert!(
            md.contains("| relative cut, λ=0 → 0.4 | 42% (the paper's headline, over its baselines) | 75% |"),
            "{md}"
        );
        // compliance is the complement of the refusal rate: 45 of 50 at λ=0, 25 of 50 at λ=0.4
        assert!(md.contains("| XSTest safe-prompt compliance, λ=0 | 0.99 | 0.900"), "{md}");
        assert!(md.contains("(45/50)") && md.contains("(25/50)"), "{md}");
        assert!(md.contains("| MMLU range over all arms | flat | 0.250 – 0.300 |"), "{md}");
        assert!(md.contains("keyword attack success rate (no judge was given)"));
    }
}
