//! Generation on the default model: the golden greedy answer through the batched generator,
//! batches equal single prompts (greedy and sampled), stop strings and token budgets; the CLI
//! end to end.

mod common;

use common::{default_model, golden, golden_ids, gpu, run_cli};
use lorafuse::gpu::DType;
use lorafuse::model::chat::Message;
use lorafuse::model::generate::{Finish, GenerateOptions, generate, prompt_ids};
use lorafuse::model::llama::{Llama, LoadOptions};
use lorafuse::model::sampling::SamplingOptions;
use lorafuse::model::source::ModelSource;
use lorafuse::model::tokenizer::Tokenizer;

fn load(dtype: DType) -> (Llama, Tokenizer, ModelSource) {
    let src = ModelSource::open(&default_model()).unwrap();
    let model = Llama::load(gpu(), &src, LoadOptions { dtype, layout: None }).unwrap();
    let tok = src.tokenizer().unwrap();
    (model, tok, src)
}

fn ids_for(tok: &Tokenizer, src: &ModelSource, user: &str) -> Vec<u32> {
    let t = src.chat_template().unwrap();
    prompt_ids(tok, t.as_ref(), &[Message::new("user", user)], false).unwrap()
}

#[test]
fn greedy_generation_reproduces_the_golden_answer() {
    let g = golden();
    let (model, tok, src) = load(DType::F32);
    let prompt = ids_for(&tok, &src, "What is the capital of France?");
    assert_eq!(prompt, golden_ids(&g, "prompt_ids"));
    let (out, stats) = generate(&model, &tok, &[prompt], &GenerateOptions::default(), None, |_, _| {}).unwrap();
    assert_eq!(out[0].ids, golden_ids(&g, "greedy_ids"));
    assert_eq!(out[0].text, "The capital of France is Paris.");
    assert_eq!(out[0].finish, Finish::Eos);
    assert_eq!(stats.prefill_tokens, 37);
}

#[test]
fn batches_equal_single_prompts() {
    let (model, tok, src) = load(DType::F16);
    let users = ["Name three colors.", "What is 2+2?", "Write one sentence about the sea, please, in plain words."];
    let prompts: Vec<Vec<u32>> = users.iter().map(|u| ids_for(&tok, &src, u)).collect();
    assert!(prompts.iter().map(Vec::len).collect::<std::collections::BTreeSet<_>>().len() == 3, "lengths differ");
    for sampling in [SamplingOptions::default(), SamplingOptions { temperature: 0.9, top_k: 50, top_p: 0.95, seed: 11 }]
    {
        let opts = GenerateOptions { max_new_tokens: 12, sampling, ..GenerateOptions::default() };
        let (together, _) = generate(&model, &tok, &prompts, &opts, None, |_, _| {}).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let (alone, _) = generate(&model, &tok, std::slice::from_ref(p), &opts, None, |_, _| {}).unwrap();
            assert_eq!(together[i].ids, alone[0].ids, "prompt {i} with {sampling:?}");
        }
    }
}

#[test]
fn stop_strings_and_budgets_end_generation() {
    let (model, tok, src) = load(DType::F16);
    let prompt = ids_for(&tok, &src, "What is the capital of France?");
    let opts = GenerateOptions { stop: vec![" Paris".into()], ..Default::default() };
    let mut streamed = String::new();
    let (out, _) =
        generate(&model, &tok, std::slice::from_ref(&prompt), &opts, None, |_, s| streamed.push_str(s)).unwrap();
    assert_eq!(out[0].finish, Finish::Stop);
    assert_eq!(out[0].text, "The capital of France is");
    assert!(streamed.starts_with("The capital"), "{streamed}");
    let opts = GenerateOptions { max_new_tokens: 3, ..Default::default() };
    let (out, _) = generate(&model, &tok, &[prompt], &opts, None, |_, _| {}).unwrap();
    assert_eq!((out[0].ids.len(), out[0].finish), (3, Finish::Length));
    let long = vec![100u32; 9000];
    let err = generate(&model, &tok, &[long], &GenerateOptions::default(), None, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("over the model's context"), "{err}");
}

