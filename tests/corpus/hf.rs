//! Corrupt Hugging Face directories (the tiny chat model: config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json) and corrupt PEFT adapters (adapter_config.json,
//! adapter_model.safetensors), through the loaders and the commands that read them.

use std::path::Path;

use lorafuse::model::llama::{Llama, LoadOptions};
use lorafuse::model::source::ModelSource;
use serde_json::json;

use super::{Cases, SHORT, Sample, Tally, Variant, cli, cli_writing, forward_checked, in_process, json, load_model};
use crate::common::tiny::random_adapter;
use crate::common::{Rng, gpu, seed};

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap()
}

fn model_variants(hf: &Path, seed: u64) -> Vec<Variant> {
    let mut v = super::safetensors_file::variants(&read(hf, "model.safetensors"), "model.safetensors", false, seed);
    let cfg = read(hf, "config.json");
    v.extend(json::cuts(&cfg, "config.json", 200));
    v.extend(json::wrong_kinds("config.json"));
    v.extend(json::edits(
        &cfg,
        "config.json",
        &[
            ("hidden_size", json!(0)),
            ("hidden_size", json!(1u64 << 40)),
            ("hidden_size", json!(-48)),
            ("hidden_size", json!("48")),
            ("hidden_size", json!(null)),
            ("num_attention_heads", json!(0)),
            ("num_attention_heads", json!(2.5)),
            ("num_key_value_heads", json!(2)),
            ("num_key_value_heads", json!(0)),
            ("num_hidden_layers", json!(3)),
            ("num_hidden_layers", json!(1u64 << 33)),
            ("intermediate_size", json!(81)),
            ("head_dim", json!(8)),
            ("head_dim", json!(15)),
            ("vocab_size", json!(0)),
            ("vocab_size", json!(258)),
            ("rope_theta", json!(-5.0)),
            ("rope_theta", json!(0.0)),
            ("rms_norm_eps", json!(0.0)),
            ("rms_norm_eps", json!(-1e-5)),
            ("max_position_embeddings", json!(0)),
            ("tie_word_embeddings", json!("yes")),
            ("model_type", json!("gpt2")),
            ("hidden_act", json!("gelu")),
            ("rope_scaling", json!({"rope_type": "yarn", "factor": 4.0})),
            ("rope_scaling", json!({"rope_type": "llama3", "factor": -2.0})),
            ("rope_scaling", json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.0})),
        ],
    ));
    v.extend(json::spliced(
        &cfg,
        "config.json",
        &[("rope_theta 1e400", "\"rope_theta\":10000.0", "\"rope_theta\":1e400")],
    ));
    v.extend(json::flips(&cfg, "config.json", 60, seed));
    let tok = read(hf, "tokenizer.json");
    v.extend(json::cuts(&tok, "tokenizer.json", 80));
    v.extend(json::wrong_kinds("tokenizer.json"));
    v.extend(json::flips(&tok, "tokenizer.json", 30, seed));
    let tcfg = read(hf, "tokenizer_config.json");
    v.extend(json::cuts(&tcfg, "tokenizer_config.json", 40));
    v.extend(json::wrong_kinds("tokenizer_config.json"));
    v.extend(json::edits(
        &tcfg,
        "tokenizer_config.json",
        &[
            ("chat_template", json!(5)),
            ("chat_template", json!("{% if %}")),
            ("chat_template", json!("{% for m in messages %}{{ m['content'] }}")),
            ("eos_token", json!("<|not a token|>")),
            ("eos_token", json!(17)),
        ],
    ));
    v
}

#[test]
fn corrupt_hugging_face_models_are_refused_naming_the_file() {
    let mut cases = Cases::new("corpus-hf");
    let hf = super::chat_model(cases.root());
    load_model(&hf).expect("the uncorrupted model loads");
    super::fuzz_seed("safetensors_header", "tiny-chat-model.safetensors", &read(&hf, "model.safetensors"));
    let mut tally = Tally::new("Hugging Face model");
    let mut sample = Sample::every(25);
    for v in &model_variants(&hf, seed()) {
        let p = cases.materialize(v, &hf, "");
        tally.add(&v.name, "load", v.want, &p, in_process(|| load_model(&p)));
        if sample.take(v.want) {
            let ps = p.to_str().unwrap();
            tally.add(&v.name, "generate", v.want, &p, cli(&[&["generate", "--model", ps][..], &SHORT].concat()));
        }
        cases.clean(&p);
    }
    tally.finish();
}

