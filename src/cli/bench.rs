//! `lorafuse bench`: the benchmarks of src/bench, each printing its Markdown tables and, when
//! asked, writing them and the JSON of every row.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use lorafuse::bench::{self, BarProgress};
use lorafuse::gpu::{DType, Gpu};

use super::model::{DEFAULT_MODEL, ModelArgs};

/// Where a benchmark also writes its results.
#[derive(Args, Clone, Debug)]
pub struct Outputs {
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the Markdown tables (as recorded in BENCHMARKS.md).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

impl Outputs {
    /// Prints `md` and writes the files asked for.
    fn emit(&self, report: &impl serde::Serialize, md: &str) -> Result<()> {
        println!("{md}");
        for (path, text) in [(&self.json, serde_json::to_string_pretty(report)?), (&self.markdown, md.to_string())] {
            if let Some(path) = path {
                lorafuse::atomic::write_atomic(path, text).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
        Ok(())
    }
}

/// The LoRA training step of `bench train` and `profile train`: a fresh adapter over a fixed
/// batch of sequences.
#[derive(Args, Clone)]
pub struct StepShape {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens a sequence.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Sequences a step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 8)]
    pub r: usize,
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub targets: Vec<String>,
}

/// A peer run on this machine's CPU by a Python of its own.
#[derive(Args, Clone, Debug)]
pub struct Peer {
    /// Python for the peer (default: the venv its setup script makes, when present).
    #[arg(long = "peer-python")]
    pub python: Option<PathBuf>,
    /// CPU threads for the peer (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Peer {
    fn python(&self, default_venv: &str) -> Option<PathBuf> {
        let default = PathBuf::from(default_venv).join("bin/python");
        self.python.clone().or_else(|| default.exists().then_some(default))
    }

    fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
    }
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Matmul variants against the device's ceilings; fused vs sequential vs merged LoRA.
    Kernels {
        #[command(flatten)]
        out: Outputs,
        /// A short grid (about a minute on lavapipe) instead of the full one.
        #[arg(long)]
        quick: bool,
        /// Weight dtype of the fused-LoRA rows.
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
        lora_dtype: String,
    },
    /// Prefill and decode tokens/s of a model at batch 1 and 32, against llama.cpp on the same
    /// GGUF (CPU, llama-cpp-python from scripts/setup-bench.sh), and peak device memory.
    Model {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 32)]
        gen_tokens: usize,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,32")]
        batches: Vec<usize>,
        #[command(flatten)]
        peer: Peer,
        /// Runs of each measurement; the best counts.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[command(flatten)]
        out: Outputs,
    },
    /// Prefill and decode tokens/s with 0, 1, 2, 4 adapters: fused kernel vs sequential
    /// application vs the merged model.
    Fuse {
        /// A GGUF file or a Hugging Face model directory.
        #[arg(long, env = "LORAFUSE_MODEL", default_value = DEFAULT_MODEL)]
        model: PathBuf,
        /// Weights of all three modes (the merged model cannot stay 4-bit, so neither do the others).
        #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
        dtype: String,
        /// Adapter counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,1,2,4")]
        counts: Vec<usize>,
        #[arg(long, default_value_t = 8)]
        r: usize,
        #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
        targets: Vec<String>,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 32)]
        gen_tokens: usize,
        /// Sequences decoded together.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Runs of each measurement, the modes interleaved; the best counts.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[command(flatten)]
        out: Outputs,
    },
    /// The server under load on loopback: K streaming clients whose requests carry 1, 2, 8 or K
    /// distinct adapter mixes, every mix in one batch against one mix a batch (--split-by-mix):
    /// throughput, time to first token, latency.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 16, value_parser = super::model::at_least_one)]
        clients: usize,
        /// Requests a measurement, over all clients.
        #[arg(long, default_value_t = 64, value_parser = super::model::at_least_one)]
        requests: usize,
        #[arg(long, default_value_t = 32, value_parser = super::model::at_least_one)]
        max_tokens: usize,
        /// Distinct mixes a measurement, comma-separated; 0: one per client.
        #[arg(long, value_delimiter = ',', default_value = "1,2,8,0")]
        mixes: Vec<usize>,
        /// Seconds after which a measurement sends no more requests.
        #[arg(long, default_value_t = 300)]
        time_limit: u64,
        /// KV cache slots (the server's --max-seqs).
        #[arg(long, default_value_t = 16, value_parser = super::model::at_least_one)]
        max_seqs: usize,
        #[arg(long, default_value_t = 8)]
        r: usize,
        #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
        targets: Vec<String>,
        /// Also draw throughput against distinct mixes as SVG.
        #[arg(long)]
        svg: Option<PathBuf>,
        #[command(flatten)]
        out: Outputs,
    },
    /// LoRA training tokens/s (forward, backward, AdamW) against PyTorch + PEFT on this
    /// machine's CPU (scripts/setup-peft.sh), on the same token ids, and peak device memory.
    Train {
        #[command(flatten)]
        shape: StepShape,
        /// Timed steps, after one warm-up step.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[command(flatten)]
        peer: Peer,
        #[command(flatten)]
        out: Outputs,
    },
}

