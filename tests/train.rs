//! The trainer end to end on a tiny random Llama: a few conversations are memorized; a run
//! interrupted and resumed twice writes the same adapter, bit for bit, as one uninterrupted run;
//! the saved PEFT adapter reloads and reproduces the trained model's logits (and the f64
//! reference's with it merged); a fresh adapter changes nothing; masked positions add nothing
//! to the gradients; bad checkpoints and mismatched resumes are clear errors.

mod common;

use std::path::Path;

use common::tiny::*;
use common::*;
use lorafuse::gpu::DType;
use lorafuse::lora::attach::Site;
use lorafuse::lora::peft::Adapter;
use lorafuse::model::batch::{Encoded, MASKED, TrainBatch};
use lorafuse::model::llama::{Llama, LoadOptions};
use lorafuse::model::loss::StepOptions;
use lorafuse::model::params::LoraGradients;
use lorafuse::model::reference::HostLlama;
use lorafuse::model::source::ModelSource;
use lorafuse::train::config::{TrainConfig, fresh_adapter};
use lorafuse::train::schedule::Schedule;
use lorafuse::train::trainer::{RunOptions, Summary, train};

const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn spec() -> Tiny {
    Tiny { heads: 4, kv_heads: 2, head_dim: 8, hidden: 32, inter: 44, layers: 2, vocab: 61, ..Tiny::default() }
}

/// A tiny random model in a Hugging Face directory.
fn tiny_model(name: &str, seed: u64) -> (std::path::PathBuf, ModelSource) {
    let spec = spec();
    let dir = temp_dir(name);
    write_hf(&dir, &spec, &random_weights(&spec, seed), safetensors::Dtype::F32);
    let src = ModelSource::open(&dir).unwrap();
    (dir, src)
}

fn load(src: &ModelSource) -> Llama {
    Llama::load(gpu(), src, LoadOptions { dtype: DType::F32, layout: None }).unwrap()
}

/// Conversations of random tokens: a "prompt" part without labels, then labelled "replies".
fn conversations(rng: &mut Rng, n: usize, vocab: usize) -> Vec<Encoded> {
    (0..n)
        .map(|_| {
            let len = 7 + rng.below(9);
            let tokens: Vec<u32> = (0..len).map(|_| rng.below(vocab) as u32).collect();
            let prompt = 2 + rng.below(3);
            let targets =
                (0..len).map(|i| if i + 1 >= prompt && i + 1 < len { tokens[i + 1] } else { MASKED }).collect();
            Encoded { tokens, targets }
        })
        .collect()
}

