//! `lorafuse serve`: the OpenAI-compatible server (src/serve).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use lorafuse::gpu::Gpu;
use lorafuse::serve::engine::{AdapterInfo, Engine, EngineOptions};
use lorafuse::serve::http::{App, check_name};

use super::model::{ModelArgs, at_least_one, parse_adapter};

#[derive(Args)]
pub struct ServeArgs {
    /// The model, and adapters as NAME=DIR[:WEIGHT] (the weight requests that name no mix get;
    /// default 1; without NAME=, the directory's name). Requests name a mix in "model"
    /// ("task:0.6+safety:0.4") or in "adapters" ({"task": 0.6, "safety": 0.4}).
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0: any free port (the one taken is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences generated at once (KV cache slots): the batch's rows in decode.
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    pub max_seqs: usize,
    /// The most tokens a request may ask for (and what it gets when it names no max_tokens).
    #[arg(long, default_value_t = 512, value_parser = at_least_one)]
    pub max_tokens: usize,
    /// Positions a sequence holds, prompt and completion (default: the model's context, at most
    /// 2048); the KV cache is --max-seqs × this.
    #[arg(long)]
    pub context: Option<usize>,
    /// Requests that may wait for a slot; more are refused with 429.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub max_queue: usize,
    /// Prompt tokens prefilled a step beside the decode rows.
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    pub prefill_chunk: usize,
    /// Every endpoint but /health wants `Authorization: Bearer KEY`.
    #[arg(long, env = "LORAFUSE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// One mix a batch (as servers without per-row adapter weights run): for comparison.
    #[arg(long)]
    pub split_by_mix: bool,
    /// Seconds running requests get to finish after SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10.0)]
    pub grace_secs: f64,
}

/// "NAME=DIR[:WEIGHT]" or "DIR[:WEIGHT]" (named after the directory).
fn named_adapter(spec: &str) -> Result<(String, PathBuf, f32)> {
    let (name, rest) = match spec.split_once('=') {
        Some((n, r)) if !Path::new(spec).exists() => (Some(n.to_string()), r),
        _ => (None, spec),
    };
    let (dir, weight) = parse_adapter(rest)?;
    let name = match name {
        Some(n) => n,
        None => dir.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    Ok((name, dir, weight))
}

/// The id clients name the base by: the model file's name without .gguf, or the directory's.
fn base_id(model: &Path) -> String {
    let name = model.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    name.strip_suffix(".gguf").map(str::to_string).unwrap_or(name)
}

pub fn run(gpu: &Gpu, args: &ServeArgs) -> Result<()> {
    if !(args.grace_secs >= 0.0 && args.grace_secs.is_finite()) {
        bail!("--grace-secs must be a finite number ≥ 0, not {}", args.grace_secs);
    }
    let base = base_id(&args.model.model);
    let specs: Vec<(String, PathBuf, f32)> =
        args.model.adapters.iter().map(|s| named_adapter(s)).collect::<Result<_>>()?;
    for (i, (name, ..)) in specs.iter().enumerate() {
        check_name(name, &base).map_err(|e| anyhow::anyhow!("--adapter '{}': {e}", args.model.adapters[i]))?;
        if specs[..i].iter().any(|s| &s.0 == name) {
            bail!("--adapter: two adapters are named '{name}' (name them: --adapter NAME=DIR)");
        }
    }
    let bare = ModelArgs { adapters: Vec::new(), ..args.model.clone() };
    let session = bare.load(gpu)?;
    let cfg = session.model.cfg().clone();
    let context = args.context.unwrap_or(cfg.max_positions.min(2048));
    if context < 2 || context > cfg.max_positions {
        bail!(
            "--context {context}: must be from 2 to the model's context of {} ({})",
            cfg.max_positions,
            cfg.context_source
        );
    }
    if args.max_seqs * context > session.model.cache_capacity() {
        bail!(
            "--max-seqs {} × --context {context} positions do not fit one KV cache binding on this device ({} positions): lower one",
            args.max_seqs,
            session.model.cache_capacity()
        );
    }
    let mut adapters = Vec::new();
    for (name, dir, weight) in specs {
        let a = lorafuse::lora::open(&dir, &cfg)?;
        eprintln!("adapter: '{name}' from {} (default weight {weight})", dir.display());
        adapters.push((AdapterInfo { name, path: dir, weight }, a));
    }
    let opts = EngineOptions {
        max_seqs: args.max_seqs,
        context,
        max_queue: args.max_queue,
        prefill_chunk: args.prefill_chunk,
        split_by_mix: args.split_by_mix,
    };
    let tok = Arc::new(session.tok);
    let (engine, worker) = Engine::start(session.model, tok.clone(), adapters, opts)?;
    let app = Arc::new(App {
        engine,
        tok,
        template: session.template,
        cfg,
        base_id: base.clone(),
        api_key: args.api_key.clone(),
        max_tokens: args.max_tokens,
        grace: Duration::from_secs_f64(args.grace_secs),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "serve: listening on http://{local} (model '{base}', {} slots × {context} positions{}{})",
            args.max_seqs,
            if args.split_by_mix { ", one mix a batch" } else { "" },
            if args.api_key.is_some() { ", API key required" } else { "" }
        );
        lorafuse::serve::http::serve(app, listener).await.context("serving")
    })?;
    worker.join().map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    eprintln!("serve: stopped");
    Ok(())
}