pub fn run(gpu: &Gpu, cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Kernels { out, quick, lora_dtype } => {
            let mut grid = if *quick { bench::ops::Grid::quick() } else { bench::ops::Grid::standard() };
            grid.lora_dtype = if lora_dtype == "f16" { DType::F16 } else { DType::F32 };
            let report = bench::ops::run(gpu, &grid, &mut BarProgress::new())?;
            out.emit(&report, &bench::ops::markdown(&report))
        }
        BenchCommand::Model { model, prompt_tokens, gen_tokens, batches, peer, reps, out } => {
            let loaded = model.load(gpu)?;
            let opts = bench::model::Options {
                prompt_tokens: *prompt_tokens,
                gen_tokens: *gen_tokens,
                batches: batches.clone(),
                peer_python: peer.python(".venv-bench"),
                threads: peer.threads(),
                reps: *reps,
            };
            let report = bench::model::run(gpu, &loaded.model, &model.model, &opts, &mut BarProgress::new())?;
            out.emit(&report, &bench::model::markdown(&report))
        }
        BenchCommand::Fuse { model, dtype, counts, r, targets, prompt_tokens, gen_tokens, batch, reps, out } => {
            let opts = bench::fuse::Options {
                counts: counts.clone(),
                r: *r,
                targets: targets.clone(),
                prompt_tokens: *prompt_tokens,
                gen_tokens: *gen_tokens,
                batch: *batch,
                reps: *reps,
            };
            let dtype = if dtype == "f32" { DType::F32 } else { DType::F16 };
            let load = lorafuse::model::llama::LoadOptions { dtype, layout: None };
            let report = bench::fuse::run(gpu, model, load, &opts, &mut BarProgress::new())?;
            out.emit(&report, &bench::fuse::markdown(&report))
        }
        BenchCommand::Serve {
            model,
            clients,
            requests,
            max_tokens,
            mixes,
            time_limit,
            max_seqs,
            r,
            targets,
            svg,
            out,
        } => {
            if !model.adapters.is_empty() {
                anyhow::bail!("bench serve makes its own two adapters: drop --adapter");
            }
            let loaded = model.load(gpu)?;
            let opts = bench::serve::Options {
                clients: *clients,
                requests: *requests,
                max_tokens: *max_tokens,
                mixes: mixes.clone(),
                time_limit: std::time::Duration::from_secs(*time_limit),
                max_seqs: *max_seqs,
                r: *r,
                targets: targets.clone(),
            };
            let name = model.model.display().to_string();
            let report =
                bench::serve::run(loaded.model, loaded.tok, loaded.template, &name, &opts, &mut BarProgress::new())?;
            if let Some(path) = svg {
                lorafuse::atomic::write_atomic(path, bench::serve::chart(&report))
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            out.emit(&report, &bench::serve::markdown(&report))
        }
        BenchCommand::Train { shape, steps, peer, out } => {
            let mut loaded = shape.model.load(gpu)?;
            let opts = bench::train::Options {
                seq: shape.seq,
                batch: shape.batch,
                r: shape.r,
                targets: shape.targets.clone(),
                steps: *steps,
                peer_python: peer.python(".venv-peft"),
                threads: peer.threads(),
            };
            let report = bench::train::run(gpu, &mut loaded.model, &shape.model.model, &opts, &mut BarProgress::new())?;
            out.emit(&report, &bench::train::markdown(&report))
        }
    }
}
