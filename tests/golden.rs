//! SmolLM2-135M-Instruct (the default model, Q4_1 GGUF) against the golden reference: an f32
//! computation on the dequantized weights. Compared in that mode (f32 weights on the GPU).

mod common;

use common::{default_model, golden, golden_ids, gpu};
use lorafuse::gpu::DType;
use lorafuse::model::batch::Batch;
use lorafuse::model::llama::{Llama, LoadOptions};
use lorafuse::model::source::ModelSource;

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn last_position_logits_and_greedy_ids_match_the_golden() {
    let g = golden();
    let gpu = gpu();
    let src = ModelSource::open(&default_model()).unwrap();
    let model = Llama::load(gpu, &src, LoadOptions { dtype: DType::F32, layout: None }).unwrap();
    let prompt = golden_ids(&g, "prompt_ids");
    let want_greedy = golden_ids(&g, "greedy_ids");
    let cache = model.new_cache(1, prompt.len() + want_greedy.len() + 1).unwrap();
    let mut b = Batch::default();
    b.push_sequence(0, 0, &prompt, true);
    let logits = model.forward(&b, &cache).unwrap().read_f32(gpu).unwrap();

    let top_ids = golden_ids(&g, "last_pos_top10_ids");
    let top_logits: Vec<f64> =
        g["last_pos_top10_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let mut worst = 0.0f64;
    for (&id, &want) in top_ids.iter().zip(&top_logits) {
        let got = logits[id as usize] as f64;
        worst = worst.max((got - want).abs());
        assert!((got - want).abs() <= 0.05, "logit of token {id}: {got} vs golden {want}");
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
    assert_eq!(&order[..top_ids.len()], &top_ids[..], "top-10 order (max |Δlogit| {worst:.4})");

    let mut generated = vec![argmax(&logits)];
    while generated.len() < want_greedy.len() {
        let pos = (prompt.len() + generated.len() - 1) as u32;
        let mut b = Batch::default();
        b.push_sequence(0, pos, &generated[generated.len() - 1..], true);
        let l = model.forward(&b, &cache).unwrap().read_f32(gpu).unwrap();
        generated.push(argmax(&l));
    }
    assert_eq!(generated, want_greedy);
}
