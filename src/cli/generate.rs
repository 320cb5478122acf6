//! `lorafuse generate` and `lorafuse chat`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

use lorafuse::gpu::{Gpu, Profile};
use lorafuse::model::chat::{Message, conversation};
use lorafuse::model::generate::{Completion, GenerateOptions, Stats, generate, prompt_ids, rehearse};
use lorafuse::model::sampling::SamplingOptions;

use super::model::{ModelArgs, adapter_weight};

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate per prompt.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: the most likely tokens holding this probability (1: all).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn options(&self) -> Result<GenerateOptions> {
        // written so that NaN fails both
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("--temperature must be a finite number ≥ 0 (0 is greedy), not {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], not {}", self.top_p);
        }
        Ok(GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampling: SamplingOptions {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            },
            stop: self.stop.clone(),
            mixes: Vec::new(),
        })
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The user's message (or, with --raw, the whole prompt text).
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// JSONL, one prompt a line: {"prompt": "..."} or {"messages": [{"role", "content"}, ...]},
    /// optionally with "adapter_weights": [w1, ...], one per --adapter, that prompt's own fusion
    /// (prompts with different mixes share a batch).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// A system message before each prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Send the text as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Prompts per batch with --prompts.
    #[arg(long, default_value_t = 8, value_parser = super::model::at_least_one)]
    pub batch_size: usize,
    /// Print one JSON object a prompt (token ids and text) instead of the text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// A prompt of a prompts file: its conversation and its own adapter weights, if it gives them.
struct PromptLine {
    messages: Vec<Message>,
    weights: Option<Vec<f32>>,
}

/// The prompts of a prompts file, with errors naming its line; `adapters` is how many adapters
/// an "adapter_weights" list must weigh.
fn read_prompts(path: &Path, system: Option<&str>, adapters: usize) -> Result<Vec<PromptLine>> {
    let text = lorafuse::validate::read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| anyhow::anyhow!("{}:{}: {what}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let mut messages: Vec<Message> = match (v.get("messages"), v.get("prompt")) {
            (Some(m), _) => serde_json::from_value(m.clone())
                .map_err(|e| bad(&format!("\"messages\" must be a list of {{role, content}}: {e}")))?,
            (None, Some(serde_json::Value::String(p))) => vec![Message::new("user", p)],
            _ => return Err(bad("needs a \"prompt\" string or a \"messages\" list")),
        };
        if messages.is_empty() {
            return Err(bad("\"messages\" is empty"));
        }
        if let Some(s) = system
            && messages[0].role != "system"
        {
            messages.insert(0, Message::new("system", s));
        }
        let weights = match v.get("adapter_weights") {
            None => None,
            Some(w) => {
                let w: Vec<f64> = serde_json::from_value(w.clone())
                    .map_err(|e| bad(&format!("\"adapter_weights\" must be a list of numbers: {e}")))?;
                if w.len() != adapters {
                    return Err(bad(&format!("\"adapter_weights\" has {} weights for {adapters} --adapter", w.len())));
                }
                // as f64, so 1e300 is reported rather than read as infinity
                let w: Vec<f32> = (w.iter().map(|&x| adapter_weight(x)))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| bad(&format!("\"adapter_weights\": {e}")))?;
                Some(w)
            }
        };
        out.push(PromptLine { messages, weights });
    }
    if out.is_empty() {
        bail!("{}: no prompts (the file is empty or blank)", path.display());
    }
    Ok(out)
}

fn report(stats: &Stats) {
    eprintln!(
        "prefill: {} tokens in {:.2} s ({:.1} tokens/s); decode: {} tokens in {:.2} s ({:.1} tokens/s)",
        stats.prefill_tokens,
        stats.prefill_secs,
        stats.prefill_tps(),
        stats.decode_tokens,
        stats.decode_secs,
        stats.decode_tps()
    );
}

