//! `lorafuse fuse`: several PEFT adapters combined into one, as PEFT's add_weighted_adapter
//! computes it, or merged into the base model as a Hugging Face directory.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use lorafuse::lora::combine::SignMethod;
use lorafuse::lora::fuse::{FuseOptions, Method, fuse};
use lorafuse::lora::peft::Adapter;
use lorafuse::model::export::{export_hf, source_dtype};
use lorafuse::model::source::ModelSource;
use lorafuse::progress::Progress;

use super::model::parse_adapter;

/// Fuse LoRA adapters into one (PEFT's combination methods), or merge them into the base.
///
/// Combination methods as Hugging Face PEFT's `add_weighted_adapter` defines them (peft 0.21):
/// cat stacks the factors along the rank (r = Σ rᵢ), the exact weighted sum Σ wᵢ sᵢ BᵢAᵢ, the
/// paper's choice; linear, ties, dare_linear, dare_ties and magnitude_prune combine the A's and
/// the B's separately (√|wᵢsᵢ| each side) and need one rank; svd and the *_svd forms combine the
/// deltas sᵢBᵢAᵢ and keep the best rank-r approximation (r = --rank or the largest rᵢ). The
/// result has lora_alpha = r, so its scale is 1. One adapter alone merges linearly, as in PEFT.
///
/// The svd methods approximate Σ wᵢ sᵢ BᵢAᵢ, as PEFT 0.21 does; PEFT 0.20 and before weighted
/// each delta by wᵢsᵢ although the delta already holds sᵢ (Σ wᵢ sᵢ² BᵢAᵢ), which
/// --peft-svd-scale reproduces. PEFT copies use_rslora from the first adapter into the result,
/// which rescales it by √r; lorafuse writes use_rslora false. DARE's random masks come from --seed, so they differ
/// from PEFT's (torch's generator) in the draw, not in the distribution.
#[derive(Args)]
pub struct FuseArgs {
    /// An adapter and its weight (negative subtracts it), repeatable: DIR:0.6.
    #[arg(long = "adapter", value_name = "DIR[:WEIGHT]", required = true)]
    pub adapters: Vec<String>,
    /// cat, linear, svd, ties, ties_svd, dare_linear, dare_linear_svd, dare_ties, dare_ties_svd,
    /// magnitude_prune or magnitude_prune_svd.
    #[arg(long, default_value = "cat")]
    pub method: String,
    /// The share of values each adapter keeps (ties, dare and magnitude_prune methods).
    #[arg(long)]
    pub density: Option<f64>,
    /// How TIES elects each value's sign: the sign of the sum (total) or of the majority (frequency).
    #[arg(long, default_value = "total", value_parser = ["total", "frequency"])]
    pub majority_sign: String,
    /// The rank of an svd method's result (default: the largest input rank).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Seeds DARE's random pruning.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// svd methods: reproduce the weighting of PEFT 0.20 and before, Σ wᵢ sᵢ² BᵢAᵢ, instead of
    /// Σ wᵢ sᵢ BᵢAᵢ.
    #[arg(long)]
    pub peft_svd_scale: bool,
    /// Write the base model with the fused adapter merged in (a Hugging Face directory) instead
    /// of the adapter.
    #[arg(long, requires = "model")]
    pub merge_into_base: bool,
    /// The base model to merge into (a GGUF file or a Hugging Face directory).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// dtype of the merged weights (default: the base's; f16 for a GGUF).
    #[arg(long, value_parser = ["f32", "f16", "bf16"])]
    pub merged_dtype: Option<String>,
    /// Output folder: a PEFT adapter, or with --merge-into-base a Hugging Face model.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &FuseArgs) -> Result<()> {
    let method: Method = args.method.parse()?;
    let mut opts = FuseOptions::new(method);
    opts.density = args.density;
    opts.majority_sign = args.majority_sign.parse::<SignMethod>()?;
    opts.rank = args.rank;
    opts.seed = args.seed;
    opts.peft_svd_scale = args.peft_svd_scale;
    let specs: Vec<(PathBuf, f32)> = args.adapters.iter().map(|a| parse_adapter(a)).collect::<Result<_>>()?;
    let inputs: Vec<PathBuf> = specs.iter().map(|(d, _)| d.clone()).chain(args.model.clone()).collect();
    lorafuse::atomic::refuse_overlap(&args.out, &inputs)?;
    let adapters = specs.iter().map(|(d, _)| Adapter::load(d)).collect::<lorafuse::Result<Vec<_>>>()?;
    if args.model.is_some() && !args.merge_into_base {
        bail!("--model is the base for --merge-into-base; a fused adapter needs no model");
    }
    let inputs: Vec<(&Adapter, f64)> = adapters.iter().zip(&specs).map(|(a, (_, w))| (a, *w as f64)).collect();
    let started = std::time::Instant::now();
    let bar = std::sync::Mutex::new(Progress::new(0, &format!("fusing ({})", args.method), "modules", false));
    let fused = fuse(&inputs, &opts, &|done, total| {
        if let Ok(b) = bar.lock() {
            b.set_length(total);
            b.set_position(done);
        }
    })?;
    bar.lock().map(|b| b.finish()).ok();
    for ((d, w), a) in specs.iter().zip(&adapters) {
        eprintln!(
            "adapter: {} (r {}, alpha {}, scale {}) at weight {w}",
            d.display(),
            a.config.r,
            a.config.lora_alpha,
            a.scale()
        );
    }
    eprintln!(
        "fused with {} into r {} over {} modules ({}) in {:.1} s",
        args.method,
        fused.config.r,
        fused.factors.len(),
        fused.config.target_modules.join(", "),
        started.elapsed().as_secs_f64()
    );
    let report = serde_json::json!({
        "method": args.method,
        "inputs": specs.iter().zip(&adapters).map(|((d, w), a)| serde_json::json!({
            "dir": d, "weight": w, "r": a.config.r, "lora_alpha": a.config.lora_alpha, "use_rslora": a.config.use_rslora,
            "targets": a.config.target_modules,
        })).collect::<Vec<_>>(),
        "density": args.density, "majority_sign": args.majority_sign, "seed": args.seed,
        "peft_svd_scale": args.peft_svd_scale, "r": fused.config.r, "modules": fused.factors.len(),
    });
    if args.merge_into_base {
        let model = args.model.as_ref().expect("clap requires --model");
        let src = ModelSource::open(model)?;
        let dtype = match args.merged_dtype.as_deref() {
            Some("f32") => safetensors::Dtype::F32,
            Some("f16") => safetensors::Dtype::F16,
            Some("bf16") => safetensors::Dtype::BF16,
            _ => source_dtype(&src),
        };
        let bar = Progress::new(0, "merging into the base", "tensors", false);
        let out = export_hf(&src, &[(&fused, 1.0)], dtype, &args.out, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })?;
        bar.finish();
        let mut report = report;
        report["merged_into"] = serde_json::json!({ "model": model, "export": out });
        lorafuse::atomic::write_atomic(&args.out.join("fuse_report.json"), serde_json::to_string_pretty(&report)?)?;
        eprintln!(
            "merged model: {} ({} tensors, {} of them with the adapter merged, {} in {} shard(s), {:.0} MiB; {})",
            args.out.display(),
            out.tensors,
            out.merged,
            out.dtype,
            out.shards,
            out.bytes as f64 / (1 << 20) as f64,
            out.files.join(", ")
        );
    } else {
        fused.save(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
        lorafuse::atomic::write_atomic(&args.out.join("fuse_report.json"), serde_json::to_string_pretty(&report)?)?;
        eprintln!(
            "adapter: {} (PEFT format; try: lorafuse generate --adapter {} --prompt ...)",
            args.out.display(),
            args.out.display()
        );
    }
    Ok(())
}
