//! The model every running subcommand works on: the flags that name it (model file, weight
//! precision, adapters) and the session they open (the device, the model with its tokenizer and
//! chat template, and the flags it came from).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use lorafuse::gpu::{DType, Gpu};
use lorafuse::lora::peft::Adapter;
use lorafuse::model::chat::ChatTemplate;
use lorafuse::model::llama::{Llama, LoadOptions};
use lorafuse::model::source::ModelSource;
use lorafuse::model::tokenizer::Tokenizer;

/// The default model, as scripts/fetch-model.sh places it.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face model directory.
    #[arg(long, env = "LORAFUSE_MODEL", default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Weight precision on the GPU: q4 (a GGUF's 4-bit weights stay 4-bit, dequantized inside
    /// the kernels; the rest f16), f16, or f32 (exact dequantized weights).
    #[arg(long, default_value = "q4", value_parser = ["q4", "f16", "f32"])]
    pub dtype: String,
    /// A PEFT LoRA adapter directory, optionally with its weight (DIR:0.6; default 1), applied
    /// unmerged through the fused kernel. Repeatable: the adapters are fused at their weights.
    #[arg(long = "adapter", value_name = "DIR[:WEIGHT]")]
    pub adapters: Vec<String>,
}

/// "DIR" or "DIR:WEIGHT" (a path may itself hold colons: only a parseable suffix is a weight).
pub fn parse_adapter(spec: &str) -> (PathBuf, f32) {
    if let Some((dir, w)) = spec.rsplit_once(':')
        && let Ok(w) = w.parse::<f32>()
    {
        return (PathBuf::from(dir), w);
    }
    (PathBuf::from(spec), 1.0)
}

fn load_adapters(dirs: &[PathBuf]) -> Result<Vec<Adapter>> {
    Ok(dirs.iter().map(|d| Adapter::load(d)).collect::<lorafuse::Result<Vec<_>>>()?)
}

/// A model on a device with its tokenizer and chat template, and the flags it was opened with
/// (their adapters are the ones attached).
pub struct Session {
    pub gpu: Gpu,
    pub args: ModelArgs,
    pub model: Llama,
    pub tok: Tokenizer,
    pub template: Option<ChatTemplate>,
}

impl Session {
    /// Attaches the adapters in `dirs` at `weights` (replacing any), as the flags will say.
    pub fn attach(&mut self, dirs: &[PathBuf], weights: &[f32]) -> Result<()> {
        self.model.attach(&load_adapters(dirs)?, weights)?;
        self.args.adapters = dirs.iter().map(|d| d.display().to_string()).collect();
        Ok(())
    }

    pub fn detach(&mut self) {
        self.model.detach();
        self.args.adapters.clear();
    }

    /// The device, for reports.
    pub fn device(&self) -> String {
        self.gpu.describe()
    }
}

impl ModelArgs {
    pub fn load(&self, gpu: &Gpu) -> Result<Session> {
        let started = std::time::Instant::now();
        let src = ModelSource::open(&self.model)?;
        let dtype = match self.dtype.as_str() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            _ => DType::Q4,
        };
        let mut model = Llama::load(gpu, &src, LoadOptions { dtype, layout: None })?;
        if !self.adapters.is_empty() {
            let (dirs, weights): (Vec<PathBuf>, Vec<f32>) = self.adapters.iter().map(|a| parse_adapter(a)).unzip();
            model.attach(&load_adapters(&dirs)?, &weights)?;
            for (d, w) in dirs.iter().zip(&weights) {
                eprintln!("adapter: {} at weight {w}", d.display());
            }
        }
        let tok = src.tokenizer()?;
        let template = src.chat_template()?;
        eprintln!(
            "model: {} ({} layers, hidden {}, {} weights in {} layout, {:.0} MiB) loaded in {:.1} s",
            self.model.display(),
            model.cfg().layers,
            model.cfg().hidden,
            dtype,
            model.layout().name(),
            model.weight_bytes() as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
        Ok(Session { gpu: gpu.clone(), args: self.clone(), model, tok, template })
    }
}
