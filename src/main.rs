//! The `lorafuse` command line.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use lorafuse::bench::{self, BarProgress};
use lorafuse::gpu::{BackendChoice, DType, Gpu, GpuOptions, Layout, list_adapters};
use lorafuse::kernels::matmul::Form;
use lorafuse::tune;

#[derive(Parser)]
#[command(name = "lorafuse", version, about = "LoRA training, fusion and safety evaluation on any GPU wgpu reaches")]
struct Cli {
    #[command(flatten)]
    device: DeviceArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DeviceArgs {
    /// Graphics API to search for adapters.
    #[arg(long, global = true, env = "LORAFUSE_BACKEND", default_value = "auto",
          value_parser = ["auto", "vulkan", "metal", "dx12", "gl"])]
    backend: String,
    /// The GPU (wgpu adapter) to use: its index among those of the backend, as `lorafuse
    /// devices` lists them (default: the first, best kind first: discrete, integrated, virtual,
    /// software). `--adapter` is a LoRA adapter's.
    #[arg(long = "gpu", value_name = "INDEX", global = true, env = "LORAFUSE_GPU")]
    adapter: Option<usize>,
}

impl DeviceArgs {
    fn open(&self) -> Result<Gpu> {
        let mut opts = GpuOptions::from_env()?;
        opts.backend = self.backend.parse()?;
        opts.adapter = self.adapter;
        let gpu = Gpu::new(&opts)?;
        eprintln!("device: {}", gpu.describe());
        Ok(gpu)
    }
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter with its backend, type, driver, limits and features.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Time the kernel variants for the common shape classes now and cache the choices
    /// (otherwise each class is timed on first use).
    Tune {
        /// Forget this device's cached choices first.
        #[arg(long)]
        clear: bool,
    },
    /// Train a LoRA adapter on conversations (PEFT format out; defaults: the paper's recipe).
    Train(Box<cli::train::TrainArgs>),
    Fuse(Box<cli::fuse::FuseArgs>),
    /// Evaluate harmfulness (keywords, a judge), XSTest over-refusal, MMLU and task loss.
    Eval(Box<cli::eval::EvalArgs>),
    /// The λ sweep: task and safety adapters fused at [1-λ, λ], evaluated with the base model.
    Sweep(Box<cli::sweep::SweepArgs>),
    /// The demo: train a small task and safety adapter on the shipped demo data, sweep λ,
    /// evaluate, print the trade-off (minutes on a CPU).
    Demo(Box<cli::pipeline::DemoArgs>),
    /// The paper's experiment on SmolLM2: both adapters with its recipe, the λ sweep on
    /// AdvBench, XSTest and MMLU, RESULTS.md against the paper's numbers.
    Reproduce(Box<cli::pipeline::ReproduceArgs>),
    /// Generate text from prompts (chat template applied unless --raw).
    Generate(cli::generate::GenerateArgs),
    /// An interactive chat, replies streamed.
    Chat(cli::generate::ChatArgs),
    /// The logits at every position of a token sequence, as safetensors (for comparing with
    /// other frameworks).
    Logits(cli::logits::LogitsArgs),
    /// Run a workload with every kernel timed: per-kernel tables and a Chrome trace.
    Profile {
        #[command(subcommand)]
        what: cli::profile::ProfileCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Matmul variants against the device's ceilings; fused vs sequential vs merged LoRA.
    Kernels {
        /// Also write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write the Markdown tables (as recorded in BENCHMARKS.md).
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// A short grid (about a minute on lavapipe) instead of the full one.
        #[arg(long)]
        quick: bool,
        /// Weight dtype of the fused-LoRA rows.
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
        lora_dtype: String,
    },
    /// Prefill and decode tokens/s of a model at batch 1 and 32, against llama.cpp on the same
    /// GGUF (CPU), and peak device memory.
    Model(ModelBenchArgs),
    /// Prefill and decode tokens/s with 0, 1, 2, 4 adapters: fused kernel vs sequential
    /// application vs the merged model.
    Fuse(FuseBenchArgs),
    /// LoRA training tokens/s (forward, backward, AdamW) against PyTorch + PEFT on this
    /// machine's CPU, on the same token ids, and peak device memory.
    Train(TrainBenchArgs),
}

#[derive(Args)]
struct FuseBenchArgs {
    /// A GGUF file or a Hugging Face model directory.
    #[arg(long, env = "LORAFUSE_MODEL", default_value = cli::generate::DEFAULT_MODEL)]
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
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Args)]
struct TrainBenchArgs {
    #[command(flatten)]
    model: cli::generate::ModelArgs,
    /// Tokens a sequence.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Sequences a step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 8)]
    r: usize,
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    targets: Vec<String>,
    /// Timed steps, after one warm-up step.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Python with torch and peft for the peer (default: .venv-peft/bin/python when present).
    #[arg(long, env = "LORAFUSE_PEFT_PYTHON")]
    peer_python: Option<PathBuf>,
    /// CPU threads for the peer (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Args)]
struct ModelBenchArgs {
    #[command(flatten)]
    model: cli::generate::ModelArgs,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    batches: Vec<usize>,
    /// Python with llama-cpp-python for the peer (default: .venv-bench/bin/python when present).
    #[arg(long, env = "LORAFUSE_PEER_PYTHON")]
    peer_python: Option<PathBuf>,
    /// CPU threads for the peer (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Runs of each measurement; the best counts.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn devices(backend: &str, json: bool) -> Result<()> {
    let list = list_adapters(backend.parse::<BackendChoice>()?);
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        anyhow::bail!(
            "no adapter found for backend '{backend}' (without a GPU, install Mesa's software Vulkan driver: apt-get install mesa-vulkan-drivers)"
        );
    }
    for a in &list {
        println!("[{}] {}", a.index, a.name);
        println!("    backend {}, {}, driver {} ({})", a.backend, a.device_type, a.driver, a.driver_info);
        println!(
            "    subgroup size {}..{}; features: {}",
            a.subgroup_sizes.0,
            a.subgroup_sizes.1,
            if a.features.is_empty() { "none".to_string() } else { a.features.join(", ") }
        );
        println!(
            "    max buffer {} MiB, max storage binding {} MiB, max 2-D texture {} × {} layers, workgroup storage {} KiB, {} invocations/workgroup, {} workgroups/dimension",
            a.max_buffer_size >> 20,
            a.max_storage_buffer_binding_size >> 20,
            a.max_texture_dimension_2d,
            a.max_texture_array_layers,
            a.max_compute_workgroup_storage_size >> 10,
            a.max_compute_invocations_per_workgroup,
            a.max_compute_workgroups_per_dimension
        );
    }
    Ok(())
}

