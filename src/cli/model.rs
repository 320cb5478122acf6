//! The model every running subcommand works on: the flags that name it (model file, weight
//! precision, adapters) and the session they open (the device, the model with its tokenizer and
//! chat template, and the flags it came from).

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use clap::Args;

use lorafuse::gpu::{DType, Gpu};
use lorafuse::lora::peft::Adapter;
use lorafuse::model::chat::ChatTemplate;
use lorafuse::model::config::LlamaConfig;
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
    /// Weight precision on the GPU: q4 (a GGUF's quantized weights stay in their blocks,
    /// dequantized inside the kernels: 4-bit types as 4-bit, Q8_0 as 8-bit, the LM head
    /// included; the rest f16), f16, or f32 (exact dequantized weights).
    #[arg(long, default_value = "q4", value_parser = ["q4", "f16", "f32"])]
    pub dtype: String,
    /// A PEFT LoRA adapter directory (or a llama.cpp LoRA GGUF file), optionally with its weight
    /// (DIR:0.6; default 1), applied unmerged through the fused kernel. Repeatable: the adapters
    /// are fused at their weights.
    #[arg(long = "adapter", value_name = "DIR[:WEIGHT]")]
    pub adapters: Vec<String>,
}

pub use lorafuse::validate::adapter_weight;

/// A count flag that must be at least 1 (batch sizes): 0 would run nothing, silently.
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("'{s}' is not a count: {e}")),
    }
}

/// "DIR" or "DIR:WEIGHT". A path may itself hold colons: a spec naming an existing path is that
/// path at weight 1; otherwise the suffix after the last colon is the weight, and one that is
/// not a number is an error when the part before it exists (a typo, not a missing directory).
pub fn parse_adapter(spec: &str) -> Result<(PathBuf, f32)> {
    if let Some((dir, w)) = spec.rsplit_once(':')
        && !Path::new(spec).exists()
    {
        match w.trim().parse::<f64>() {
            Ok(x) => {
                return Ok((PathBuf::from(dir), adapter_weight(x).map_err(|e| anyhow!("--adapter '{spec}': {e}"))?));
            }
            Err(_) if Path::new(dir).exists() => bail!("--adapter '{spec}': the weight '{w}' is not a number"),
            Err(_) => {}
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

/// PEFT directories or llama.cpp LoRA GGUF files, for a model of `cfg`.
fn load_adapters(paths: &[PathBuf], cfg: &LlamaConfig) -> Result<Vec<Adapter>> {
    Ok(paths.iter().map(|p| lorafuse::lora::open(p, cfg)).collect::<lorafuse::Result<Vec<_>>>()?)
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
        let adapters = load_adapters(dirs, self.model.cfg())?;
        self.model.attach(&adapters, weights)?;
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
    /// The --adapter flags as (directory, weight), checked.
    pub fn adapter_specs(&self) -> Result<Vec<(PathBuf, f32)>> {
        self.adapters.iter().map(|a| parse_adapter(a)).collect()
    }

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
            let (dirs, weights): (Vec<PathBuf>, Vec<f32>) = self.adapter_specs()?.into_iter().unzip();
            let adapters = load_adapters(&dirs, model.cfg())?;
            model.attach(&adapters, &weights)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_specs_take_finite_weights_and_name_typos() {
        let dir = std::env::temp_dir().join(format!("lorafuse-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        assert_eq!(parse_adapter(&format!("{d}:0.6")).unwrap(), (dir.clone(), 0.6));
        assert_eq!(parse_adapter(&format!("{d}:-1.5")).unwrap(), (dir.clone(), -1.5));
        assert_eq!(parse_adapter(&d.to_string()).unwrap(), (dir.clone(), 1.0));
        for bad in ["nan", "inf", "-inf", "1e400", "1e300", "20000"] {
            let e = parse_adapter(&format!("{d}:{bad}")).unwrap_err().to_string();
            assert!(e.contains("finite number"), "{bad}: {e}");
        }
        let e = parse_adapter(&format!("{d}:abc")).unwrap_err().to_string();
        assert!(e.contains("'abc' is not a number"), "{e}");
        // a missing directory stays the loader's error to report
        assert!(parse_adapter("/no/such/dir:abc").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