fn adapter_variants(good: &Path, seed: u64) -> Vec<Variant> {
    let st = read(good, "adapter_model.safetensors");
    let mut v = super::safetensors_file::variants(&st, "adapter_model.safetensors", true, seed);
    let cfg = read(good, "adapter_config.json");
    v.extend(json::cuts(&cfg, "adapter_config.json", 200));
    v.extend(json::wrong_kinds("adapter_config.json"));
    v.extend(json::edits(
        &cfg,
        "adapter_config.json",
        &[
            ("r", json!(0)),
            ("r", json!(-4)),
            ("r", json!(8)),
            ("r", json!(1u64 << 40)),
            ("r", json!("4")),
            ("r", json!(null)),
            ("lora_alpha", json!("8")),
            ("lora_alpha", json!(null)),
            ("peft_type", json!("IA3")),
            ("target_modules", json!(["qkv"])),
            ("target_modules", json!("v_proj")),
            ("target_modules", json!(["v_proj"])),
            ("use_dora", json!(true)),
            ("bias", json!("all")),
            ("fan_in_fan_out", json!(true)),
            ("rank_pattern", json!({"q_proj": 2})),
            ("use_rslora", json!("yes")),
        ],
    ));
    v.extend(json::spliced(
        &cfg,
        "adapter_config.json",
        &[("lora_alpha 1e400", "\"lora_alpha\":8.0", "\"lora_alpha\":1e400")],
    ));
    v.extend(json::flips(&cfg, "adapter_config.json", 60, seed));
    v
}

#[test]
fn corrupt_peft_adapters_are_refused_naming_the_file() {
    let seed = seed();
    let mut cases = Cases::new("corpus-adapter");
    let hf = super::chat_model(cases.root());
    let spec = crate::common::tiny::Tiny { vocab: crate::common::tiny::CHAT_VOCAB, ..Default::default() };
    let good = cases.root().join("good-adapter");
    random_adapter(&mut Rng::new(seed), &spec, &["q_proj", "v_proj"], 4, 8.0, false).save(&good).unwrap();
    let mut model = Llama::load(gpu(), &ModelSource::open(&hf).unwrap(), LoadOptions::default()).unwrap();
    let mut attach = |dir: &Path| -> lorafuse::Result<()> {
        let a = lorafuse::lora::open(dir, model.cfg())?;
        model.attach(&[a], &[1.0])?;
        let r = forward_checked(&model);
        model.detach();
        r
    };
    attach(&good).expect("the uncorrupted adapter attaches");
    super::fuzz_seed("safetensors_header", "adapter_model.safetensors", &read(&good, "adapter_model.safetensors"));
    super::fuzz_seed("peft_config", "adapter_config.json", &read(&good, "adapter_config.json"));
    let mut tally = Tally::new("PEFT adapter");
    let mut sample = Sample::every(25);
    let (hs, gs) = (hf.to_str().unwrap(), good.to_str().unwrap());
    for v in &adapter_variants(&good, seed) {
        let p = cases.materialize(v, &good, "");
        tally.add(&v.name, "load", v.want, &p, in_process(|| attach(&p)));
        if sample.take(v.want) {
            let ps = p.to_str().unwrap();
            let out = p.with_extension("out");
            let os = out.to_str().unwrap();
            let generate = [&["generate", "--model", hs, "--adapter", ps][..], &SHORT].concat();
            tally.add(&v.name, "generate", v.want, &p, cli(&generate));
            tally.add(
                &v.name,
                "fuse",
                v.want,
                &p,
                cli_writing(&["fuse", "--adapter", ps, "--adapter", gs, "--out", os], &out),
            );
            let export = ["export", "gguf-lora", "--adapter", ps, "--model", hs, "--out", os];
            tally.add(&v.name, "export gguf-lora", v.want, &p, cli_writing(&export, &out));
        }
        cases.clean(&p);
    }
    tally.finish();
}
