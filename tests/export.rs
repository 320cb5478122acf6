//! `lorafuse export gguf-lora`: a PEFT adapter as llama.cpp's LoRA GGUF, read back field by field
//! (metadata types, tensor names, GGUF dims, q/k rows in llama.cpp's order against the tests' own
//! permutation), and the bad inputs it must refuse without writing anything. llama.cpp itself
//! reads the files in scripts/gguf_interop.py (.ci/run).

mod common;

use std::path::Path;

use common::tiny::*;
use common::*;
use lorafuse::lora::gguf::{gguf_lora, load_gguf_lora};
use lorafuse::model::gguf::{Gguf, Value};
use lorafuse::model::quant::GgmlType;
use lorafuse::model::source::ModelSource;

const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn gguf_target(t: &str) -> &'static str {
    match t {
        "q_proj" => "attn_q",
        "k_proj" => "attn_k",
        "v_proj" => "attn_v",
        "o_proj" => "attn_output",
        "gate_proj" => "ffn_gate",
        "up_proj" => "ffn_up",
        _ => "ffn_down",
    }
}

/// `lorafuse export gguf-lora --adapter DIR --model M --out F`.
fn export_lora(adapter: &Path, model: &Path, out: &Path) -> std::process::Output {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    run_cli(&["export", "gguf-lora", "--adapter", &path(adapter), "--model", &path(model), "--out", &path(out)])
}