fn tune_cmd(gpu: &Gpu, clear: bool) -> Result<()> {
    if clear {
        gpu.tuner().clear();
    }
    let layout = tune::preferred_layout(gpu)?;
    println!("weight layout: {}", layout.name());
    // SmolLM2-135M's projections (576 ↔ 1536) and a 2048-wide model; decode, prefill and
    // training row counts.
    let nk = [(576, 576), (1536, 576), (576, 1536), (2048, 2048)];
    let mut rows = Vec::new();
    for dtype in [DType::F32, DType::F16] {
        for m in [1, 8, 32, 128, 512, 2048] {
            for &(n, k) in &nk {
                rows.push((Form::Nt, layout, dtype, m, n, k));
            }
        }
        for m in [128, 1024] {
            for &(n, k) in &nk {
                rows.push((Form::Nn, layout, dtype, m, n, k));
            }
        }
    }
    for &(n, k) in &nk {
        rows.push((Form::Tn, Layout::Buffer, DType::F32, 16, n, k.max(1024)));
    }
    println!("{:<5} {:<8} {:<5} {:>6} {:>6} {:>6}  variant", "form", "layout", "dtype", "M", "N", "K");
    for (form, layout, dtype, m, n, k) in rows {
        let v = tune::select(gpu, form, layout, dtype, m, n, k)?;
        println!("{:<5} {:<8} {:<5} {m:>6} {n:>6} {k:>6}  {v}", form.name(), layout.name(), dtype.name());
    }
    match gpu.tuner().path() {
        Some(p) => println!("choices cached in {}", p.display()),
        None => println!("no cache folder (set LORAFUSE_CACHE_DIR or HOME): choices not saved"),
    }
    Ok(())
}

fn bench_kernels(
    gpu: &Gpu,
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
    quick: bool,
    lora_dtype: &str,
) -> Result<()> {
    let mut grid = if quick { bench::kernels::Grid::quick() } else { bench::kernels::Grid::standard() };
    grid.lora_dtype = if lora_dtype == "f16" { DType::F16 } else { DType::F32 };
    let report = {
        let mut progress = BarProgress::new();
        bench::kernels::run(gpu, &grid, &mut progress)?
    };
    let md = bench::kernels::markdown(&report);
    println!("{md}");
    write_outputs(json.as_ref(), &serde_json::to_string_pretty(&report)?, markdown.as_ref(), &md)
}

