//! The training step's loss and LoRA gradients on a tiny random model, against the f64 CPU
//! reference: the loss directly, the gradients by central finite differences of the reference
//! loss, for adapters on every target (q/k/v inside the stacked layer, o, gate/up, down), with
//! and without LoRA dropout (the reference applies the adapter unmerged with the GPU's masks).

mod common;

use common::tiny::*;
use common::*;
use lorafuse::gpu::{DType, Layout};
use lorafuse::kernels::matmul::{Form, Variant};
use lorafuse::lora::attach::place;
use lorafuse::lora::peft::Adapter;
use lorafuse::model::Dropout;
use lorafuse::model::batch::{MASKED, TrainBatch};
use lorafuse::model::llama::{Llama, LoadOptions};
use lorafuse::model::loss::StepOptions;
use lorafuse::model::params::LoraGradients;
use lorafuse::model::reference::HostLlama;
use lorafuse::model::source::ModelSource;

/// Σ −log p(target) over the labelled positions of each sequence, f64 on the host.
fn host_loss(host: &HostLlama, batch: &TrainBatch) -> f64 {
    let mut total = 0.0;
    for &(start, len) in &batch.spans {
        let logits = host.logits_at(&batch.tokens[start..start + len], start);
        for (i, l) in logits.iter().enumerate() {
            let t = batch.targets[start + i];
            if t == MASKED {
                continue;
            }
            let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = l.iter().map(|x| (x - m).exp()).sum();
            total += m + z.ln() - l[t as usize];
        }
    }
    total
}

/// The reference model with the adapter: merged without dropout, unmerged with it.
fn host_with(src: &ModelSource, ad: &Adapter, drop: Option<Dropout>) -> HostLlama {
    let mut host = HostLlama::load(src).unwrap();
    match drop {
        None => host.merge(ad, 1.0),
        Some(d) => host.add_unmerged(ad, Some(d)),
    }
    host
}

#[test]
fn loss_and_gradients_match_the_reference() {
    check_against_reference(None);
}

#[test]
fn loss_and_gradients_with_dropout_match_the_reference() {
    check_against_reference(Some(0.3));
}

fn check_against_reference(p: Option<f32>) {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let spec =
        Tiny { heads: 4, kv_heads: 2, head_dim: 8, hidden: 32, inter: 40, layers: 2, vocab: 53, ..Tiny::default() };
    let dir = temp_dir("tiny-train");
    write_hf(&dir, &spec, &random_weights(&spec, seed), safetensors::Dtype::F32);
    let src = ModelSource::open(&dir).unwrap();
    let cfg = src.config().unwrap();
    let ad = random_adapter(
        &mut rng,
        &spec,
        &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        3,
        6.0,
        false,
    );
    let mut batch = TrainBatch::default();
    for len in [6usize, 1, 9] {
        let tokens: Vec<u32> = (0..len).map(|_| rng.below(spec.vocab) as u32).collect();
        // labels on the later positions only, as on an assistant turn
        let targets: Vec<u32> =
            (0..len).map(|i| if i >= len / 3 { rng.below(spec.vocab) as u32 } else { MASKED }).collect();
        batch.push(&tokens, &targets);
    }
    let scale = 1.0 / batch.counted() as f32;
    let drop = p.map(|p| Dropout { p, seed: rng.next_u64() });
    let want_loss = host_loss(&host_with(&src, &ad, drop), &batch);

    let mut layouts = vec![Layout::Buffer];
    if !Variant::candidates(gpu, Form::Nn, Layout::Texture).is_empty() {
        layouts.push(Layout::Texture);
    }
    for layout in layouts {
        let mut model = Llama::load(gpu, &src, LoadOptions { dtype: DType::F32, layout: Some(layout) }).unwrap();
        model.attach(std::slice::from_ref(&ad), &[1.0]).unwrap();
        let grads = LoraGradients::new(&model).unwrap();
        let opts = StepOptions { loss_scale: scale, accumulate: false, dropout: drop };
        let loss = model.forward_backward(&batch, &grads, &opts).unwrap();
        assert!(
            (loss - want_loss).abs() <= 1e-4 * want_loss.abs(),
            "{}: loss {loss} vs reference {want_loss}",
            layout.name()
        );

        // gradient of one factor entry, from the GPU's stacked gradients
        let attached = model.adapters().unwrap();
        let gpu_grad = |layer: usize, target: &str, which: char, idx: usize| -> f64 {
            let (site, rows, inp, _) = place(&cfg, target).unwrap();
            let stack = attached.layers[layer].get(site).unwrap();
            let blk = stack.blocks().iter().find(|b| b.rows == rows).unwrap();
            let (da, db) = grads.get(layer, site).unwrap();
            if which == 'A' {
                let (j, k) = (idx / inp, idx % inp);
                da.read_f32(gpu).unwrap()[(blk.col + j) * inp + k] as f64
            } else {
                let (o, j) = (idx / blk.rank, idx % blk.rank);
                db.read_f32(gpu).unwrap()[(rows.start + o) * stack.rp() + blk.col + j] as f64
            }
        };
        let mut checked = 0;
        for (layer, target) in ad.factors.keys() {
            for which in ['A', 'B'] {
                let f = &ad.factors[&(*layer, target.clone())];
                let n = if which == 'A' { f.a.len() } else { f.b.len() };
                let idx = rng.below(n);
                let loss_at = |delta: f32| -> f64 {
                    let mut a2 = ad.clone();
                    let fac = a2.factors.get_mut(&(*layer, target.clone())).unwrap();
                    if which == 'A' {
                        fac.a[idx] += delta;
                    } else {
                        fac.b[idx] += delta;
                    }
                    host_loss(&host_with(&src, &a2, drop), &batch) * scale as f64
                };
                // small enough that the truncation error of a two-layer model stays under 1e-4
                let hstep = 1e-3f32;
                let fd = (loss_at(hstep) - loss_at(-hstep)) / (2.0 * hstep as f64);
                let got = gpu_grad(*layer, target, which, idx);
                assert!(
                    (got - fd).abs() <= 2e-3 * fd.abs().max(0.05),
                    "{} (dropout {p:?}): d{which}[{idx}] of layer {layer} {target}: GPU {got} vs finite difference {fd} (seed {seed})",
                    layout.name()
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2 * 7 * spec.layers);
    }
    std::fs::remove_dir_all(&dir).ok();
}
