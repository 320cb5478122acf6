//! LoRA adapters on the model: PEFT files round-trip; adapters on any targets (q/v inside the
//! stacked q/k/v layer, o, gate, down) applied at runtime through the fused kernel match the
//! f64 reference with the adapters merged into the weights; several adapters, negative weights,
//! per-row weights in one batch; fresh adapters change nothing; bad adapters are errors.

mod common;

use common::tiny::*;
use common::*;
use lorafuse::gpu::DType;
use lorafuse::lora::peft::Adapter;
use lorafuse::model::batch::Batch;
use lorafuse::model::llama::{Llama, LoadOptions};
use lorafuse::model::reference::HostLlama;
use lorafuse::model::source::ModelSource;

#[test]
fn peft_files_round_trip() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let spec = Tiny::default();
    let a = random_adapter(&mut rng, &spec, &["q_proj", "v_proj", "down_proj"], 4, 16.0, false);
    let dir = temp_dir("peft");
    a.save(&dir).unwrap();
    let b = Adapter::load(&dir).unwrap();
    assert_eq!(b.config, a.config);
    assert_eq!(b.factors, a.factors);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    for (k, v) in [("peft_type", "LORA"), ("task_type", "CAUSAL_LM"), ("bias", "none")] {
        assert_eq!(cfg[k], v, "{k}");
    }
    assert_eq!(cfg["r"], 4);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn runtime_adapters_match_merged_weights() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let spec = Tiny { heads: 4, kv_heads: 2, head_dim: 12, hidden: 40, inter: 70, ..Tiny::default() };
    let dir = temp_dir("tiny-adapters");
    write_hf(&dir, &spec, &random_weights(&spec, seed), safetensors::Dtype::F32);
    let src = ModelSource::open(&dir).unwrap();
    let task = random_adapter(&mut rng, &spec, &["q_proj", "v_proj"], 4, 16.0, false);
    let safety = random_adapter(
        &mut rng,
        &spec,
        &["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        3,
        6.0,
        false,
    );
    let tokens: Vec<u32> = (0..9).map(|_| rng.below(spec.vocab) as u32).collect();
    let mut model = Llama::load(gpu, &src, LoadOptions { dtype: DType::F32, layout: None }).unwrap();
    for weights in [vec![0.6f32, 0.4], vec![1.0, -0.5]] {
        model.attach(&[task.clone(), safety.clone()], &weights).unwrap();
        let mut host = HostLlama::load(&src).unwrap();
        host.merge(&task, weights[0]);
        host.merge(&safety, weights[1]);
        let want: Vec<f64> = host.logits(&tokens).concat();
        assert_close(&format!("adapters at {weights:?}"), &logits(&model, &tokens), &want, 1e-4, seed);
    }
    // per-row weights: two sequences in one batch, each with its own mix, equal each run alone
    let mixes = [[1.0f32, 0.0], [0.3, 0.9]];
    let cache = model.new_cache(2, 16).unwrap();
    let mut b = Batch::default();
    for (s, mix) in mixes.iter().enumerate() {
        b.push_sequence(s as u32, 0, &tokens, true);
        for _ in 0..tokens.len() {
            b.adapter_weights.extend_from_slice(mix);
        }
    }
    let together = model.forward(&b, &cache).unwrap().read_f32(gpu).unwrap();
    let v = spec.vocab;
    for (s, mix) in mixes.iter().enumerate() {
        model.attach(&[task.clone(), safety.clone()], mix).unwrap();
        let alone = logits(&model, &tokens);
        let want: Vec<f64> = alone[(tokens.len() - 1) * v..].iter().map(|&x| x as f64).collect();
        assert_close(&format!("row mix {mix:?}"), &together[s * v..(s + 1) * v], &want, 1e-5, seed);
    }
    // fresh adapters (B = 0) change nothing
    let base = {
        model.detach();
        logits(&model, &tokens)
    };
    let fresh = random_adapter(&mut rng, &spec, &["q_proj", "v_proj"], 8, 32.0, true);
    model.attach(&[fresh], &[1.0]).unwrap();
    let with_fresh = logits(&model, &tokens);
    assert_close("fresh adapter", &with_fresh, &base.iter().map(|&x| x as f64).collect::<Vec<_>>(), 1e-6, seed);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_adapters_are_errors() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let spec = Tiny::default();
    let dir = temp_dir("tiny-bad-adapters");
    write_hf(&dir.join("model"), &spec, &random_weights(&spec, seed), safetensors::Dtype::F32);
    let src = ModelSource::open(&dir.join("model")).unwrap();
    let mut model = Llama::load(gpu, &src, LoadOptions::default()).unwrap();
    // an adapter for a wider model
    let wide = Tiny { hidden: spec.hidden + 8, ..spec.clone() };
    let a = random_adapter(&mut rng, &wide, &["q_proj"], 4, 8.0, false);
    let err = model.attach(&[a], &[1.0]).unwrap_err().to_string();
    assert!(err.contains("q_proj") && err.contains("model's is"), "{err}");
    // one for a layer the model lacks says so, rather than showing two equal shapes
    let deep = Tiny { layers: 100, ..spec.clone() };
    let mut a = random_adapter(&mut rng, &deep, &["q_proj"], 4, 8.0, false);
    a.factors.retain(|(l, _), _| *l == 99);
    let err = model.attach(&[a], &[1.0]).unwrap_err().to_string();
    assert!(err.contains("has layer 99") && err.contains(&format!("has {} layers", spec.layers)), "{err}");
    // files: unknown target, missing lora_B
    let a = random_adapter(&mut rng, &spec, &["v_proj"], 4, 8.0, false);
    let ad = dir.join("adapter");
    a.save(&ad).unwrap();
    let cfg = std::fs::read_to_string(ad.join("adapter_config.json")).unwrap();
    std::fs::write(ad.join("adapter_config.json"), cfg.replace("v_proj", "lm_head")).unwrap();
    let err = Adapter::load(&ad).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json") && err.contains("lm_head"), "{err}");
    std::fs::write(ad.join("adapter_config.json"), &cfg).unwrap();
    let only_a: Vec<(String, Vec<usize>, Vec<u8>)> = a
        .factors
        .iter()
        .map(|((l, t), f)| {
            (
                format!("{}.lora_A.weight", lorafuse::lora::peft::module_path(*l, t)),
                vec![4, f.inp],
                f.a.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = only_a
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(ad.join("adapter_model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let err = Adapter::load(&ad).unwrap_err().to_string();
    assert!(err.contains("lora_B"), "{err}");
    // one NaN or infinity in a factor, and one module of the wrong shape: named by file and tensor
    for bad in [f32::NAN, f32::INFINITY] {
        let mut nan = a.clone();
        nan.factors.get_mut(&(1, "v_proj".to_string())).unwrap().b[5] = bad;
        nan.save(&ad).unwrap();
        let err = Adapter::load(&ad).unwrap_err().to_string();
        assert!(
            err.contains("adapter_model.safetensors") && err.contains("layers.1.self_attn.v_proj.lora_B.weight"),
            "{err}"
        );
    }
    let mut odd = a.clone();
    let f = odd.factors.get_mut(&(1, "v_proj".to_string())).unwrap();
    (f.inp, f.a) = (f.inp + 2, vec![0.1; 4 * (f.inp + 2)]);
    odd.save(&ad).unwrap();
    let err = Adapter::load(&ad).unwrap_err().to_string();
    assert!(err.contains("layers.1.self_attn.v_proj") && err.contains("layer 0's v_proj"), "{err}");
    std::fs::write(ad.join("adapter_config.json"), cfg.replace("\"r\": 4", "\"r\": 0")).unwrap();
    let err = Adapter::load(&ad).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json") && err.contains("r must be at least 1"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