fn write_outputs(json: Option<&PathBuf>, json_text: &str, markdown: Option<&PathBuf>, md: &str) -> Result<()> {
    if let Some(path) = json {
        lorafuse::atomic::write_atomic(path, json_text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = markdown {
        lorafuse::atomic::write_atomic(path, md).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn bench_model(gpu: &Gpu, args: &ModelBenchArgs) -> Result<()> {
    let loaded = args.model.load(gpu)?;
    let default_py = PathBuf::from(".venv-bench/bin/python");
    let opts = bench::model::Options {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        batches: args.batches.clone(),
        peer_python: args.peer_python.clone().or_else(|| default_py.exists().then_some(default_py)),
        threads: args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
        reps: args.reps,
    };
    let report = {
        let mut progress = BarProgress::new();
        bench::model::run(gpu, &loaded.model, &args.model.model, &opts, &mut progress)?
    };
    let md = bench::model::markdown(&report);
    println!("{md}");
    write_outputs(args.json.as_ref(), &serde_json::to_string_pretty(&report)?, args.markdown.as_ref(), &md)
}

fn bench_fuse(gpu: &Gpu, args: &FuseBenchArgs) -> Result<()> {
    let opts = bench::fuse::Options {
        counts: args.counts.clone(),
        r: args.r,
        targets: args.targets.clone(),
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        batch: args.batch,
        reps: args.reps,
    };
    let dtype = if args.dtype == "f32" { DType::F32 } else { DType::F16 };
    let load = lorafuse::model::llama::LoadOptions { dtype, layout: None };
    let report = {
        let mut progress = BarProgress::new();
        bench::fuse::run(gpu, &args.model, load, &opts, &mut progress)?
    };
    let md = bench::fuse::markdown(&report);
    println!("{md}");
    write_outputs(args.json.as_ref(), &serde_json::to_string_pretty(&report)?, args.markdown.as_ref(), &md)
}

fn bench_train(gpu: &Gpu, args: &TrainBenchArgs) -> Result<()> {
    let mut loaded = args.model.load(gpu)?;
    let default_py = PathBuf::from(".venv-peft/bin/python");
    let opts = bench::train::Options {
        seq: args.seq,
        batch: args.batch,
        r: args.r,
        targets: args.targets.clone(),
        steps: args.steps,
        peer_python: args.peer_python.clone().or_else(|| default_py.exists().then_some(default_py)),
        threads: args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
    };
    let report = {
        let mut progress = BarProgress::new();
        bench::train::run(gpu, &mut loaded.model, &args.model.model, &opts, &mut progress)?
    };
    let md = bench::train::markdown(&report);
    println!("{md}");
    write_outputs(args.json.as_ref(), &serde_json::to_string_pretty(&report)?, args.markdown.as_ref(), &md)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Devices { json } => devices(&cli.device.backend, json),
        Command::Tune { clear } => tune_cmd(&cli.device.open()?, clear),
        Command::Generate(args) => cli::generate::run_generate(&cli.device.open()?, &args, None),
        Command::Train(args) => cli::train::run(&cli.device.open()?, &args),
        Command::Fuse(args) => cli::fuse::run(&args),
        Command::Eval(args) => cli::eval::run(&cli.device.open()?, &args),
        Command::Sweep(args) => cli::sweep::run(&cli.device.open()?, &args),
        Command::Demo(args) => cli::pipeline::demo(&cli.device.open()?, &args),
        Command::Reproduce(args) => cli::pipeline::reproduce(&cli.device.open()?, &args),
        Command::Logits(args) => cli::logits::run(&cli.device.open()?, &args),
        Command::Profile { what } => cli::profile::run(&cli.device.open()?, &what),
        Command::Chat(args) => cli::generate::run_chat(&cli.device.open()?, &args),
        Command::Bench { what: BenchCommand::Kernels { json, markdown, quick, lora_dtype } } => {
            bench_kernels(&cli.device.open()?, json, markdown, quick, &lora_dtype)
        }
        Command::Bench { what: BenchCommand::Model(args) } => bench_model(&cli.device.open()?, &args),
        Command::Bench { what: BenchCommand::Train(args) } => bench_train(&cli.device.open()?, &args),
        Command::Bench { what: BenchCommand::Fuse(args) } => bench_fuse(&cli.device.open()?, &args),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lorafuse: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every (sub)command's flags, the global ones included, have distinct names. clap checks
    /// this itself only in debug builds, and the tests run in release, where a duplicate flag
    /// (a LoRA `--adapter` beside a device `--adapter`) silently goes to one of the two.
    #[test]
    fn flags_are_unambiguous() {
        use clap::CommandFactory;
        fn check(cmd: &clap::Command, path: &str, seen: &mut usize) {
            let mut longs = std::collections::BTreeSet::new();
            for a in cmd.get_arguments() {
                if let Some(l) = a.get_long() {
                    assert!(longs.insert(l), "{path}: --{l} is defined twice");
                    *seen += 1;
                }
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()), seen);
            }
        }
        let mut cmd = super::Cli::command();
        cmd.build();
        let mut seen = 0;
        check(&cmd, "lorafuse", &mut seen);
        // the walk reached the subcommands' own flags
        assert!(seen > 100, "only {seen} flags found");
    }
}
