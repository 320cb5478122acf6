//! `lorafuse profile`: run a workload with every kernel launch timed (GPU timestamps where the
//! adapter has them), print a per-kernel table per phase, and write a Chrome trace.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use lorafuse::gpu::{Gpu, Profile, profiler};

use crate::cli::bench::StepShape;
use crate::cli::generate::{GenerateArgs, run_generate};

#[derive(Subcommand)]
pub enum ProfileCommand {
    /// Profile `lorafuse generate` (same arguments).
    Generate {
        #[command(flatten)]
        args: GenerateArgs,
        /// Chrome trace output (open in chrome://tracing or ui.perfetto.dev).
        #[arg(long, default_value = "lorafuse-trace.json")]
        trace: PathBuf,
    },
    /// Profile LoRA training steps (forward, backward, AdamW) over a fixed batch, as `bench
    /// train` runs them, after one untimed warm-up step.
    Train {
        #[command(flatten)]
        shape: StepShape,
        /// Steps profiled.
        #[arg(long, default_value_t = 1)]
        steps: usize,
        /// Chrome trace output (open in chrome://tracing or ui.perfetto.dev).
        #[arg(long, default_value = "lorafuse-trace.json")]
        trace: PathBuf,
    },
}

pub fn run(gpu: &Gpu, cmd: &ProfileCommand) -> Result<()> {
    let mut profile = Profile::new();
    let trace = match cmd {
        ProfileCommand::Generate { args, trace } => {
            run_generate(gpu, args, Some(&mut profile))?;
            trace
        }
        ProfileCommand::Train { shape, steps, trace } => {
            let mut m = shape.model.load(gpu)?;
            let seqs = lorafuse::bench::train::bench_sequences(shape.seq, shape.batch, m.model.cfg().vocab);
            let runner = lorafuse::bench::train::Runner::new(&mut m.model, shape.r, &shape.targets, &seqs)?;
            runner.warm_up(&m.model)?;
            runner.step(&m.model, 1)?;
            let t0 = std::time::Instant::now();
            let (_, captured) = gpu.capture(|| (0..*steps).try_for_each(|t| runner.step(&m.model, t + 2).map(drop)))?;
            let wall = t0.elapsed().as_secs_f64();
            let kernels: f64 = captured.iter().flat_map(|(_, t)| t.iter().map(|k| k.ns)).sum::<f64>() / 1e9;
            let launches: usize = captured.iter().map(|(_, t)| t.len()).sum();
            let submissions = captured.len();
            for (at, timings) in captured {
                profile.add("train step", at, timings);
            }
            eprintln!(
                "{steps} step(s) of {} tokens: {wall:.2} s wall, {kernels:.2} s in {launches} kernel launches ({} submissions)",
                runner.tokens(),
                submissions
            );
            trace
        }
    };
    let clock = if gpu.caps().timestamps { "GPU timestamps" } else { "wall clock per launch" };
    for phase in profile.phases() {
        let summary = profile.summary(Some(&phase));
        let (steps, launches) = profile.counts(&phase);
        // one attention launch a layer: launches a layer are the step's launches over those
        let layers = (summary.iter().filter(|k| matches!(k.label.as_str(), "attention" | "attention_groups")))
            .map(|k| k.dispatches)
            .sum::<usize>();
        let per_layer =
            if layers > 0 { format!(", {:.1} a layer", launches as f64 / layers as f64) } else { String::new() };
        eprintln!(
            "\n{phase} ({clock}): {launches} launches in {steps} submission(s), {:.1} a submission{per_layer}",
            launches as f64 / steps.max(1) as f64
        );
        eprint!("{}", profiler::table(&summary));
    }
    let text = serde_json::to_string(&profile.chrome_trace())?;
    lorafuse::atomic::write_atomic(trace, &text).with_context(|| format!("writing {}", trace.display()))?;
    eprintln!("\nChrome trace: {}", trace.display());
    Ok(())
}
