//! `lorafuse profile`: run a workload with every kernel launch timed (GPU timestamps where the
//! adapter has them), print a per-kernel table per phase, and write a Chrome trace.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use lorafuse::gpu::{Gpu, Profile, profiler};

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
}

pub fn run(gpu: &Gpu, cmd: &ProfileCommand) -> Result<()> {
    let ProfileCommand::Generate { args, trace } = cmd;
    let mut profile = Profile::new();
    run_generate(gpu, args, Some(&mut profile))?;
    let clock = if gpu.caps().timestamps { "GPU timestamps" } else { "wall clock per launch" };
    for phase in profile.phases() {
        eprintln!("\n{phase} ({clock}):");
        eprint!("{}", profiler::table(&profile.summary(Some(&phase))));
    }
    let text = serde_json::to_string(&profile.chrome_trace())?;
    lorafuse::atomic::write_atomic(trace, &text).with_context(|| format!("writing {}", trace.display()))?;
    eprintln!("\nChrome trace: {}", trace.display());
    Ok(())
}