pub fn run_generate(gpu: &Gpu, args: &GenerateArgs, mut profile: Option<&mut Profile>) -> Result<()> {
    let mut opts = args.sampling.options()?;
    let lines = match (&args.prompt, &args.prompts) {
        (Some(p), _) => vec![PromptLine { messages: conversation(args.system.as_deref(), p), weights: None }],
        (None, Some(path)) => read_prompts(path, args.system.as_deref(), args.model.adapters.len())?,
        (None, None) => bail!("give --prompt TEXT or --prompts FILE.jsonl"),
    };
    let conversations: Vec<&[Message]> = lines.iter().map(|l| l.messages.as_slice()).collect();
    let default_mix: Vec<f32> = args.model.adapter_specs()?.into_iter().map(|(_, w)| w).collect();
    let mixes: Vec<Vec<f32>> = if lines.iter().any(|l| l.weights.is_some()) {
        lines.iter().map(|l| l.weights.clone().unwrap_or_else(|| default_mix.clone())).collect()
    } else {
        Vec::new()
    };
    let m = args.model.load(gpu)?;
    if m.template.is_none() && !args.raw {
        eprintln!("note: the model has no chat template; prompts are sent as raw text");
    }
    let ids: Vec<Vec<u32>> = conversations
        .iter()
        .map(|c| prompt_ids(&m.tok, m.template.as_ref(), c, args.raw))
        .collect::<lorafuse::Result<_>>()?;
    let stream = !args.json && ids.len() == 1;
    let first = &ids[..ids.len().min(args.batch_size.max(1))];
    let warm = GenerateOptions { mixes: mixes.iter().take(first.len()).cloned().collect(), ..opts.clone() };
    m.model.warm_up(false, || rehearse(&m.model, first, &warm))?;
    let mut total = Stats::default();
    let mut stdout = std::io::stdout().lock();
    for (chunk_no, chunk) in ids.chunks(args.batch_size.max(1)).enumerate() {
        let base = chunk_no * args.batch_size.max(1);
        if !mixes.is_empty() {
            opts.mixes = mixes[base..base + chunk.len()].to_vec();
        }
        let (completions, stats) = generate(&m.model, &m.tok, chunk, &opts, profile.as_deref_mut(), |_, piece| {
            if stream {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
        })?;
        total.add(&stats);
        for (i, c) in completions.iter().enumerate() {
            let mix = mixes.get(base + i).map(Vec::as_slice);
            print_completion(&mut stdout, base + i, &chunk[i], c, mix, args.json, stream)?;
        }
    }
    report(&total);
    Ok(())
}

fn print_completion(
    out: &mut impl Write,
    index: usize,
    prompt: &[u32],
    c: &Completion,
    mix: Option<&[f32]>,
    json: bool,
    streamed: bool,
) -> Result<()> {
    if json {
        let mut line = serde_json::json!({
            "index": index,
            "prompt_ids": prompt,
            "ids": c.ids,
            "text": c.text,
            "finish_reason": c.finish,
        });
        if let Some(m) = mix {
            line["adapter_weights"] = serde_json::json!(m);
        }
        writeln!(out, "{line}")?;
    } else if streamed {
        writeln!(out)?;
    } else {
        writeln!(out, "### {index}\n{}\n", c.text)?;
    }
    Ok(())
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// An interactive session on stdin/stdout, replies streamed as they are generated.
pub fn run_chat(gpu: &Gpu, args: &ChatArgs) -> Result<()> {
    let opts = args.sampling.options()?;
    let m = args.model.load(gpu)?;
    let Some(template) = m.template.as_ref() else {
        bail!("{} has no chat template; use `lorafuse generate --raw` for plain text", args.model.model.display());
    };
    let mut history: Vec<Message> = args.system.iter().map(|s| Message::new("system", s)).collect();
    let fresh = history.clone();
    let typical =
        prompt_ids(&m.tok, Some(template), &conversation(args.system.as_deref(), "Hello, how are you?"), false)?;
    m.model.warm_up(false, || rehearse(&m.model, &[typical], &opts))?;
    eprintln!("chat: type a message; /reset starts over, /exit (or end of input) leaves");
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = fresh.clone();
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let ids = prompt_ids(&m.tok, Some(template), &history, false)?;
        let (c, stats) = generate(&m.model, &m.tok, &[ids], &opts, None, |_, piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        })?;
        writeln!(stdout)?;
        report(&stats);
        history.push(Message::new("assistant", &c[0].text));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_p: f32) -> SamplingArgs {
        SamplingArgs { max_new_tokens: 1, temperature, top_k: 0, top_p, seed: 0, stop: Vec::new() }
    }

    #[test]
    fn sampling_flags_must_be_finite_and_in_range() {
        assert!(sampling(0.0, 1.0).options().is_ok() && sampling(0.7, 0.9).options().is_ok());
        for (t, p) in [(f32::NAN, 1.0), (f32::INFINITY, 1.0), (-1.0, 1.0), (0.5, f32::NAN), (0.5, 0.0), (0.5, 1.5)] {
            assert!(sampling(t, p).options().is_err(), "temperature {t}, top-p {p} accepted");
        }
    }

    #[test]
    fn prompt_files_refuse_non_finite_or_huge_weights() {
        let path = std::env::temp_dir().join(format!("lorafuse-prompts-{}.jsonl", std::process::id()));
        for (w, ok) in [("[0.5, 0.5]", true), ("[1e300, 0]", false), ("[0.5, -1e5]", false)] {
            std::fs::write(&path, format!("{{\"prompt\": \"hi\", \"adapter_weights\": {w}}}\n")).unwrap();
            let r = read_prompts(&path, None, 2);
            assert_eq!(r.is_ok(), ok, "{w}: {:?}", r.err());
            if let Err(e) = r {
                assert!(e.to_string().contains("finite number"), "{e}");
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
}
