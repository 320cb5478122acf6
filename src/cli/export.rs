//! `lorafuse export`: adapters (and, later, fused models) out as GGUF for llama.cpp, Ollama and
//! LM Studio.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use lorafuse::lora::gguf::export_gguf_lora;
use lorafuse::lora::peft::Adapter;
use lorafuse::model::source::ModelSource;

use super::model::DEFAULT_MODEL;

#[derive(Subcommand)]
pub enum ExportCommand {
    /// A PEFT LoRA adapter (trained, fused or PEFT-made) as llama.cpp's LoRA GGUF, for the base
    /// model it was trained on: `llama-cli -m BASE.gguf --lora F.gguf` (or --lora-scaled F.gguf
    /// 0.6), llama-server's per-request lora list, Ollama's ADAPTER line.
    GgufLora(GgufLoraArgs),
}

#[derive(Args)]
pub struct GgufLoraArgs {
    /// The PEFT adapter directory.
    #[arg(long = "adapter", value_name = "DIR")]
    pub adapter_dir: PathBuf,
    /// The base model (a GGUF file or a Hugging Face directory): its architecture, layers and
    /// shapes the adapter is checked against, and the row order of its q and k.
    #[arg(long, env = "LORAFUSE_MODEL", default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// The GGUF to write (atomically; never one of the inputs).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(what: &ExportCommand) -> Result<()> {
    match what {
        ExportCommand::GgufLora(args) => {
            refuse_inputs(&args.out, &[args.model.clone(), args.adapter_dir.join("adapter_model.safetensors")])?;
            let adapter = Adapter::load(&args.adapter_dir)?;
            let src = ModelSource::open(&args.model)?;
            export_gguf_lora(&adapter, &src, &args.out)
                .with_context(|| format!("exporting {} as a LoRA GGUF", args.adapter_dir.display()))?;
            eprintln!(
                "wrote {} ({} targets in {} layers, r {}, scale {}) for {}",
                args.out.display(),
                adapter.config.target_modules.len(),
                adapter.factors.keys().map(|(l, _)| l).collect::<std::collections::BTreeSet<_>>().len(),
                adapter.config.r,
                adapter.scale(),
                args.model.display()
            );
            Ok(())
        }
    }
}

/// An output that is one of the inputs (or the adapter's folder) is refused before anything runs.
fn refuse_inputs(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    if out.is_dir() {
        bail!("--out {} is a folder; give the GGUF file to write", out.display());
    }
    let Ok(out_c) = out.canonicalize() else { return Ok(()) };
    for i in inputs {
        if i.canonicalize().is_ok_and(|c| c == out_c) {
            bail!("--out {} is an input of this export; write somewhere else", out.display());
        }
    }
    Ok(())
}
