//! The `lorafuse` command line.

mod cli;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use lorafuse::gpu::{BackendChoice, DType, Gpu, GpuOptions, Layout, list_adapters};
use lorafuse::kernels::matmul::Form;
use lorafuse::kernels::matmul::tune::{self, Problem};

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
    /// (otherwise a command's warm-up times the classes it needs, on its first run).
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
    /// An OpenAI-compatible HTTP server: every request its own adapter mix, all in one batch.
    Serve(Box<cli::serve::ServeArgs>),
    /// The logits at every position of a token sequence, as safetensors (for comparing with
    /// other frameworks).
    Logits(cli::logits::LogitsArgs),
    /// Adapters out as GGUF for llama.cpp, Ollama and LM Studio.
    Export {
        #[command(subcommand)]
        what: cli::export::ExportCommand,
    },
    /// Run a workload with every kernel timed: per-kernel tables and a Chrome trace.
    Profile {
        #[command(subcommand)]
        what: cli::profile::ProfileCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: cli::bench::BenchCommand,
    },
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
        tune::tuner(gpu).lock().clear();
    }
    let layout = tune::tune_layout(gpu, false)?;
    println!("weight layout: {}", layout.name());
    // SmolLM2-135M's projections (576 ↔ 1536) and a 2048-wide model; decode, prefill and
    // training row counts.
    let nk = [(576, 576), (1536, 576), (576, 1536), (2048, 2048)];
    let mut problems = Vec::new();
    for dtype in [DType::F32, DType::F16] {
        for m in [1, 8, 32, 128, 512, 2048] {
            for &(n, k) in &nk {
                problems.push(Problem { form: Form::Nt, layout, dtype, m, n, k });
            }
        }
        for m in [128, 1024] {
            for &(n, k) in &nk {
                problems.push(Problem { form: Form::Nn, layout, dtype, m, n, k });
            }
        }
    }
    for &(n, k) in &nk {
        problems.push(Problem { form: Form::Tn, layout: Layout::Buffer, dtype: DType::F32, m: 16, n, k: k.max(1024) });
    }
    tune::tune_now(gpu, &problems, false)?;
    println!("{:<5} {:<8} {:<5} {:>6} {:>6} {:>6}  variant", "form", "layout", "dtype", "M", "N", "K");
    for p in problems {
        let v = tune::lookup(gpu, &p)?;
        let (form, layout, dtype, m, n, k) = (p.form, p.layout, p.dtype, p.m, p.n, p.k);
        println!("{:<5} {:<8} {:<5} {m:>6} {n:>6} {k:>6}  {v}", form.name(), layout.name(), dtype.name());
    }
    match tune::tuner(gpu).lock().path() {
        Some(p) => println!("choices cached in {}", p.display()),
        None => println!("no cache folder (set LORAFUSE_CACHE_DIR or HOME): choices not saved"),
    }
    Ok(())
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
        Command::Export { what } => cli::export::run(&what),
        Command::Profile { what } => cli::profile::run(&cli.device.open()?, &what),
        Command::Chat(args) => cli::generate::run_chat(&cli.device.open()?, &args),
        Command::Serve(args) => cli::serve::run(&cli.device.open()?, &args),
        Command::Bench { what } => cli::bench::run(&cli.device.open()?, &what),
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
