//! `lorafuse eval`: a model (with adapters at their weights) on harmful prompts, XSTest, MMLU
//! and held-out task conversations; responses recorded as they come, a killed run resumed by
//! rerunning it, report.json and report.md with every count and its 95% interval.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use lorafuse::eval::records::Records;
use lorafuse::eval::report::{ArmReport, arm_report, markdown};
use lorafuse::eval::run::{self, Arm, Evaluated, Judge, Sets};
use lorafuse::eval::{mmlu, prompts, xstest};
use lorafuse::gpu::Gpu;
use lorafuse::train::data;

use super::model::{ModelArgs, Session};

/// The prompt sets and how they are run, shared by eval, sweep and reproduce.
#[derive(Args, Clone, Debug)]
pub struct EvalFlags {
    /// Harmful prompts: AdvBench's CSV (goal,target), a headerless one-column CSV, a folder of
    /// them (HEx-PHI's category files), or JSONL with a "prompt" field.
    #[arg(long)]
    pub harmful: Option<PathBuf>,
    /// Only the first N harmful prompts (of each file).
    #[arg(long)]
    pub harmful_limit: Option<usize>,
    /// XSTest's CSV (id, prompt, type, label, focus, note).
    #[arg(long)]
    pub xstest: Option<PathBuf>,
    /// Only the first N XSTest prompts (100: the paper's subset, 50 safe and 50 unsafe).
    #[arg(long)]
    pub xstest_limit: Option<usize>,
    /// MMLU folder with dev/ and test/ CSVs (question, A, B, C, D, answer).
    #[arg(long)]
    pub mmlu: Option<PathBuf>,
    /// MMLU subjects, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub mmlu_subjects: Option<Vec<String>>,
    /// Only the first N test questions of each subject.
    #[arg(long)]
    pub mmlu_limit: Option<usize>,
    /// Few-shot examples from each subject's dev split.
    #[arg(long, default_value_t = 5)]
    pub mmlu_shots: usize,
    /// Held-out task conversations (the training formats): loss and perplexity of their
    /// assistant tokens.
    #[arg(long)]
    pub task: Option<PathBuf>,
    /// A model (GGUF or Hugging Face dir) that judges harmful responses with Qi et al.'s 1-5
    /// rubric and classifies XSTest responses.
    #[arg(long)]
    pub judge: Option<PathBuf>,
    /// Tokens a judge may write before its score.
    #[arg(long, default_value_t = 192)]
    pub judge_max_new_tokens: usize,
    /// A system message before every prompt (the paper evaluates with AOA's).
    #[arg(long)]
    pub system: Option<String>,
    /// Tokens generated per response (greedy).
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sequences generated together.
    #[arg(long, default_value_t = 16, value_parser = super::model::at_least_one)]
    pub batch_size: usize,
}

impl EvalFlags {
    pub fn any(&self) -> bool {
        self.harmful.is_some() || self.xstest.is_some() || self.mmlu.is_some() || self.task.is_some()
    }

    /// Reads the prompt sets (the task set needs the model's tokenizer and template).
    pub fn sets(&self, m: &Session) -> Result<Sets> {
        let mut sets = Sets::default();
        if let Some(p) = &self.harmful {
            sets.harmful = load_harmful(p, self.harmful_limit)?;
        }
        if let Some(p) = &self.xstest {
            sets.xstest = xstest::load(p)?;
            if let Some(l) = self.xstest_limit {
                sets.xstest.truncate(l);
            }
        }
        if let Some(p) = &self.mmlu {
            sets.mmlu = mmlu::load(p, self.mmlu_subjects.as_deref(), self.mmlu_limit)?;
        }
        if let Some(p) = &self.task {
            let template = m.template.as_ref().context("the task loss needs the model's chat template")?;
            let (examples, _) = data::load(p, false)?;
            for ex in &examples {
                let (e, _) = data::encode(ex, &m.tok, template, self.system.as_deref(), m.model.cfg().max_positions)?;
                if e.labelled() > 0 {
                    sets.task.push(e);
                }
            }
        }
        Ok(sets)
    }

    pub fn options(&self, quiet: bool) -> run::Options {
        run::Options {
            system: self.system.clone(),
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
            mmlu_shots: self.mmlu_shots,
            quiet,
        }
    }

    /// What decides the records of an evaluation: a rerun must agree on it to resume.
    pub fn fingerprint(&self, model: &ModelArgs, arms: &[Arm]) -> serde_json::Value {
        serde_json::json!({
            "model": model.model, "dtype": model.dtype, "adapters": model.adapters, "arms": arms,
            "system": self.system, "max_new_tokens": self.max_new_tokens, "judge": self.judge,
            "judge_max_new_tokens": self.judge_max_new_tokens, "mmlu_shots": self.mmlu_shots,
        })
    }
}