fn run(
    model: &mut Llama,
    tc: &TrainConfig,
    data: &[Encoded],
    out: &Path,
    resume: bool,
    stop: Option<usize>,
) -> Summary {
    let opts = RunOptions { out: out.to_path_buf(), resume, stop_after: stop, base_model: None, quiet: true };
    train(model, tc, data, &[], &opts).unwrap()
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn memorizes_a_few_conversations_and_the_adapter_reloads() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (dir, src) = tiny_model("train-memorize", seed);
    let data = conversations(&mut rng, 4, spec().vocab);
    let mut model = load(&src);
    let tc = TrainConfig {
        targets: ALL.iter().map(|s| s.to_string()).collect(),
        epochs: 60,
        lr: 1e-2,
        batch_size: 4,
        schedule: Schedule::Constant,
        dropout: 0.0,
        seed,
        ..TrainConfig::default()
    };
    let out = dir.join("run");
    let s = run(&mut model, &tc, &data, &out, false, None);
    let (first, last) = (s.epoch_loss[0], *s.epoch_loss.last().unwrap());
    // the random model is confidently wrong (several nats above ln 61 = 4.1); memorized is
    // near zero
    assert!(first > 3.0, "first epoch loss {first} (seed {seed})");
    assert!(last < 0.05, "loss after 60 epochs {last}, from {first}: not memorized (seed {seed})");
    assert!(s.finished && s.steps == 60, "{s:?}");
    for f in
        ["adapter_config.json", "adapter_model.safetensors", "train_log.jsonl", "loss.svg", "checkpoint.safetensors"]
    {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"event\":\"step\"")).count(), 60);

    // the saved adapter in a fresh model gives the trained model's logits, and the f64
    // reference with the adapter merged agrees
    let tokens = &data[1].tokens;
    let trained = logits(&model, tokens);
    let saved = Adapter::load(&out).unwrap();
    let mut again = load(&src);
    again.attach(std::slice::from_ref(&saved), &[1.0]).unwrap();
    assert_close("reloaded adapter", &logits(&again, tokens), &to_f64(&trained), 1e-6, seed);
    let mut host = HostLlama::load(&src).unwrap();
    host.merge(&saved, 1.0);
    assert_close("reference with the adapter merged", &trained, &host.logits(tokens).concat(), 1e-4, seed);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_equals_uninterrupted() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (dir, src) = tiny_model("train-resume", seed);
    let data = conversations(&mut rng, 7, spec().vocab);
    // dropout, accumulation, a partial last step and a decaying schedule all ride along
    let tc = TrainConfig {
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        epochs: 3,
        lr: 5e-3,
        batch_size: 2,
        grad_accum: 2,
        max_grad_norm: 0.5,
        weight_decay: 0.01,
        seed,
        ..TrainConfig::default()
    };
    let (whole, parts) = (dir.join("whole"), dir.join("parts"));
    // --resume before any checkpoint says so
    let opts = RunOptions { out: parts.clone(), resume: true, stop_after: None, base_model: None, quiet: true };
    let err = train(&mut load(&src), &tc, &data, &[], &opts).unwrap_err().to_string();
    assert!(err.contains("parts") && err.contains("no checkpoint here yet"), "{err}");
    let s = run(&mut load(&src), &tc, &data, &whole, false, None);
    assert_eq!(s.steps, 6);
    let s1 = run(&mut load(&src), &tc, &data, &parts, false, Some(1));
    assert!(!s1.finished && s1.epochs_done == 1);
    // a run cannot restart over a checkpoint by accident
    let opts = RunOptions { out: parts.clone(), resume: false, stop_after: None, base_model: None, quiet: true };
    let err = train(&mut load(&src), &tc, &data, &[], &opts).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    run(&mut load(&src), &tc, &data, &parts, true, Some(1));
    let s3 = run(&mut load(&src), &tc, &data, &parts, true, None);
    assert!(s3.finished && s3.steps == 6);
    assert_eq!(s3.epoch_loss, s.epoch_loss, "epoch losses (seed {seed})");
    // the totals count every invocation's steps; a rerun of the finished run trains nothing
    assert!(s.all_tokens > 0 && s3.all_tokens == s.all_tokens && s3.tokens < s.tokens);
    // a killed checkpoint write left its temp file; resuming the finished run removes it and
    // changes nothing else
    let stale = parts.join(".checkpoint.safetensors.tmp4194305");
    std::fs::write(&stale, vec![0u8; 1000]).unwrap();
    let files = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = (std::fs::read_dir(d).unwrap().flatten())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = files(&parts);
    let s4 = run(&mut load(&src), &tc, &data, &parts, true, None);
    assert!(s4.finished && s4.unchanged && s4.tokens == 0 && s4.all_tokens == s.all_tokens && s4.all_seconds > 0.0);
    assert_eq!(s4.epoch_loss, s.epoch_loss);
    assert!(!stale.exists(), "the temp file of a killed write stays");
    let after = files(&parts);
    assert_eq!(after, before.into_iter().filter(|(n, _)| !n.contains(".tmp")).collect::<Vec<_>>());
    for f in ["adapter_model.safetensors", "checkpoint.safetensors"] {
        assert!(
            std::fs::read(whole.join(f)).unwrap() == std::fs::read(parts.join(f)).unwrap(),
            "{f}: the resumed run differs from the uninterrupted one (seed {seed})"
        );
    }
    let steps = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("train_log.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"event\":\"step\""))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {} {} {}", v["step"], v["loss"], v["grad_norm"], v["lr"])
            })
            .collect()
    };
    assert_eq!(steps(&whole), steps(&parts));

    // another config, or other data, is refused
    let other = TrainConfig { lr: 1e-3, ..tc.clone() };
    let opts = RunOptions { out: parts.clone(), resume: true, stop_after: None, base_model: None, quiet: true };
    let err = train(&mut load(&src), &other, &data, &[], &opts).unwrap_err().to_string();
    assert!(err.contains("another config"), "{err}");
    let err = train(&mut load(&src), &tc, &data[1..], &[], &opts).unwrap_err().to_string();
    assert!(err.contains("other data"), "{err}");
    // a truncated checkpoint is an error naming the file
    let ck = parts.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    let err = train(&mut load(&src), &tc, &data, &[], &opts).unwrap_err().to_string();
    assert!(err.contains("checkpoint.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fresh_adapter_is_peft_init_and_changes_nothing() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (dir, src) = tiny_model("train-fresh", seed);
    let mut model = load(&src);
    let tokens: Vec<u32> = (0..11).map(|_| rng.below(spec().vocab) as u32).collect();
    let base = logits(&model, &tokens);
    let tc = TrainConfig { targets: ALL.iter().map(|s| s.to_string()).collect(), seed, ..TrainConfig::default() };
    let fresh = fresh_adapter(model.cfg(), &tc, None).unwrap();
    for ((layer, t), f) in &fresh.factors {
        assert!(f.b.iter().all(|&b| b == 0.0), "layer {layer} {t}: B is not zero");
        // Kaiming-uniform with a = √5: U(-1/√in, 1/√in); the spread shows it is not constant
        let bound = 1.0 / (f.inp as f32).sqrt();
        assert!(f.a.iter().all(|a| a.abs() <= bound), "layer {layer} {t}: A outside ±{bound}");
        let max = f.a.iter().fold(0.0f32, |m, a| m.max(a.abs()));
        assert!(max > 0.8 * bound, "layer {layer} {t}: max |A| {max} of bound {bound}");
    }
    model.attach(&[fresh], &[1.0]).unwrap();
    assert_close("fresh adapter", &logits(&model, &tokens), &to_f64(&base), 1e-6, seed);
    std::fs::remove_dir_all(&dir).ok();
}

/// Sums the squares of every gradient of the attached adapter, and returns them all, in order.
fn read_grads(model: &Llama, grads: &LoraGradients) -> Vec<f32> {
    let mut all = Vec::new();
    for layer in 0..model.cfg().layers {
        for site in Site::ALL {
            if let Some((da, db)) = grads.get(layer, site) {
                all.extend(da.read_f32(model.gpu()).unwrap());
                all.extend(db.read_f32(model.gpu()).unwrap());
            }
        }
    }
    all
}

#[test]
fn masked_positions_add_no_gradient() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (dir, src) = tiny_model("train-mask", seed);
    let mut model = load(&src);
    let tc = TrainConfig {
        targets: vec!["q_proj".into(), "v_proj".into(), "o_proj".into()],
        seed,
        ..TrainConfig::default()
    };
    let mut ad = fresh_adapter(model.cfg(), &tc, None).unwrap();
    for f in ad.factors.values_mut() {
        f.b = rng.vec(f.b.len()).iter().map(|x| x * 0.1).collect();
    }
    model.attach(&[ad], &[1.0]).unwrap();
    let grads = LoraGradients::new(&model).unwrap();
    let vocab = spec().vocab;
    let tokens: Vec<u32> = (0..12).map(|_| rng.below(vocab) as u32).collect();
    let labels: Vec<u32> = (0..12).map(|_| rng.below(vocab) as u32).collect();
    // "user" positions 0..5, "assistant" 5..12
    let pick = |keep: &dyn Fn(usize) -> bool| -> Vec<u32> {
        (0..12).map(|i| if keep(i) { labels[i] } else { MASKED }).collect()
    };
    let grad_of = |targets: Vec<u32>| -> (f64, Vec<f32>) {
        let mut b = TrainBatch::default();
        b.push(&tokens, &targets);
        let so = StepOptions { loss_scale: 1.0, accumulate: false, dropout: None };
        let loss = model.forward_backward(&b, &grads, &so).unwrap();
        (loss, read_grads(&model, &grads))
    };
    // nothing labelled: zero loss, every gradient exactly zero
    let (loss, g0) = grad_of(vec![MASKED; 12]);
    assert_eq!(loss, 0.0);
    assert!(g0.iter().all(|&g| g == 0.0), "a fully masked batch left a non-zero gradient");
    // the gradient is additive over labelled positions: with the "user" positions masked it is
    // exactly what the labelled ones give, and the user positions' own part is not in it
    let (_, g_asst) = grad_of(pick(&|i| i >= 5));
    let (_, g_user) = grad_of(pick(&|i| i < 5));
    let (_, g_all) = grad_of(pick(&|_| true));
    let sum: Vec<f64> = g_asst.iter().zip(&g_user).map(|(a, u)| *a as f64 + *u as f64).collect();
    assert_close("gradient of all = assistant + user", &g_all, &sum, 1e-4, seed);
    let diff = rel_err(&g_all, &to_f64(&g_asst));
    assert!(diff > 1e-2, "labelling the user positions changed the gradient by only {diff:.2e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `lorafuse train` on the default model: two short conversations, one step; the adapter loads
/// in `generate --adapter`; bad data and options are errors that name the problem.
#[test]
fn cli_train_writes_a_peft_adapter() {
    let dir = temp_dir("cli-train");
    let data = dir.join("chat.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four."}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = dir.join("adapter");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let run = run_cli(&["train", "--data", d, "--out", o, "--epochs", "1", "--batch-size", "2", "--lr", "1e-2"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("trained 1 epochs (1 steps)"), "{stderr}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()), (Some(8), Some(32.0)));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_summary.json")).unwrap()).unwrap();
    assert_eq!(summary["summary"]["steps"], 1);
    assert!(summary["summary"]["epoch_loss"][0].as_f64().is_some_and(f64::is_finite), "{summary}");
    let generated = run_cli(&["generate", "--adapter", o, "--prompt", "Say hi.", "--max-new-tokens", "3"]);
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    // a finished run resumed trains nothing more and leaves its summary as it was; one restarted
    // over it is refused
    let args = ["train", "--data", d, "--out", o, "--epochs", "1", "--batch-size", "2", "--lr", "1e-2"];
    let summary_before = std::fs::read(out.join("train_summary.json")).unwrap();
    let again = run_cli(&[&args[..], &["--resume"]].concat());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success() && stderr.contains("--resume changed nothing"), "{stderr}");
    assert_eq!(std::fs::read(out.join("train_summary.json")).unwrap(), summary_before);
    let again = run_cli(&args);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--resume"));

    let bad = run_cli(&["train", "--data", d, "--out", o, "--targets", "q_proj,lm_head"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("lm_head"), "{err}");
    std::fs::write(&data, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n{not json\n").unwrap();
    let bad = run_cli(&["train", "--data", d, "--out", dir.join("bad").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("chat.jsonl") && err.contains("line 1"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--mix-data F --mix-fraction f`: a seeded draw from F joins the training set as f of it (the
/// paper's 3%-safety baseline), recorded in train_summary.json; a share the file cannot fill is
/// an error naming it.
#[test]
fn cli_train_mixes_in_a_share_of_another_set() {
    let dir = temp_dir("cli-train-mix");
    let line = |q: &str, a: &str| {
        format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{q}\"}}, {{\"role\": \"assistant\", \"content\": \"{a}\"}}]}}\n"
        )
    };
    let task: String = (0..32).map(|i| line(&format!("Count to {i}."), "Done.")).collect();
    let safety: String = (0..10).map(|i| line(&format!("Harmful request {i}."), "I cannot help with that.")).collect();
    let (data, mix, out) = (dir.join("task.jsonl"), dir.join("safety.jsonl"), dir.join("adapter"));
    std::fs::write(&data, task).unwrap();
    std::fs::write(&mix, safety).unwrap();
    write_chat_model(&dir.join("model"), seed());
    let model = dir.join("model").display().to_string();
    let (d, m, o) = (data.to_str().unwrap(), mix.to_str().unwrap(), out.to_str().unwrap());
    let args =
        ["train", "--data", d, "--out", o, "--epochs", "1", "--batch-size", "12", "--mix-data", m, "--model", &model];
    let run = run_cli(&[&args[..], &["--mix-fraction", "0.1"]].concat());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_summary.json")).unwrap()).unwrap();
    // round(0.1 · 32 / 0.9) = 4 of the 10
    let drawn = summary["data"]["mixed_in"]["drawn"].as_array().unwrap();
    assert_eq!((drawn.len(), summary["data"]["train"].as_u64()), (4, Some(36)), "{summary}");
    assert!(stderr.contains("mix: 4 of the 10"), "{stderr}");
    let o2 = dir.join("adapter2");
    let run = run_cli(&[&args[..4], &[o2.to_str().unwrap()], &args[5..], &["--mix-fraction", "0.9"]].concat());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("safety.jsonl") && err.contains("needs 288"), "{err}");
    assert!(!o2.exists(), "a refused run wrote its folder");
    let run = run_cli(&["train", "--data", d, "--out", o, "--mix-data", m, "--model", &model]);
    assert!(!run.status.success(), "--mix-data without --mix-fraction ran");
    std::fs::remove_dir_all(&dir).ok();
}
