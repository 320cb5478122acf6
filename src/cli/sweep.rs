//! `lorafuse sweep`: the paper's experiment on given adapters: task and safety fused at
//! [1-λ, λ] for every λ, plus the base model, evaluated in one run (the arms share batches);
//! the trade-off table and its charts.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

use lorafuse::eval::report::ArmReport;
use lorafuse::eval::sweep;
use lorafuse::gpu::Gpu;

use super::eval::{EvalFlags, evaluate, preamble, write_report};
use super::model::ModelArgs;

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The task adapter (weight 1-λ).
    #[arg(long)]
    pub task_adapter: PathBuf,
    /// The safety adapter (weight λ).
    #[arg(long)]
    pub safety_adapter: PathBuf,
    /// Safety weights: a list (0,0.2,0.4) or a range start:end:step.
    #[arg(long, default_value = "0:1:0.1")]
    pub lambdas: String,
    #[command(flatten)]
    pub flags: EvalFlags,
    /// Output folder: sweep.md, sweep.json, the charts (SVG), and the evaluation's report and
    /// responses (rerun with the same folder to resume).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(gpu: &Gpu, args: &SweepArgs) -> Result<()> {
    if !args.model.adapters.is_empty() {
        bail!("sweep takes --task-adapter and --safety-adapter, not --adapter");
    }
    let lambdas = sweep::parse_lambdas(&args.lambdas).map_err(anyhow::Error::msg)?;
    let mut model = args.model.clone();
    model.adapters = vec![args.task_adapter.display().to_string(), args.safety_adapter.display().to_string()];
    let mut m = model.load(gpu)?;
    let arms = sweep::arms(&lambdas);
    eprintln!("sweep: {} arms (the base and λ = {})", arms.len(), args.lambdas);
    let (sets, reports) = evaluate(&mut m, &args.flags, &arms, &args.out)?;
    let mut pre = preamble(&m, &args.flags, &sets);
    pre.push(
        "Arms: the base model (both adapters at weight 0), then task and safety at [1-λ, λ], fused at run time.".into(),
    );
    write_report(&args.out, "lorafuse sweep: report", &pre, &reports)?;
    write_sweep(&args.out, &pre, &reports)
}

/// sweep.md, sweep.json and the charts into DIR; the table and the charts' paths on stdout.
pub fn write_sweep(dir: &Path, preamble: &[String], reports: &[ArmReport]) -> Result<()> {
    let table = sweep::table(reports);
    let mut md = String::from("# λ sweep: task and safety adapters fused at [1-λ, λ]\n\n");
    for p in preamble {
        md.push_str(&format!("{p}  \n"));
    }
    md.push_str(&format!("\nEach rate with its 95% Wilson interval and count.\n\n{table}\n"));
    if let Some(paired) = sweep::paired(reports) {
        md.push_str(&format!("{}\n\n{paired}\n", sweep::PAIRED_PLAN));
    }
    let charts = sweep::charts(reports);
    for (file, chart) in &charts {
        lorafuse::atomic::write_atomic(&dir.join(file), chart.svg())?;
        md.push_str(&format!("![{}]({file})\n", chart.title));
    }
    lorafuse::atomic::write_atomic(&dir.join("sweep.md"), &md)?;
    let json = serde_json::json!({ "preamble": preamble, "arms": reports });
    lorafuse::atomic::write_atomic(&dir.join("sweep.json"), serde_json::to_string_pretty(&json)?)?;
    println!("\n{table}");
    for (file, _) in &charts {
        println!("chart: {}", dir.join(file).display());
    }
    println!("table: {}", dir.join("sweep.md").display());
    Ok(())
}