/// Harmful prompts of a file, or of every .csv/.jsonl of a folder (ids "file:row").
fn load_harmful(p: &Path, limit: Option<usize>) -> Result<Vec<prompts::HarmfulPrompt>> {
    let cut = |mut v: Vec<prompts::HarmfulPrompt>| {
        if let Some(l) = limit {
            v.truncate(l);
        }
        v
    };
    if !p.is_dir() {
        return Ok(cut(prompts::load(p)?));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(p)
        .with_context(|| format!("reading {}", p.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.extension().is_some_and(|e| e == "csv" || e == "jsonl"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .csv or .jsonl files of harmful prompts", p.display());
    }
    let mut all = Vec::new();
    for f in files {
        let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        all.extend(cut(prompts::load(&f)?).into_iter().map(|mut h| {
            h.id = format!("{stem}:{}", h.id);
            h
        }));
    }
    Ok(all)
}

/// Checks (or, on a first run, writes) DIR/eval_config.json.
pub fn check_fingerprint(dir: &Path, fp: &serde_json::Value) -> Result<()> {
    let path = dir.join("eval_config.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let old: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
            if &old != fp {
                bail!(
                    "{} holds an evaluation with other settings; rerun with the same ones to resume, or choose another --out.\n  there: {old}\n  now:   {fp}",
                    dir.display()
                );
            }
        }
        Err(_) => lorafuse::atomic::write_atomic(&path, serde_json::to_string_pretty(fp)?)?,
    }
    Ok(())
}

/// Runs `arms` over the sets of `flags` into DIR and returns the per-arm reports.
pub fn evaluate(m: &mut Session, flags: &EvalFlags, arms: &[Arm], out: &Path) -> Result<(Sets, Vec<ArmReport>)> {
    if !flags.any() {
        bail!("nothing to evaluate: give --harmful, --xstest, --mmlu or --task");
    }
    let sets = flags.sets(m)?;
    check_fingerprint(out, &flags.fingerprint(&m.args, arms))?;
    let mut records = Records::open(out)?;
    if records.resumed > 0 {
        eprintln!("resuming: {} records already in {}", records.resumed, out.join("responses.jsonl").display());
    }
    let judge_loaded = match &flags.judge {
        Some(j) => {
            let args = ModelArgs { model: j.clone(), dtype: m.args.dtype.clone(), adapters: Vec::new() };
            Some(args.load(&m.gpu).with_context(|| format!("loading the judge {}", j.display()))?)
        }
        None => None,
    };
    let judge_name = flags.judge.as_ref().map(|j| j.display().to_string());
    let judge = judge_loaded.as_ref().map(|l| Judge {
        name: judge_name.clone().unwrap_or_default(),
        model: &l.model,
        tok: &l.tok,
        template: l.template.as_ref(),
        max_new_tokens: flags.judge_max_new_tokens,
    });
    let evaluated = Evaluated { model: &mut m.model, tok: &m.tok, template: m.template.as_ref() };
    run::run(evaluated, arms, &sets, judge.as_ref(), &flags.options(false), &mut records)?;
    let reports = arms.iter().map(|a| arm_report(a, &sets, &records, judge_name.as_deref())).collect();
    Ok((sets, reports))
}

/// What was evaluated, for the report's head.
pub fn preamble(m: &Session, flags: &EvalFlags, sets: &Sets) -> Vec<String> {
    let mut p = vec![format!("Model: {} ({} weights) on {}.", m.args.model.display(), m.args.dtype, m.device())];
    for a in &m.args.adapters {
        p.push(format!("Adapter: {a}."));
    }
    p.push(format!(
        "System prompt: {}. Greedy generation, up to {} new tokens.",
        flags.system.as_deref().map_or("none (the model's default)".into(), |s| format!("{:?}", s.trim())),
        flags.max_new_tokens
    ));
    let mut sizes = Vec::new();
    if let Some(h) = &flags.harmful {
        sizes.push(format!("{} harmful prompts ({})", sets.harmful.len(), h.display()));
    }
    if let Some(x) = &flags.xstest {
        let safe = sets.xstest.iter().filter(|p| p.safe).count();
        sizes.push(format!("{} XSTest prompts, {safe} safe ({})", sets.xstest.len(), x.display()));
    }
    if !sets.mmlu.is_empty() {
        let q: usize = sets.mmlu.iter().map(|s| s.test.len()).sum();
        sizes.push(format!("{q} MMLU questions in {} subjects, {}-shot", sets.mmlu.len(), flags.mmlu_shots));
    }
    if let Some(t) = &flags.task {
        sizes.push(format!("{} task conversations ({})", sets.task.len(), t.display()));
    }
    p.push(format!("Sets: {}.", sizes.join("; ")));
    p.push(match &flags.judge {
        Some(j) => format!("Judge: {} (Qi et al.'s rubric; XSTest's three classes).", j.display()),
        None => "No judge: keyword metrics and XSTest's string match only.".into(),
    });
    p
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub flags: EvalFlags,
    /// Output folder: responses.jsonl, report.json, report.md (rerun with the same folder to
    /// resume a killed run).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(gpu: &Gpu, args: &EvalArgs) -> Result<()> {
    let mut m = args.model.load(gpu)?;
    let weights: Vec<f32> = args.model.adapter_specs()?.into_iter().map(|(_, w)| w).collect();
    let name = if weights.is_empty() { "model".to_string() } else { "with adapters".to_string() };
    let arms = [Arm { name, weights }];
    let (sets, reports) = evaluate(&mut m, &args.flags, &arms, &args.out)?;
    let pre = preamble(&m, &args.flags, &sets);
    write_report(&args.out, "lorafuse eval", &pre, &reports)?;
    Ok(())
}

/// report.json and report.md into DIR; the Markdown also to stdout.
pub fn write_report(dir: &Path, title: &str, preamble: &[String], reports: &[ArmReport]) -> Result<()> {
    let md = markdown(title, preamble, reports);
    let json = serde_json::json!({ "preamble": preamble, "arms": reports });
    lorafuse::atomic::write_atomic(&dir.join("report.json"), serde_json::to_string_pretty(&json)?)?;
    lorafuse::atomic::write_atomic(&dir.join("report.md"), &md)?;
    println!("{md}");
    eprintln!("report: {} (and report.json, responses.jsonl)", dir.join("report.md").display());
    Ok(())
}