#[test]
fn cli_generate_answers_and_rejects_bad_prompt_files() {
    let out = run_cli(&["generate", "--prompt", "What is the capital of France?", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["text"], "The capital of France is Paris.");
    assert_eq!(line["finish_reason"], "eos");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prefill:") && stderr.contains("tokens/s"), "{stderr}");

    let dir = common::tiny::temp_dir("prompts");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"ok\"}\n\n{\"prompt\": 3}\n").unwrap();
    let out = run_cli(&["generate", "--prompts", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3", bad.display())), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--adapter DIR:WEIGHT` end to end: a fresh adapter (B = 0, as training starts) on q_proj and
/// v_proj of every layer leaves the answer as it was.
#[test]
fn cli_generate_with_a_fresh_adapter() {
    let dir = common::tiny::temp_dir("fresh-adapter");
    common::smollm_adapter(0.0).save(&dir).unwrap();
    let spec = format!("{}:0.5", dir.display());
    let out = run_cli(&["generate", "--prompt", "What is the capital of France?", "--json", "--adapter", &spec]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["text"], "The capital of France is Paris.");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at weight 0.5"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Prompts of one batch with their own adapter weights ("adapter_weights" in the prompts file)
/// generate what each gives alone with --adapter at that weight; a weight list of the wrong
/// length is an error naming the line.
#[test]
fn cli_generate_per_prompt_adapter_mixes() {
    let dir = common::tiny::temp_dir("mix-adapter");
    common::smollm_adapter(0.05).save(&dir.join("ad")).unwrap();
    let ad = dir.join("ad").display().to_string();
    let q = "Name a colour.";
    let file = dir.join("prompts.jsonl");
    std::fs::write(
        &file,
        format!(
            "{{\"prompt\": \"{q}\", \"adapter_weights\": [0.0]}}\n{{\"prompt\": \"{q}\"}}\n{{\"prompt\": \"{q}\", \"adapter_weights\": [1.5]}}\n"
        ),
    )
    .unwrap();
    let texts = |args: &[&str]| -> Vec<String> {
        let out = run_cli(&[&["generate", "--json", "--max-new-tokens", "12"], args].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string())
            .collect()
    };
    let f = file.display().to_string();
    let together = texts(&["--prompts", &f, "--adapter", &format!("{ad}:0.7")]);
    for (i, w) in ["0", "0.7", "1.5"].iter().enumerate() {
        let alone = texts(&["--prompt", q, "--adapter", &format!("{ad}:{w}")]);
        assert_eq!(together[i], alone[0], "prompt {i} at weight {w}");
    }
    assert_ne!(together[0], together[2], "the adapter at 1.5 changes nothing: the test cannot tell mixes apart");
    std::fs::write(&file, format!("{{\"prompt\": \"{q}\", \"adapter_weights\": [0.1, 0.2]}}\n")).unwrap();
    let out = run_cli(&["generate", "--prompts", &f, "--adapter", &ad]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("prompts.jsonl:1") && err.contains("2 weights for 1"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A first `generate` on a fresh tune cache tunes what its warm-up met behind a few lines (the
/// weight layout, one progress line, a summary; never a line a shape), and a second run finds
/// every choice cached and tunes nothing.
#[test]
fn a_first_run_tunes_once_behind_one_progress_line() {
    let dir = std::env::temp_dir().join(format!("lorafuse-first-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = || {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lorafuse"))
            .args(["generate", "--prompt", "Name three colours.", "--max-new-tokens", "3"])
            .env("LORAFUSE_MODEL", default_model())
            .env("LORAFUSE_CACHE_DIR", &dir)
            .env_remove("LORAFUSE_TUNE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stderr).to_string(), started.elapsed().as_secs())
    };
    let (first, secs) = run();
    let lines: Vec<&str> = first.lines().filter(|l| l.contains("tuning") || l.contains("tuned")).collect();
    let shapes: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("tuned ")?.split(" kernel shapes").next()?.parse().ok())
        .unwrap_or_else(|| panic!("no tuning summary in:\n{first}"));
    assert!(shapes >= 5, "only {shapes} shapes tuned: the warm-up missed the model's products");
    // the layout line, the summary, and a progress line at the end and every 30 s
    assert!(lines.len() as u64 <= 3 + secs / 30, "{} tuning lines for {shapes} shapes:\n{first}", lines.len());
    assert!(dir.join("tune.json").exists());
    let (second, _) = run();
    assert!(!second.contains("tuning") && !second.contains("tuned"), "the second run tuned again:\n{second}");
    std::fs::remove_dir_all(&dir).ok();
}

/// On a tiny chat model: a forward whose logits overflow stops generate and logits with an
/// error naming the model, the adapter and the place, not empty text; bad flags and prompt
/// files are refused with what is wrong (context length, batch size, blank file, sampling
/// flags, an adapter weight that is not a number).
#[test]
fn cli_refuses_non_finite_logits_and_bad_flags_on_a_tiny_model() {
    use common::tiny::{random_adapter, temp_dir, write_chat_model};
    let seed = common::seed();
    let dir = temp_dir("gen-refusals");
    let model = dir.join("model");
    let spec = write_chat_model(&model, seed);
    let mut huge = random_adapter(&mut common::Rng::new(seed), &spec, &["v_proj"], 4, 8.0, false);
    // finite factors whose product overflows f32
    huge.factors.values_mut().for_each(|f| f.b.iter_mut().for_each(|x| *x = 3e38));
    let ad = dir.join("huge");
    huge.save(&ad).unwrap();
    let (m, a) = (model.to_str().unwrap(), ad.to_str().unwrap());
    let run = |args: &[&str]| {
        let o = run_cli(args);
        (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (ok, e) = run(&["generate", "--model", m, "--prompt", "hi", "--adapter", a, "--max-new-tokens", "2"]);
    assert!(!ok && e.contains("non-finite logit") && e.contains(m) && e.contains(a) && e.contains("prefill"), "{e}");
    let out = dir.join("l.st");
    let (ok, e) = run(&["logits", "--model", m, "--tokens", "1,2,3", "--adapter", a, "--out", out.to_str().unwrap()]);
    assert!(!ok && e.contains("non-finite logit") && e.contains("position") && !out.exists(), "{e}");

    let (ok, e) = run(&["generate", "--model", m, "--prompt", "hi", "--temperature", "-1"]);
    assert!(!ok && e.contains("--temperature must be"), "{e}");
    let (ok, e) = run(&["generate", "--model", m, "--prompt", "hi", "--temperature", "nan"]);
    assert!(!ok && e.contains("--temperature must be"), "{e}");
    let (ok, e) = run(&["generate", "--model", m, "--prompt", "hi", "--adapter", &format!("{a}:abc")]);
    assert!(!ok && e.contains("'abc' is not a number"), "{e}");
    let (ok, e) = run(&["generate", "--model", m, "--prompt", "hi", "--adapter", &format!("{a}:1e400")]);
    assert!(!ok && e.contains("finite number"), "{e}");
    let blank = dir.join("blank.jsonl");
    std::fs::write(&blank, "\n  \n").unwrap();
    let (ok, e) = run(&["generate", "--model", m, "--prompts", blank.to_str().unwrap()]);
    assert!(!ok && e.contains("blank.jsonl") && e.contains("no prompts"), "{e}");
    std::fs::write(&blank, "{\"prompt\": \"hi\"}\n").unwrap();
    for cmd in [&["generate", "--prompts", blank.to_str().unwrap()][..], &["eval", "--out", "unused"][..]] {
        let (ok, e) = run(&[cmd, &["--model", m, "--batch-size", "0"]].concat());
        assert!(!ok && e.contains("--batch-size") && e.contains("at least 1"), "{cmd:?}: {e}");
    }
    // a context shorter than the prompt names its key and file
    let cfg_path = model.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["max_position_embeddings"] = 16.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (ok, e) = run(&["generate", "--model", m, "--prompt", "a prompt longer than sixteen tokens"]);
    assert!(
        !ok && e.contains("context of 16") && e.contains("max_position_embeddings in") && e.contains("config.json"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// What a sequence streams, piece by piece, is its completion's text: for token runs of
/// SmolLM2's vocabulary (multi-byte characters split across tokens included) and stop strings
/// cut from the text itself, so that they do occur, across token boundaries. The text never
/// holds a stop string, and a piece never shows text a stop later takes back. Host only: each
/// token is forced by one-hot logits.
#[test]
fn streamed_pieces_add_up_to_the_completion() {
    use lorafuse::model::generate::Sequence;
    let tok = ModelSource::open(&default_model()).unwrap().tokenizer().unwrap();
    let vocab = tok.vocab_size();
    let words = "Héllo wörld, the cat sat on the mat; 北京 is a city. Stop here: END of text.";
    let base = tok.encode(words, false).unwrap();
    let mut rng = common::Rng::new(common::seed());
    for case in 0..200 {
        // a run of the sentence's tokens from a random start, with a random token now and then
        let start = rng.below(base.len());
        let ids: Vec<u32> = (0..24)
            .map(|i| if rng.below(6) == 0 { rng.below(vocab) as u32 } else { base[(start + i) % base.len()] })
            .filter(|t| !tok.eos.contains(t))
            .collect();
        let text = tok.decode(&ids, true).unwrap();
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let stop = if chars.len() > 4 && case % 4 != 0 {
            let a = rng.below(chars.len() - 3);
            let b = (a + 1 + rng.below(3)).min(chars.len());
            let end = chars.get(b).map_or(text.len(), |c| c.0);
            vec![text[chars[a].0..end].to_string()]
        } else {
            Vec::new()
        };
        let opts = GenerateOptions { max_new_tokens: ids.len(), stop: stop.clone(), ..GenerateOptions::default() };
        let mut seq = Sequence::new(&[1, 2, 3], 0);
        let mut streamed = String::new();
        let mut done = None;
        for &t in &ids {
            let mut logits = vec![0.0f32; vocab];
            logits[t as usize] = 1.0;
            let step = seq.step(&logits, &tok, &opts).unwrap();
            streamed.push_str(&step.piece);
            if let Some(s) = stop.first() {
                assert!(!streamed.contains(s.as_str()), "case {case}: streamed {streamed:?} holds the stop {s:?}");
            }
            if let Some(c) = step.done {
                done = Some(c);
                break;
            }
        }
        let c = done.unwrap_or_else(|| panic!("case {case}: no completion after the budget"));
        assert_eq!(streamed, c.text, "case {case}: stop {stop:?}, ids {ids:?}");
        if !stop.is_empty() {
            assert_eq!(c.finish, Finish::Stop, "case {case}: the stop {stop:?} is in {text:?}");
            assert!(text.starts_with(&c.text), "case {case}");
        }
    }
}