#[test]
fn adapters_export_as_llama_cpp_lora_gguf() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    for (qwen2, rslora) in [(false, false), (false, true), (true, false)] {
        let spec = Tiny { qwen2, tie: !qwen2, ..Tiny::default() };
        let w = random_weights(&spec, seed);
        let dir = temp_dir("export-lora");
        let model = dir.join("base.gguf");
        write_gguf_model(&model, &spec, &w, false);
        let mut adapter = random_adapter(&mut rng, &spec, &ALL, 4, 8.0, false);
        adapter.config.use_rslora = rslora;
        let adapter_dir = dir.join("adapter");
        adapter.save(&adapter_dir).unwrap();
        let out = dir.join("lora.gguf");
        let run = export_lora(&adapter_dir, &model, &out);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

        let g = Gguf::open(&out).unwrap();
        let arch = if qwen2 { "qwen2" } else { "llama" };
        assert_eq!(g.str("general.architecture").unwrap(), arch);
        assert_eq!(g.str("general.type").unwrap(), "adapter");
        assert_eq!(g.str("adapter.type").unwrap(), "lora");
        // llama.cpp scales by alpha / r: alpha carries PEFT's scale × r, as F32
        let want_alpha = if rslora { 8.0 / 2.0 * 4.0 } else { 8.0 };
        assert_eq!(g.get("adapter.lora.alpha"), Some(&Value::F32(want_alpha)), "rslora {rslora}");
        assert_eq!(g.tensors.len(), 2 * ALL.len() * spec.layers);
        for ((layer, target), f) in &adapter.factors {
            let base = format!("blk.{layer}.{}.weight", gguf_target(target));
            let a = g.tensor(&format!("{base}.lora_a")).unwrap();
            let b = g.tensor(&format!("{base}.lora_b")).unwrap();
            assert_eq!((a.ty, b.ty), (GgmlType::F32, GgmlType::F32));
            assert_eq!(a.dims, vec![f.inp as u64, 4], "{base}.lora_a dims (ne order: in, r)");
            assert_eq!(b.dims, vec![4, f.out as u64], "{base}.lora_b dims (ne order: r, out)");
            assert_eq!(g.tensor_f32(&a.name).unwrap().1, f.a);
            let got_b = g.tensor_f32(&b.name).unwrap().1;
            let want_b = match (qwen2, target.as_str()) {
                (false, "q_proj") => permute_rows(&f.b, f.out, 4, spec.heads),
                (false, "k_proj") => permute_rows(&f.b, f.out, 4, spec.kv_heads),
                _ => f.b.clone(),
            };
            assert_eq!(got_b, want_b, "{base}.lora_b (qwen2 {qwen2})");
        }
        // and lorafuse reads it back as the adapter it came from
        let back = load_gguf_lora(&out, &ModelSource::open(&model).unwrap().config().unwrap()).unwrap();
        assert_eq!(back.factors, adapter.factors, "qwen2 {qwen2} rslora {rslora}");
        assert_eq!((back.config.r, back.scale()), (4, adapter.scale()));
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn bad_exports_are_refused_and_write_nothing() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let spec = Tiny::default();
    let dir = temp_dir("export-bad");
    let model = dir.join("base.gguf");
    write_gguf_model(&model, &spec, &random_weights(&spec, seed), false);
    let src = ModelSource::open(&model).unwrap();
    let out = dir.join("lora.gguf");
    let export = |adapter_dir: &std::path::Path, out: &std::path::Path| {
        let o = export_lora(adapter_dir, &model, out);
        (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())
    };

    // an adapter for a wider model: the shapes differ
    let wide = Tiny { hidden: spec.hidden * 2, ..Tiny::default() };
    let wide_dir = dir.join("wide");
    random_adapter(&mut rng, &wide, &["q_proj"], 4, 8.0, false).save(&wide_dir).unwrap();
    let (ok, err) = export(&wide_dir, &out);
    assert!(!ok && err.contains("the base model") && err.contains("q_proj"), "{err}");
    assert!(!out.exists());

    // a deeper one: layers the base lacks
    let deep = Tiny { layers: spec.layers + 1, ..Tiny::default() };
    let mut a = random_adapter(&mut rng, &deep, &["v_proj"], 4, 8.0, false);
    a.factors.retain(|(l, _), _| *l == spec.layers);
    let err = gguf_lora(&a, &src).unwrap_err().to_string();
    assert!(
        err.contains(&format!("has layer {}", spec.layers)) && err.contains(&format!("has {} layers", spec.layers))
    );

    // NaN factors and a zero scale
    let mut a = random_adapter(&mut rng, &spec, &["o_proj"], 4, 8.0, false);
    a.factors.values_mut().next().unwrap().b[3] = f32::NAN;
    assert!(gguf_lora(&a, &src).unwrap_err().to_string().contains("non-finite"));
    let a = random_adapter(&mut rng, &spec, &["o_proj"], 4, 0.0, false);
    assert!(gguf_lora(&a, &src).unwrap_err().to_string().contains("alpha 0"));

    // the output may not be an input, nor a folder
    let good = dir.join("good");
    random_adapter(&mut rng, &spec, &["q_proj"], 4, 8.0, false).save(&good).unwrap();
    let before = std::fs::read(&model).unwrap();
    let (ok, err) = export(&good, &model);
    assert!(!ok && err.contains("is an input"), "{err}");
    assert_eq!(std::fs::read(&model).unwrap(), before, "the base model was touched");
    let (ok, err) = export(&good, &dir);
    assert!(!ok && err.contains("is a folder"), "{err}");
    // and a missing adapter names its file
    let (ok, err) = export(&dir.join("nope"), &out);
    assert!(!ok && err.contains("adapter_config.json"), "{err}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// `--adapter F.gguf` (a lorafuse-exported LoRA GGUF) gives the logits `--adapter DIR` gives.
#[test]
fn a_lora_gguf_runs_as_its_peft_adapter() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let dir = temp_dir("export-run");
    let model = dir.join("model");
    let spec = write_chat_model(&model, seed);
    let adapter_dir = dir.join("adapter");
    random_adapter(&mut rng, &spec, &["q_proj", "k_proj", "down_proj"], 4, 16.0, false).save(&adapter_dir).unwrap();
    let gguf = dir.join("adapter.gguf");
    let (m, a, g) = (model.to_str().unwrap(), adapter_dir.to_str().unwrap(), gguf.to_str().unwrap());
    let o = export_lora(&adapter_dir, &model, &gguf);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let logits = |adapter: &str, name: &str| {
        let out = dir.join(name);
        let o = run_cli(&[
            "logits",
            "--model",
            m,
            "--tokens",
            "5,80,120,7,33",
            "--adapter",
            adapter,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out).unwrap()
    };
    let (peft, ours) = (logits(&format!("{a}:0.7"), "peft.st"), logits(&format!("{g}:0.7"), "gguf.st"));
    assert_eq!(peft, ours, "the GGUF adapter's logits differ from its PEFT directory's");
    assert_ne!(peft, logits(&format!("{a}:0"), "none.st"), "the adapter changes nothing: the check is empty");
    std::fs::remove_dir_all(&dir).ok();
}

/// `lorafuse export gguf`: the base GGUF with an adapter merged, in each type lorafuse writes,
/// read back by lorafuse against the f64 reference of the merged model; every metadata pair of the
/// base carried over; at f16 the logits of the merged Hugging Face directory
/// (`fuse --merge-into-base --merged-dtype f16`).
#[test]
fn merged_models_export_as_gguf() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let spec = Tiny { hidden: 64, inter: 96, heads: 4, kv_heads: 2, head_dim: 16, ..Tiny::default() };
    let dir = temp_dir("export-gguf");
    let model = dir.join("base.gguf");
    write_gguf_model(&model, &spec, &random_weights(&spec, seed), false);
    let adapter = random_adapter(&mut rng, &spec, &ALL, 4, 8.0, false);
    let adapter_dir = dir.join("adapter");
    adapter.save(&adapter_dir).unwrap();
    let src = ModelSource::open(&model).unwrap();
    let mut host = lorafuse::model::reference::HostLlama::load(&src).unwrap();
    host.merge(&adapter, 0.7);
    let tokens: Vec<u32> = (0..7).map(|_| rng.below(spec.vocab) as u32).collect();
    let want: Vec<f64> = host.logits(&tokens).concat();
    let (m, a) = (model.to_str().unwrap(), format!("{}:0.7", adapter_dir.display()));
    let base_meta = Gguf::open(&model).unwrap().metadata;
    // the merged weights of two matrices (q's rows go through llama.cpp's permutation and back)
    let cfg = src.config().unwrap();
    let merged = |name: &str, target: &str, shape: [usize; 2]| -> Vec<f32> {
        let mut w = src.tensor(name, &shape, &cfg).unwrap();
        let f = adapter.get(1, target).unwrap();
        let s = 0.7 * adapter.scale() as f64;
        for o in 0..f.out {
            for i in 0..f.inp {
                let d: f64 = (0..4).map(|j| f.b[o * 4 + j] as f64 * f.a[j * f.inp + i] as f64).sum();
                w[o * f.inp + i] = (w[o * f.inp + i] as f64 + s * d) as f32;
            }
        }
        w
    };
    let checked = [
        ("model.layers.1.self_attn.q_proj.weight", "q_proj", [64, 64]),
        ("model.layers.1.mlp.down_proj.weight", "down_proj", [64, 96]),
    ];
    // the logits' relative error each type's rounding allows on this tiny random model (4-bit:
    // checked weight by weight instead, a random model's logits move by ~25% under 4 bits)
    for (ty, tol, ggml) in [
        ("f16", Some(2e-3), GgmlType::F16),
        ("q8_0", Some(2e-2), GgmlType::Q8_0),
        ("q4_0", None, GgmlType::Q4_0),
        ("q4_1", None, GgmlType::Q4_1),
    ] {
        let out = dir.join(format!("merged-{ty}.gguf"));
        let o =
            run_cli(&["export", "gguf", "--model", m, "--adapter", &a, "--type", ty, "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{ty}: {}", String::from_utf8_lossy(&o.stderr));
        let g = Gguf::open(&out).unwrap();
        for (k, v) in &base_meta {
            if k != "general.file_type" {
                assert_eq!(g.get(k), Some(v), "{ty}: metadata {k}");
            }
        }
        assert_eq!(g.tensor("blk.1.ffn_down.weight").unwrap().ty, ggml, "{ty}");
        assert_eq!(g.tensor("blk.0.attn_norm.weight").unwrap().ty, GgmlType::F32, "{ty}: norms stay f32");
        let exported = ModelSource::open(&out).unwrap();
        for (name, target, shape) in checked {
            let (want_w, got_w) = (merged(name, target, shape), exported.tensor(name, &shape, &cfg).unwrap());
            for (b, (x, y)) in want_w.chunks(32).zip(got_w.chunks(32)).enumerate() {
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let range = x.iter().cloned().fold(f32::MIN, f32::max) - x.iter().cloned().fold(f32::MAX, f32::min);
                // half a quantization step, and the f16 rounding of the scale (and offset)
                let step = match ggml {
                    GgmlType::F16 => amax / 2048.0,
                    GgmlType::Q8_0 => amax / 254.0 + amax / 1024.0,
                    GgmlType::Q4_0 => amax / 8.0 + amax / 512.0,
                    _ => range / 30.0 + amax / 512.0,
                };
                let worst = x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst <= step, "{ty} {name} block {b}: off by {worst} (half a step: {step})");
            }
        }
        if let Some(tol) = tol {
            let back = lorafuse::model::reference::HostLlama::load(&exported).unwrap();
            let got: Vec<f32> = back.logits(&tokens).concat().iter().map(|&x| x as f32).collect();
            assert_close(&format!("merged GGUF {ty}"), &got, &want, tol, seed);
        }
    }
    // the f16 GGUF and the f16 Hugging Face merge hold the same matrices (the HF files hold their
    // norms in f16 too, the GGUF in f32, as llama.cpp's converter writes them)
    let hf = dir.join("hf");
    let o = run_cli(&[
        "fuse",
        "--adapter",
        &a,
        "--merge-into-base",
        "--model",
        m,
        "--merged-dtype",
        "f16",
        "--out",
        hf.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_hf = lorafuse::model::reference::HostLlama::load(&ModelSource::open(&hf).unwrap()).unwrap();
    let from_gguf =
        lorafuse::model::reference::HostLlama::load(&ModelSource::open(&dir.join("merged-f16.gguf")).unwrap()).unwrap();
    let hf_logits: Vec<f64> = from_hf.logits(&tokens).concat();
    let gguf_logits: Vec<f32> = from_gguf.logits(&tokens).concat().iter().map(|&x| x as f32).collect();
    assert_close("merged f16 GGUF against the merged f16 HF directory", &gguf_logits, &hf_logits, 1e-3, seed);
    std::fs::remove_dir_all(&dir).ok();
}

/// The greedy ids and text `lorafuse generate` gives for `prompt` on `model`.
fn greedy(model: &Path, prompt: &str) -> (serde_json::Value, serde_json::Value) {
    let o = run_cli(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "16",
        "--json",
    ]);
    assert!(o.status.success(), "{}: {}", model.display(), String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    (j["ids"].clone(), j["text"].clone())
}

/// `lorafuse export gguf` from a Hugging Face directory: config and tokenizer converted to
/// llama.cpp's keys (tokens by id, specials as control tokens, merges, ids, pre-tokenizer, chat
/// template); the export of a merged f16 directory generates exactly what the directory does; an
/// adapter merged on the way matches the f64 reference; GGUF → HF → GGUF gives the same tokenizer
/// metadata back; a tokenizer GGUF cannot name is refused before anything is written.
#[test]
fn hf_models_export_as_gguf() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let dir = temp_dir("export-hf-gguf");
    let hf = dir.join("hf");
    let spec = write_chat_model(&hf, seed);
    let adapter = random_adapter(&mut rng, &spec, &ALL, 4, 8.0, false);
    let adapter_dir = dir.join("adapter");
    adapter.save(&adapter_dir).unwrap();
    let a = format!("{}:0.7", adapter_dir.display());
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let export = |model: &Path, extra: &[&str], out: &Path| {
        let o = run_cli(&[&["export", "gguf", "--model", &p(model), "--out", &p(out)], extra].concat());
        assert!(o.status.success(), "{}: {}", model.display(), String::from_utf8_lossy(&o.stderr));
        Gguf::open(out).unwrap()
    };
    // the merged f16 directory and its GGUF hold the same numbers: the same greedy tokens
    let merged = dir.join("merged");
    let o = run_cli(&[
        "fuse",
        "--adapter",
        &a,
        "--merge-into-base",
        "--model",
        &p(&hf),
        "--merged-dtype",
        "f16",
        "--out",
        &p(&merged),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gguf = dir.join("merged.gguf");
    let g = export(&merged, &[], &gguf);
    let prompt = "Hello <|im_end|> there";
    assert_eq!(greedy(&gguf, prompt), greedy(&merged, prompt), "exported GGUF against its merged HF directory");
    // llama.cpp's keys
    assert_eq!(g.str("general.architecture").unwrap(), "llama");
    for (k, v) in [
        ("llama.block_count", spec.layers),
        ("llama.embedding_length", spec.hidden),
        ("llama.attention.head_count", spec.heads),
        ("llama.attention.head_count_kv", spec.kv_heads),
        ("llama.rope.dimension_count", spec.head_dim),
        ("llama.context_length", 4096),
    ] {
        assert_eq!(g.u64(k).unwrap(), v as u64, "{k}");
    }
    assert_eq!(g.str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.str("tokenizer.ggml.pre").unwrap(), "gpt2");
    let tokens = g.str_array("tokenizer.ggml.tokens").unwrap();
    let types = g.int_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(tokens.len(), CHAT_VOCAB);
    let im_end = tokens.iter().position(|t| *t == "<|im_end|>").unwrap();
    assert_eq!(types[im_end], 3, "specials are control tokens");
    assert_eq!(types[0], 1);
    assert_eq!(g.u64("tokenizer.ggml.eos_token_id").unwrap(), im_end as u64);
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(g.str("tokenizer.chat_template").unwrap(), tc["chat_template"].as_str().unwrap());
    let (from_gguf, from_hf) = (
        lorafuse::model::tokenizer::Tokenizer::from_gguf(&g).unwrap(),
        lorafuse::model::tokenizer::Tokenizer::from_hf_dir(&hf).unwrap(),
    );
    let text = "<|im_start|>user\nHi, 123 héllo!<|im_end|>";
    assert_eq!(from_gguf.encode(text, true).unwrap(), from_hf.encode(text, true).unwrap());
    assert_eq!(from_gguf.eos, from_hf.eos);
    // an adapter merged while exporting: the f64 reference of the merged model
    let src = ModelSource::open(&hf).unwrap();
    let mut host = lorafuse::model::reference::HostLlama::load(&src).unwrap();
    host.merge(&adapter, 0.7);
    let ids: Vec<u32> = (0..7).map(|_| rng.below(spec.vocab) as u32).collect();
    let want: Vec<f64> = host.logits(&ids).concat();
    let direct = dir.join("direct.gguf");
    export(&hf, &["--adapter", &a, "--type", "f16"], &direct);
    let back = lorafuse::model::reference::HostLlama::load(&ModelSource::open(&direct).unwrap()).unwrap();
    let got: Vec<f32> = back.logits(&ids).concat().iter().map(|&x| x as f32).collect();
    assert_close("GGUF exported from a Hugging Face base", &got, &want, 2e-3, seed);
    // GGUF -> HF -> GGUF: the tokenizer metadata comes back as it was
    let hf2 = dir.join("hf2");
    let o = run_cli(&["fuse", "--adapter", &a, "--merge-into-base", "--model", &p(&gguf), "--out", &p(&hf2)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g2 = export(&hf2, &[], &dir.join("again.gguf"));
    for (k, v) in g.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
        assert_eq!(g2.get(k), Some(v), "{k} after GGUF -> HF -> GGUF");
    }
    // a pre-tokenizer llama.cpp has no name for: refused, naming tokenizer.json, nothing written
    let tj = hf.join("tokenizer.json");
    let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tj).unwrap()).unwrap();
    j["pre_tokenizer"] = serde_json::json!({ "type": "Whitespace" });
    std::fs::write(&tj, j.to_string()).unwrap();
    let out = dir.join("refused.gguf");
    let o = run_cli(&["export", "gguf", "--model", &p(&hf), "--out", &p(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("tokenizer.json") && err.contains("pre-tokenizer"), "{err}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}
