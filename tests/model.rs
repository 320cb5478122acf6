//! The GPU Llama against its f64 CPU reference on tiny random models the tests write (Llama and
//! Qwen2 flavours, tied and untied heads, GGUF and Hugging Face files); KV-cache decode against
//! full recompute; ragged batches against one sequence at a time; bad files as errors.

mod common;

use common::tiny::*;
use common::*;
use lorafuse::gpu::{DType, Layout};
use lorafuse::kernels::matmul::{Form, Variant};
use lorafuse::lora::attach::Site;
use lorafuse::model::batch::Batch;
use lorafuse::model::llama::{Llama, LoadOptions};
use lorafuse::model::reference::HostLlama;
use lorafuse::model::source::ModelSource;

fn layouts() -> Vec<Layout> {
    let mut v = vec![Layout::Buffer];
    if !Variant::candidates(gpu(), Form::Nt, Layout::Texture).is_empty() {
        v.push(Layout::Texture);
    }
    v
}

fn random_tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

#[test]
fn tiny_models_match_the_cpu_reference() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let specs = [
        Tiny::default(),
        Tiny { qwen2: true, tie: false, heads: 4, kv_heads: 2, head_dim: 12, hidden: 40, inter: 70, ..Tiny::default() },
    ];
    for (si, spec) in specs.iter().enumerate() {
        let w = random_weights(spec, seed + si as u64);
        let dir = temp_dir("tiny-hf");
        write_hf(&dir, spec, &w, safetensors::Dtype::F32);
        let src = ModelSource::open(&dir).unwrap();
        let host = HostLlama::load(&src).unwrap();
        let tokens = random_tokens(&mut rng, 11, spec.vocab);
        let want: Vec<f64> = host.logits(&tokens).concat();
        for layout in layouts() {
            for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 5e-3)] {
                let model = Llama::load(gpu, &src, LoadOptions { dtype, layout: Some(layout) }).unwrap();
                let got = logits(&model, &tokens);
                assert_close(&format!("tiny model {si} ({}, {dtype} weights)", layout.name()), &got, &want, tol, seed);
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// A GGUF with Q4_1 or Q8_0 weights runs with them kept in their blocks (dequantized inside the
/// kernels), the untied LM head and the tied one (the embedding's blocks) included, and matches
/// the f64 reference on the file's dequantized values.
#[test]
fn quantized_gguf_runs_quantized() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    for (ty, dtype, tie) in [(3, DType::Q4, false), (8, DType::Q8, false), (8, DType::Q8, true)] {
        let spec = Tiny { hidden: 64, inter: 96, heads: 4, kv_heads: 2, head_dim: 16, tie, ..Tiny::default() };
        let w = random_weights(&spec, seed);
        let dir = temp_dir("tiny-quant");
        let path = dir.join("quant.gguf");
        write_gguf_model_as(&path, &spec, &w, ty);
        let src = ModelSource::open(&path).unwrap();
        let host = HostLlama::load(&src).unwrap();
        let tokens = random_tokens(&mut rng, 9, spec.vocab);
        let want: Vec<f64> = host.logits(&tokens).concat();
        let what = format!("{dtype} file, tied head {tie}");
        if Variant::candidates(gpu, Form::Nt, Layout::Texture).is_empty() {
            // no texture kernels: the blocks are expanded to f16, which must still match
            let model = Llama::load(gpu, &src, LoadOptions { dtype: DType::Q4, layout: None }).unwrap();
            assert_close(&format!("{what}: f16 fallback"), &logits(&model, &tokens), &want, 5e-3, seed);
        } else {
            let model =
                Llama::load(gpu, &src, LoadOptions { dtype: DType::Q4, layout: Some(Layout::Texture) }).unwrap();
            assert_eq!(model.weight_dtype(0, Site::Qkv), dtype, "{what}");
            assert_eq!(model.weight_dtype(1, Site::Down), dtype, "{what}");
            assert_eq!(model.head_dtype(), dtype, "{what}");
            // the f16 embedding table the row gather reads is the only rounding left
            assert_close(&format!("{what}: blocks in the kernels"), &logits(&model, &tokens), &want, 1e-3, seed);
            let f32_model =
                Llama::load(gpu, &src, LoadOptions { dtype: DType::F32, layout: Some(Layout::Texture) }).unwrap();
            assert_close(&format!("{what}: f32 weights"), &logits(&f32_model, &tokens), &want, 1e-4, seed);
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// The same weights through a GGUF file (q/k rows permuted as llama.cpp stores them, f32 and
/// f16) and a Hugging Face directory (f32, f16, bf16) load to the same tensors.
#[test]
fn gguf_and_hf_files_load_the_same_weights() {
    let seed = seed();
    for qwen2 in [false, true] {
        let spec = Tiny { qwen2, tie: !qwen2, ..Tiny::default() };
        let w = random_weights(&spec, seed);
        let dir = temp_dir("tiny-both");
        write_hf(&dir.join("hf"), &spec, &w, safetensors::Dtype::F32);
        write_gguf_model(&dir.join("m.gguf"), &spec, &w, false);
        let hf = ModelSource::open(&dir.join("hf")).unwrap();
        let gg = ModelSource::open(&dir.join("m.gguf")).unwrap();
        let cfg = hf.config().unwrap();
        let mut gcfg = gg.config().unwrap();
        // GGUF stores eps as f32
        assert!((gcfg.rms_eps - cfg.rms_eps).abs() < 1e-12);
        gcfg.rms_eps = cfg.rms_eps;
        // and names its own file and key as the context's source
        assert!(gcfg.context_source.contains("llama.context_length in") || gcfg.context_source.contains("qwen2."));
        gcfg.context_source.clone_from(&cfg.context_source);
        assert_eq!(cfg, gcfg);
        for (name, (shape, v)) in &w {
            assert_eq!(&hf.tensor(name, shape, &cfg).unwrap(), v, "{name} from safetensors");
            assert_eq!(&gg.tensor(name, shape, &cfg).unwrap(), v, "{name} from GGUF");
        }
        // f16 and bf16 files round to those types
        write_hf(&dir.join("hf16"), &spec, &w, safetensors::Dtype::F16);
        write_hf(&dir.join("hfb16"), &spec, &w, safetensors::Dtype::BF16);
        write_gguf_model(&dir.join("m16.gguf"), &spec, &w, true);
        let name = "model.layers.1.self_attn.q_proj.weight";
        let (shape, v) = &w[name];
        let f16: Vec<f32> = round_f16(v);
        let bf16: Vec<f32> = v.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect();
        assert_eq!(ModelSource::open(&dir.join("hf16")).unwrap().tensor(name, shape, &cfg).unwrap(), f16);
        assert_eq!(ModelSource::open(&dir.join("hfb16")).unwrap().tensor(name, shape, &cfg).unwrap(), bf16);
        assert_eq!(ModelSource::open(&dir.join("m16.gguf")).unwrap().tensor(name, shape, &cfg).unwrap(), f16);
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// Prefill then one token at a time through the cache gives the logits of a full recompute.
#[test]
fn kv_cache_decode_equals_full_recompute() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let spec = Tiny::default();
    let dir = temp_dir("tiny-kv");
    write_hf(&dir, &spec, &random_weights(&spec, seed), safetensors::Dtype::F32);
    let src = ModelSource::open(&dir).unwrap();
    for layout in layouts() {
        let model = Llama::load(gpu, &src, LoadOptions { dtype: DType::F32, layout: Some(layout) }).unwrap();
        let tokens = random_tokens(&mut rng, 14, spec.vocab);
        let full = logits(&model, &tokens);
        let v = spec.vocab;
        let cache = model.new_cache(1, 16).unwrap();
        let prefill = 5;
        let mut b = Batch::default();
        b.push_sequence(0, 0, &tokens[..prefill], true);
        let mut stepwise = model.forward(&b, &cache).unwrap().read_f32(gpu).unwrap();
        for p in prefill..tokens.len() {
            let mut b = Batch::default();
            b.push_sequence(0, p as u32, &tokens[p..p + 1], true);
            stepwise.extend(model.forward(&b, &cache).unwrap().read_f32(gpu).unwrap());
        }
        let want: Vec<f64> = full[(prefill - 1) * v..].iter().map(|&x| x as f64).collect();
        assert_close(&format!("decode vs recompute ({})", layout.name()), &stepwise, &want, 1e-5, seed);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Sequences of different lengths in one ragged batch (prefill, then decode steps for all of
/// them at once) give each sequence's logits as if it ran alone.
#[test]
fn ragged_batch_equals_one_sequence_at_a_time() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let spec = Tiny { kv_heads: 3, ..Tiny::default() };
    let dir = temp_dir("tiny-batch");
    write_hf(&dir, &spec, &random_weights(&spec, seed), safetensors::Dtype::F32);
    let src = ModelSource::open(&dir).unwrap();
    let model = Llama::load(gpu, &src, LoadOptions { dtype: DType::F32, layout: None }).unwrap();
    let prompts: Vec<Vec<u32>> = [7, 1, 12].iter().map(|&n| random_tokens(&mut rng, n, spec.vocab)).collect();
    let next: Vec<u32> = random_tokens(&mut rng, 3, spec.vocab);
    let v = spec.vocab;
    // together
    let cache = model.new_cache(3, 16).unwrap();
    let mut b = Batch::default();
    for (s, p) in prompts.iter().enumerate() {
        b.push_sequence(s as u32, 0, p, true);
    }
    let first = model.forward(&b, &cache).unwrap().read_f32(gpu).unwrap();
    // the same batch in pieces of 5 rows (what a batch over the device's binding limit runs
    // as): sequences cut across pieces, a piece that wants no logits, logits in the batch's order
    let pieces_cache = model.new_cache(3, 16).unwrap();
    let mut shuffled = b.clone();
    shuffled.logits_rows.reverse();
    let pieces = model.forward_in_pieces(&shuffled, &pieces_cache, 5).unwrap().read_f32(gpu).unwrap();
    for s in 0..3 {
        let want: Vec<f64> = first[s * v..(s + 1) * v].iter().map(|&x| x as f64).collect();
        assert_close(&format!("sequence {s}, in pieces"), &pieces[(2 - s) * v..(3 - s) * v], &want, 1e-5, seed);
    }
    let mut b = Batch::default();
    for (s, p) in prompts.iter().enumerate() {
        b.push_sequence(s as u32, p.len() as u32, &next[s..s + 1], true);
    }
    let second = model.forward(&b, &cache).unwrap().read_f32(gpu).unwrap();
    // alone
    for (s, p) in prompts.iter().enumerate() {
        let mut seq = p.clone();
        seq.push(next[s]);
        let alone = logits(&model, &seq);
        let want_first: Vec<f64> = alone[(p.len() - 1) * v..p.len() * v].iter().map(|&x| x as f64).collect();
        let want_second: Vec<f64> = alone[p.len() * v..].iter().map(|&x| x as f64).collect();
        assert_close(&format!("sequence {s}, prefill"), &first[s * v..(s + 1) * v], &want_first, 1e-5, seed);
        assert_close(&format!("sequence {s}, decode"), &second[s * v..(s + 1) * v], &want_second, 1e-5, seed);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_model_files_are_errors_naming_file_and_tensor() {
    let seed = seed();
    let spec = Tiny::default();
    let w = random_weights(&spec, seed);
    let dir = temp_dir("tiny-bad");
    let gg = dir.join("m.gguf");
    write_gguf_model(&gg, &spec, &w, false);
    let bytes = std::fs::read(&gg).unwrap();
    let cfg = ModelSource::open(&gg).unwrap().config().unwrap();

    // truncated anywhere: header, metadata, tensor table, data
    for cut in [3, 20, 200, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let msg = match ModelSource::open(&p) {
            Err(e) => e.to_string(),
            Ok(src) => src.tensor("model.norm.weight", &[spec.hidden], &cfg).map(|_| ()).unwrap_err().to_string(),
        };
        assert!(msg.contains(&p.display().to_string()), "cut at {cut}: {msg}");
        if cut > 1000 {
            assert!(msg.contains("tensor '") && msg.contains("truncated"), "cut at {cut}: {msg}");
        }
    }
    let p = dir.join("magic.gguf");
    let mut bad = bytes.clone();
    bad[..4].copy_from_slice(b"GGML");
    std::fs::write(&p, &bad).unwrap();
    assert!(ModelSource::open(&p).err().unwrap().to_string().contains("not a GGUF file"));

    // safetensors: truncated, and a config that disagrees with the tensors
    let hf = dir.join("hf");
    write_hf(&hf, &spec, &w, safetensors::Dtype::F32);
    let st = hf.join("model.safetensors");
    let full = std::fs::read(&st).unwrap();
    std::fs::write(&st, &full[..full.len() - 100]).unwrap();
    let err = ModelSource::open(&hf).err().expect("truncated safetensors").to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(&st, &full).unwrap();
    let wrong = Tiny { inter: spec.inter + 1, ..spec.clone() };
    std::fs::write(hf.join("config.json"), config_json(&wrong)).unwrap();
    let src = ModelSource::open(&hf).unwrap();
    let err = Llama::load(gpu(), &src, LoadOptions::default()).err().expect("shape mismatch").to_string();
    assert!(err.contains("mlp.gate_proj.weight") && err.contains("shape"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Numbers that would run to NaN logits or empty text: each is an error naming the file and
/// the key (or tensor) where it enters.
#[test]
fn bad_numbers_in_model_files_are_errors_naming_file_and_key() {
    let seed = seed();
    let spec = Tiny::default();
    let w = random_weights(&spec, seed);
    let dir = temp_dir("tiny-numbers");
    let load = |p: &std::path::Path, dtype: DType| -> String {
        match ModelSource::open(p).and_then(|src| Llama::load(gpu(), &src, LoadOptions { dtype, layout: None })) {
            Ok(_) => "loaded".into(),
            Err(e) => e.to_string(),
        }
    };
    let set = |meta: &mut Vec<(String, Meta)>, key: &str, v: Meta| {
        meta.retain(|(k, _)| k != key);
        meta.push((key.to_string(), v));
    };
    let gguf_cases: Vec<(&str, Meta)> = vec![
        ("llama.rope.freq_base", Meta::F32(f32::NAN)),
        ("llama.rope.freq_base", Meta::F32(-5.0)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(-1e-5)),
        ("llama.context_length", Meta::U32(0)),
        ("llama.attention.head_count", Meta::U32(0)),
        ("llama.attention.head_count_kv", Meta::U32(2)),
        ("llama.embedding_length", Meta::U32(0)),
    ];
    for (i, (key, v)) in gguf_cases.into_iter().enumerate() {
        let (mut meta, tensors) = gguf_model_parts(&spec, &w, 0);
        set(&mut meta, key, v);
        let p = dir.join(format!("meta{i}.gguf"));
        write_gguf(&p, &meta, &tensors);
        let err = load(&p, DType::F32);
        assert!(err.contains(&p.display().to_string()) && err.contains(key), "{key}: {err}");
    }
    // NaN in a norm, and in a Q8_0 block's scale (a size the blocks serve: rows of 64)
    let (meta, mut tensors) = gguf_model_parts(&spec, &w, 0);
    let norm = tensors.iter().position(|t| t.0 == "output_norm.weight").unwrap();
    tensors[norm].3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let p = dir.join("nan-norm.gguf");
    write_gguf(&p, &meta, &tensors);
    let err = load(&p, DType::F32);
    assert!(err.contains("nan-norm.gguf") && err.contains("output_norm.weight") && err.contains("NaN"), "{err}");
    let q8 = Tiny { hidden: 64, inter: 96, heads: 4, kv_heads: 2, head_dim: 16, ..Tiny::default() };
    let (meta, mut tensors) = gguf_model_parts(&q8, &random_weights(&q8, seed), 8);
    let o = tensors.iter().position(|t| t.0 == "blk.1.attn_output.weight").unwrap();
    tensors[o].3[34 * 3..34 * 3 + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    let p = dir.join("nan-scale.gguf");
    write_gguf(&p, &meta, &tensors);
    let src = ModelSource::open(&p).unwrap();
    let cfg = src.config().unwrap();
    let err = src.tensor_blocks("model.layers.1.self_attn.o_proj.weight", &[64, 64], &cfg).err().unwrap().to_string();
    assert!(
        err.contains("nan-scale.gguf") && err.contains("blk.1.attn_output.weight") && err.contains("block 3"),
        "{err}"
    );
    assert!(load(&p, DType::F32).contains("blk.1.attn_output.weight"), "dequantized, the NaN is caught too");
    let (meta, mut tensors) = gguf_model_parts(&spec, &w, 0);
    tensors[0].1[0] = 1 << 40;
    let p = dir.join("huge.gguf");
    write_gguf(&p, &meta, &tensors);
    let err = load(&p, DType::F32);
    assert!(err.contains("huge.gguf") && err.contains("implausible") && !err.contains("truncated"), "{err}");
    // a short context is named with its key where a prompt runs over it
    let (mut meta, tensors) = gguf_model_parts(&spec, &w, 0);
    set(&mut meta, "llama.context_length", Meta::U32(16));
    let p = dir.join("ctx16.gguf");
    write_gguf(&p, &meta, &tensors);
    let model = Llama::load(gpu(), &ModelSource::open(&p).unwrap(), LoadOptions::default()).unwrap();
    let err = model.new_cache(1, 20).err().unwrap().to_string();
    assert!(
        err.contains("context of 16") && err.contains("llama.context_length in") && err.contains("ctx16.gguf"),
        "{err}"
    );

    // Hugging Face: config.json's numbers and the tensors' values
    let hf = dir.join("hf");
    write_hf(&hf, &spec, &w, safetensors::Dtype::F32);
    let good: serde_json::Value = serde_json::from_str(&config_json(&spec)).unwrap();
    for (key, v) in [
        ("rope_theta", serde_json::json!(-5.0)),
        ("rms_norm_eps", serde_json::json!(0.0)),
        ("num_key_value_heads", serde_json::json!(2)),
        ("max_position_embeddings", serde_json::json!(0)),
    ] {
        let mut cfg = good.clone();
        cfg[key] = v;
        std::fs::write(hf.join("config.json"), cfg.to_string()).unwrap();
        let err = load(&hf, DType::F32);
        assert!(err.contains("config.json") && err.contains(key), "{key}: {err}");
    }
    std::fs::write(hf.join("config.json"), good.to_string()).unwrap();
    let mut bad = w.clone();
    bad.get_mut("model.layers.1.input_layernorm.weight").unwrap().1[2] = f32::INFINITY;
    write_hf(&hf, &spec, &bad, safetensors::Dtype::F16);
    let err = load(&hf, DType::F16);
    assert!(err.contains("model.safetensors") && err.contains("model.layers.1.input_layernorm.weight"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sequences_over_the_limit_are_errors() {
    let spec = Tiny::default();
    let dir = temp_dir("tiny-limit");
    write_hf(&dir, &spec, &random_weights(&spec, seed()), safetensors::Dtype::F32);
    let model = Llama::load(gpu(), &ModelSource::open(&dir).unwrap(), LoadOptions::default()).unwrap();
    assert!(model.new_cache(1, 513).err().unwrap().to_string().contains("context of 512"));
    let cache = model.new_cache(1, 4).unwrap();
    let mut b = Batch::default();
    b.push_sequence(0, 0, &[1, 2, 3, 4, 5], true);
    assert!(model.forward(&b, &cache).err().unwrap().to_string().contains("over the limit"));
    let mut b = Batch::default();
    b.push_sequence(0, 0, &[1000], true);
    assert!(model.forward(&b, &cache).err().unwrap().to_string().contains("vocabulary"));
    std::fs::remove_dir_all(&dir).ok();
}

/// A Hugging Face directory with shards (and their index), tokenizer.json, tokenizer_config.json
/// (chat template, special tokens) and generation_config.json (end tokens).
#[test]
fn hf_shards_tokenizer_and_template_load() {
    let seed = seed();
    let spec = Tiny::default();
    let w = random_weights(&spec, seed);
    let dir = temp_dir("tiny-shards");
    let one = dir.join("one");
    write_hf(&one, &spec, &w, safetensors::Dtype::F32);
    let sharded = dir.join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::copy(one.join("config.json"), sharded.join("config.json")).unwrap();
    let mut map = serde_json::Map::new();
    let names: Vec<&String> = w.keys().collect();
    for (part, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", part + 1);
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = chunk
            .iter()
            .map(|n| (n.to_string(), w[*n].0.clone(), w[*n].1.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, s, b)| {
                (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
            })
            .collect();
        std::fs::write(sharded.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        for n in chunk {
            map.insert(n.to_string(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let words = ["<s>", "</s>", "<unk>", "<|eot|>", "hello", "world", "user", "assistant", ":"];
    let vocab: serde_json::Map<String, serde_json::Value> =
        words.iter().enumerate().map(|(i, w)| (w.to_string(), serde_json::json!(i))).collect();
    let added: Vec<serde_json::Value> = [0, 1, 3]
        .iter()
        .map(|&i| serde_json::json!({"id": i, "content": words[i], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(sharded.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let template = "{{ bos_token }}{% for m in messages %}{{ m.role }} : {{ m.content }} <|eot|> {% endfor %}{% if add_generation_prompt %}assistant : {% endif %}";
    let tcfg = serde_json::json!({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": true, "chat_template": template});
    std::fs::write(sharded.join("tokenizer_config.json"), tcfg.to_string()).unwrap();
    std::fs::write(sharded.join("generation_config.json"), r#"{"eos_token_id": [1, 3]}"#).unwrap();

    let a = ModelSource::open(&one).unwrap();
    let b = ModelSource::open(&sharded).unwrap();
    let cfg = a.config().unwrap();
    for (name, (shape, v)) in &w {
        assert_eq!(&b.tensor(name, shape, &cfg).unwrap(), v, "{name} from the shards");
        assert_eq!(a.tensor(name, shape, &cfg).unwrap(), b.tensor(name, shape, &cfg).unwrap());
    }
    let tok = b.tokenizer().unwrap();
    assert_eq!(tok.eos, vec![1, 3]);
    assert_eq!(tok.encode("hello world", true).unwrap(), vec![0, 4, 5]);
    let t = b.chat_template().unwrap().expect("template from tokenizer_config.json");
    let ids = lorafuse::model::generate::prompt_ids(
        &tok,
        Some(&t),
        &[lorafuse::model::chat::Message::new("user", "hello")],
        false,
    )
    .unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), "<s> user : hello <|eot|> assistant :");
    std::fs::remove_dir_all(&dir).ok();
}

/// Llama-3's RoPE scaling: high frequencies kept, low ones divided by the factor, a smooth blend
/// between (the wavelength bands of Hugging Face's definition).
#[test]
fn llama3_rope_scaling_bands() {
    use lorafuse::model::config::{Llama3Scaling, RopeScaling};
    let spec = Tiny { head_dim: 128, heads: 1, kv_heads: 1, hidden: 128, rope_theta: 500000.0, ..Tiny::default() };
    let dir = temp_dir("tiny-rope");
    write_hf(&dir, &spec, &random_weights(&spec, 1), safetensors::Dtype::F32);
    let mut cfg = ModelSource::open(&dir).unwrap().config().unwrap();
    let plain = cfg.inv_freq();
    let s = Llama3Scaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_positions: 8192.0 };
    cfg.rope_scaling = RopeScaling::Llama3(s.clone());
    let scaled = cfg.inv_freq();
    for (f, g) in plain.iter().zip(&scaled) {
        let wavelen = 2.0 * std::f64::consts::PI / f;
        if wavelen < s.original_max_positions / s.high_freq_factor {
            assert_eq!(f, g);
        } else if wavelen > s.original_max_positions / s.low_freq_factor {
            assert!((g - f / 8.0).abs() < 1e-15);
        } else {
            assert!(*g < *f && *g > f / 8.0, "blended {g} between {} and {f}", f / 8.0);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The scorer's logits over shared prefixes (prefilled once per mix, kept across calls, reused
/// in part, given up when slots run out) equal those of every prompt prefilled whole, and it
/// prefills less.
#[test]
fn shared_prefix_scoring_equals_whole_prompts() {
    use lorafuse::model::score::Scorer;
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let spec = Tiny::default();
    let dir = temp_dir("tiny-score");
    write_hf(&dir, &spec, &random_weights(&spec, seed), safetensors::Dtype::F32);
    let src = ModelSource::open(&dir).unwrap();
    let ads = [
        random_adapter(&mut rng, &spec, &["q_proj", "v_proj"], 4, 8.0, false),
        random_adapter(&mut rng, &spec, &["k_proj", "down_proj"], 2, 4.0, false),
    ];
    let (a, b) = (vec![1.0f32, 0.0], vec![0.3f32, 0.7]);
    let toks = |rng: &mut Rng, n: usize| random_tokens(rng, n, spec.vocab);
    let (p1, p2, p3, p4) = (toks(&mut rng, 40), toks(&mut rng, 50), toks(&mut rng, 36), toks(&mut rng, 45));
    let with = |p: &[u32], tail: Vec<u32>| -> Vec<u32> { [p, &tail].concat() };
    for layout in layouts() {
        let mut model = Llama::load(gpu, &src, LoadOptions { dtype: DType::F32, layout: Some(layout) }).unwrap();
        model.attach(&ads, &[1.0, 1.0]).unwrap();
        let (mut scorer, mut whole) = (Scorer::new(&model, 2), Scorer::new(&model, 0));
        let calls: Vec<Vec<(Vec<u32>, Vec<f32>)>> = vec![
            // a new prefix per mix, a prompt of another prefix alone, an unrelated one
            vec![
                (with(&p1, toks(&mut rng, 3)), a.clone()),
                (with(&p1, toks(&mut rng, 9)), a.clone()),
                (with(&p2, toks(&mut rng, 2)), a.clone()),
                (with(&p1, toks(&mut rng, 1)), b.clone()),
                (with(&p1, toks(&mut rng, 5)), b.clone()),
                (toks(&mut rng, 20), a.clone()),
            ],
            // the kept prefixes again, one in part (its first 35 tokens)
            vec![(with(&p1, toks(&mut rng, 4)), a.clone()), (with(&p1[..35], toks(&mut rng, 6)), b.clone())],
            // two new prefixes: the slots of both kept ones are given up
            vec![
                (with(&p3, toks(&mut rng, 2)), b.clone()),
                (with(&p3, toks(&mut rng, 7)), b.clone()),
                (with(&p4, toks(&mut rng, 3)), a.clone()),
                (with(&p4, toks(&mut rng, 1)), a.clone()),
            ],
        ];
        let mut total = 0;
        for (c, call) in calls.iter().enumerate() {
            let (prompts, mixes): (Vec<Vec<u32>>, Vec<Vec<f32>>) = call.iter().cloned().unzip();
            let got = scorer.next_logits(&prompts, &mixes).unwrap();
            let want = whole.next_logits(&prompts, &mixes).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let w64: Vec<f64> = w.iter().map(|&x| x as f64).collect();
                assert_close(&format!("{} layout, call {c}, prompt {i}", layout.name()), g, &w64, 1e-5, seed);
            }
            total += prompts.iter().map(Vec::len).sum::<usize>();
        }
        let counts = scorer.counts();
        assert_eq!((counts.prompts, counts.prompt_tokens), (12, total));
        assert_eq!(whole.counts().prefilled, total, "a scorer without prefix slots prefills every token");
        // shared (at least: random tails may add a token): p1 at a by 3 prompts, p1 at b by 2 and
        // its first 35 tokens by one more, p3 and p4 by 2 each; prefilled once: p1 twice, p3, p4
        let shared = 3 * 40 + 2 * 40 + 35 + 2 * 36 + 2 * 45;
        assert!(counts.own_tokens <= total - shared, "{counts:?}: the prefixes were not shared");
        let once = 40 + 40 + 36 + 45;
        assert!(
            counts.prefilled >= counts.own_tokens + once && counts.prefilled <= counts.own_tokens + once + 8,
            "{counts:?}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
