//! `lorafuse export`: adapters and models (with a fusion merged in) out as GGUF for llama.cpp,
//! Ollama and LM Studio.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use lorafuse::lora::gguf::export_gguf_lora;
use lorafuse::lora::peft::Adapter;
use lorafuse::model::export_gguf::export_gguf;
use lorafuse::model::quant::GgmlType;
use lorafuse::model::source::ModelSource;
use lorafuse::progress::Progress;

use super::model::{DEFAULT_MODEL, parse_adapter};

#[derive(Subcommand)]
pub enum ExportCommand {
    /// A PEFT LoRA adapter (trained, fused or PEFT-made) as llama.cpp's LoRA GGUF, for the base
    /// model it was trained on: `llama-cli -m BASE.gguf --lora F.gguf` (or --lora-scaled F.gguf
    /// 0.6), llama-server's per-request lora list, Ollama's ADAPTER line.
    GgufLora(GgufLoraArgs),
    /// The base model (a GGUF, or a Hugging Face directory) with adapters merged in (W + Σ w·s·B·A)
    /// as one complete GGUF (tokenizer, chat template and hyperparameters carried over or
    /// converted), its matrices written by lorafuse's own block writers: `llama-cli -m F.gguf`,
    /// Ollama's FROM line.
    Gguf(GgufArgs),
}

#[derive(Args)]
pub struct GgufArgs {
    /// The base model: a GGUF file (its metadata carried over) or a Hugging Face directory (its
    /// config.json and byte-level BPE tokenizer converted to llama.cpp's keys).
    #[arg(long, env = "LORAFUSE_MODEL", default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// A PEFT adapter directory (or LoRA GGUF) to merge, with its weight (DIR:0.6; default 1).
    /// Repeatable: the adapters' weighted sum is merged. None: the base as is, in --type.
    #[arg(long = "adapter", value_name = "DIR[:WEIGHT]")]
    pub adapter_specs: Vec<String>,
    /// The matrices' type (embeddings and linear layers; norms stay f32, and rows that are not
    /// whole 32-value blocks f16).
    #[arg(long = "type", default_value = "f16", value_parser = ["f16", "q8_0", "q4_0", "q4_1"])]
    pub ty: String,
    /// The GGUF to write (atomically; never one of the inputs).
    #[arg(long)]
    pub out: PathBuf,
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
        ExportCommand::Gguf(args) => {
            let specs: Vec<(PathBuf, f32)> =
                args.adapter_specs.iter().map(|s| parse_adapter(s)).collect::<Result<_>>()?;
            let mut inputs = vec![args.model.clone()];
            inputs.extend(specs.iter().map(|(p, _)| p.clone()));
            inputs.extend(specs.iter().map(|(p, _)| p.join("adapter_model.safetensors")));
            refuse_inputs(&args.out, &inputs)?;
            let src = ModelSource::open(&args.model)?;
            let cfg = src.config()?;
            let adapters =
                specs.iter().map(|(p, _)| lorafuse::lora::open(p, &cfg)).collect::<lorafuse::Result<Vec<_>>>()?;
            let merge: Vec<(&Adapter, f32)> = adapters.iter().zip(&specs).map(|(a, (_, w))| (a, *w)).collect();
            let ty = match args.ty.as_str() {
                "q8_0" => GgmlType::Q8_0,
                "q4_0" => GgmlType::Q4_0,
                "q4_1" => GgmlType::Q4_1,
                _ => GgmlType::F16,
            };
            let bar = Progress::new(0, &format!("writing {}", args.out.display()), "tensors", false);
            let e = export_gguf(&src, &merge, ty, &args.out, &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .with_context(|| format!("exporting {} as GGUF", args.model.display()))?;
            bar.finish();
            eprintln!(
                "wrote {} ({} tensors, {:.1} MiB, {}; {} linear weights merged{})",
                args.out.display(),
                e.tensors,
                e.bytes as f64 / (1 << 20) as f64,
                args.ty,
                e.merged,
                if e.f16_fallbacks > 0 {
                    format!(", {} matrices f16 (rows not whole blocks)", e.f16_fallbacks)
                } else {
                    String::new()
                }
            );
            Ok(())
        }
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

/// A GGUF output that is a folder, or one of the inputs, is refused before anything runs.
fn refuse_inputs(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    if out.is_dir() {
        bail!("--out {} is a folder; give the GGUF file to write", out.display());
    }
    Ok(lorafuse::atomic::refuse_overlap(out, inputs)?)
}
