//! `lorafuse logits`: the logits at every position of a token sequence, written as safetensors,
//! so other frameworks (scripts/peft_interop.py: transformers + PEFT) can be compared with ours.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use safetensors::tensor::{Dtype, TensorView};

use lorafuse::gpu::Gpu;
use lorafuse::model::batch::Batch;
use lorafuse::model::chat::Message;
use lorafuse::model::generate::prompt_ids;

use super::model::ModelArgs;

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub tokens: Vec<u32>,
    /// A user message, chat template applied (or the raw text with --raw).
    #[arg(long)]
    pub prompt: Option<String>,
    #[arg(long)]
    pub raw: bool,
    /// Output: a safetensors file with "tokens" (I32 [T]) and "logits" (F32 [T, vocab]).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(gpu: &Gpu, args: &LogitsArgs) -> Result<()> {
    let m = args.model.load(gpu)?;
    let tokens = match &args.prompt {
        Some(p) => prompt_ids(&m.tok, m.template.as_ref(), &[Message::new("user", p)], args.raw)?,
        None if !args.tokens.is_empty() => args.tokens.clone(),
        None => bail!("give --tokens 1,2,3 or --prompt TEXT"),
    };
    let vocab = m.model.cfg().vocab;
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        bail!("token {t} is outside the vocabulary of {vocab}");
    }
    let mut batch = Batch::default();
    batch.push_sequence(0, 0, &tokens, false);
    batch.logits_rows = (0..tokens.len() as u32).collect();
    let cache = m.model.new_cache(1, tokens.len())?;
    m.model.warm_up(false, || m.model.forward(&batch, &cache))?;
    let logits = m.model.forward(&batch, &cache)?.read_f32(gpu)?;
    m.model.check_logits(&logits, |row| format!("position {row}"))?;
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let (ib, lb): (&[u8], &[u8]) = (bytemuck::cast_slice(&ids), bytemuck::cast_slice(&logits));
    let views = HashMap::from([
        ("tokens".to_string(), TensorView::new(Dtype::I32, vec![ids.len()], ib)?),
        ("logits".to_string(), TensorView::new(Dtype::F32, vec![ids.len(), vocab], lb)?),
    ]);
    let bytes = safetensors::serialize(&views, None)?;
    lorafuse::atomic::write_atomic(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote logits [{}, {vocab}] to {}", tokens.len(), args.out.display());
    Ok(())
}
