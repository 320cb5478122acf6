//! Fused multi-LoRA forward and backward, the sequential and merged baselines, on every variant
//! family, against the f64 CPU references; outputs poisoned before each run.

mod common;

use common::*;
use lorafuse::gpu::{DType, Layout, Matrix, Recorder, Tensor};
use lorafuse::kernels::lora::*;
use lorafuse::kernels::matmul::{Form, MatmulOpts, Variant, matmul};

const TOL: f64 = 1e-4;

struct Case {
    m: usize,
    k: usize,
    n: usize,
    ranks: Vec<usize>,
}

fn cases() -> Vec<Case> {
    vec![
        Case { m: 1, k: 45, n: 37, ranks: vec![3] },
        Case { m: 7, k: 130, n: 67, ranks: vec![8, 5] },
        Case { m: 33, k: 96, n: 75, ranks: vec![16, 3, 7] },
        Case { m: 257, k: 61, n: 90, ranks: vec![4, 8] },
    ]
}

fn adapters(rng: &mut Rng, c: &Case) -> Vec<HostAdapter> {
    c.ranks
        .iter()
        .map(|&r| HostAdapter { rank: r, a: rng.vec(r * c.k), b: rng.vec(c.n * r), scale: 32.0 / r as f32 * 0.1 })
        .collect()
}

fn mixes(rng: &mut Rng, m: usize, na: usize) -> Vec<Mix> {
    let weights: Vec<f32> = (0..na).map(|i| if i == 0 { -0.5 } else { 0.3 + 0.2 * i as f32 }).collect();
    let per_row = (0..m).map(|r| if r % 3 == 2 { None } else { Some(rng.below(na)) }).collect();
    let rows = rng.vec(m * na);
    vec![Mix::All(weights), Mix::PerRow(per_row), Mix::Rows(rows)]
}

/// Variants to run the fused layer on: every candidate of both layouts for the given form.
fn variants(form: Form) -> Vec<Variant> {
    let gpu = gpu();
    let mut v = Variant::candidates(gpu, form, Layout::Buffer);
    v.extend(Variant::candidates(gpu, form, Layout::Texture));
    v
}

#[test]
fn fused_forward_matches_reference() {
    let gpu = gpu();
    let seed = seed();
    for v in variants(Form::Nt) {
        for dtype in [DType::F32, DType::F16] {
            for (ci, c) in cases().iter().enumerate() {
                let s = seed + ci as u64;
                let mut rng = Rng::new(s);
                let ads = adapters(&mut rng, c);
                let x = rng.vec(c.m * c.k);
                let mut w = rng.vec(c.n * c.k);
                if dtype == DType::F16 {
                    w = round_f16(&w);
                }
                let stack = LoraStack::new(gpu, v.layout(), c.k, c.n, &ads).unwrap();
                let wm = Matrix::from_host(gpu, v.layout(), c.n, c.k, &w, dtype, "w").unwrap();
                let xt = Tensor::from_f32(gpu, &[c.m, c.k], &x, "x").unwrap();
                let a_host = stack.a_buf.read_f32(gpu).unwrap();
                let b_host = stack.b_buf.read_f32(gpu).unwrap();
                // each case one mix; over the four cases every mix runs on every variant
                for mix in mixes(&mut rng, c.m, ads.len()).into_iter().skip(ci % 3).take(1) {
                    let coef = mix.coef(c.m, stack.scales()).unwrap();
                    let ct = mix.coef_tensor(gpu, c.m, &stack).unwrap();
                    let t = Tensor::zeros(gpu, &[c.m, stack.rp()], DType::F32, "t").unwrap();
                    let y = Tensor::zeros(gpu, &[c.m, c.n], DType::F32, "y").unwrap();
                    t.poison(gpu);
                    y.poison(gpu);
                    let mut rec = Recorder::new(gpu);
                    let f = FusedLinear { w: &wm, lora: &stack, coef: &ct, t: &t };
                    lora_forward(&mut rec, &f, &xt, &y, Some(v)).unwrap();
                    rec.run().unwrap();
                    let seg = stack.seg_host();
                    let rs = RefStack {
                        k: c.k,
                        n: c.n,
                        rp: stack.rp(),
                        a: &a_host,
                        b: &b_host,
                        seg: &seg,
                        coef: &coef,
                        n_adapters: ads.len(),
                    };
                    let (want_y, want_t) = lora_forward_ref(c.m, &x, &w, &rs);
                    let what =
                        format!("fused forward {v} {dtype} m={} k={} n={} ranks={:?} {mix:?}", c.m, c.k, c.n, c.ranks);
                    assert_close(&format!("{what}: T"), &t.read_f32(gpu).unwrap(), &want_t, TOL, s);
                    assert_close(&format!("{what}: Y"), &y.read_f32(gpu).unwrap(), &want_y, TOL, s);
                }
            }
        }
    }
}

#[test]
fn fused_backward_matches_reference() {
    let gpu = gpu();
    let seed = seed();
    let tn = Variant::candidates(gpu, Form::Tn, Layout::Buffer);
    for (vi, v) in variants(Form::Nn).into_iter().enumerate() {
        for dtype in [DType::F32, DType::F16] {
            for (ci, c) in cases().iter().enumerate() {
                let s = seed + 10 * ci as u64;
                let mut rng = Rng::new(s);
                let ads = adapters(&mut rng, c);
                let x = rng.vec(c.m * c.k);
                let dy = rng.vec(c.m * c.n);
                let mut w = rng.vec(c.n * c.k);
                if dtype == DType::F16 {
                    w = round_f16(&w);
                }
                let stack = LoraStack::new(gpu, v.layout(), c.k, c.n, &ads).unwrap();
                let wm = Matrix::from_host(gpu, v.layout(), c.n, c.k, &w, dtype, "w").unwrap();
                let a_host = stack.a_buf.read_f32(gpu).unwrap();
                let b_host = stack.b_buf.read_f32(gpu).unwrap();
                let seg = stack.seg_host();
                let mix = mixes(&mut rng, c.m, ads.len()).swap_remove(ci % 3);
                let coef = mix.coef(c.m, stack.scales()).unwrap();
                let rs = RefStack {
                    k: c.k,
                    n: c.n,
                    rp: stack.rp(),
                    a: &a_host,
                    b: &b_host,
                    seg: &seg,
                    coef: &coef,
                    n_adapters: ads.len(),
                };
                let (_, t_host) = lora_forward_ref(c.m, &x, &w, &rs);
                let t_f32: Vec<f32> = t_host.iter().map(|&v| v as f32).collect();

                let xt = Tensor::from_f32(gpu, &[c.m, c.k], &x, "x").unwrap();
                let dyt = Tensor::from_f32(gpu, &[c.m, c.n], &dy, "dy").unwrap();
                let ct = mix.coef_tensor(gpu, c.m, &stack).unwrap();
                let tt = Tensor::from_f32(gpu, &[c.m, stack.rp()], &t_f32, "t").unwrap();
                let g = Tensor::zeros(gpu, &[c.m, stack.rp()], DType::F32, "g").unwrap();
                let dx = Tensor::zeros(gpu, &[c.m, c.k], DType::F32, "dx").unwrap();
                // every other case accumulates onto gradients already there (micro-batches)
                let accumulate = ci % 2 == 1;
                let prior_a = rng.vec(stack.rp() * c.k);
                let prior_b = rng.vec(c.n * stack.rp());
                let da = Tensor::from_f32(gpu, &[stack.rp(), c.k], &prior_a, "da").unwrap();
                let db = Tensor::from_f32(gpu, &[c.n, stack.rp()], &prior_b, "db").unwrap();
                for t in [&g, &dx] {
                    t.poison(gpu);
                }
                if !accumulate {
                    da.poison(gpu);
                    db.poison(gpu);
                }
                let tv = tn[(vi + ci) % tn.len()];
                let mut rec = Recorder::new(gpu);
                let grads = LoraGrads { dx: Some(&dx), da: &da, db: &db, g: &g, accumulate };
                let f = FusedLinear { w: &wm, lora: &stack, coef: &ct, t: &tt };
                lora_backward(&mut rec, &f, &dyt, &xt, &grads, Some(v), Some(tv)).unwrap();
                rec.run().unwrap();
                let (want_dx, mut want_da, mut want_db) = lora_backward_ref(c.m, &dy, &x, &w, &rs);
                if accumulate {
                    want_da.iter_mut().zip(&prior_a).for_each(|(a, p)| *a += *p as f64);
                    want_db.iter_mut().zip(&prior_b).for_each(|(b, p)| *b += *p as f64);
                }
                let what = format!(
                    "fused backward {v}/{tv} {dtype} m={} k={} n={} ranks={:?} {mix:?}",
                    c.m, c.k, c.n, c.ranks
                );
                assert_close(&format!("{what}: dX"), &dx.read_f32(gpu).unwrap(), &want_dx, TOL, s);
                assert_close(&format!("{what}: dA"), &da.read_f32(gpu).unwrap(), &want_da, TOL, s);
                assert_close(&format!("{what}: dB"), &db.read_f32(gpu).unwrap(), &want_db, TOL, s);
            }
        }
    }
}

/// Gradients are bitwise reproducible: every element is summed by one invocation in a fixed
/// order (no float atomics).
#[test]
fn backward_is_deterministic() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let c = Case { m: 257, k: 130, n: 67, ranks: vec![8, 8] };
    let ads = adapters(&mut rng, &c);
    for layout in [Layout::Buffer, Layout::Texture] {
        if Variant::candidates(gpu, Form::Nn, layout).is_empty() {
            continue;
        }
        let stack = LoraStack::new(gpu, layout, c.k, c.n, &ads).unwrap();
        let wm = Matrix::from_host(gpu, layout, c.n, c.k, &rng.vec(c.n * c.k), DType::F32, "w").unwrap();
        let xt = Tensor::from_f32(gpu, &[c.m, c.k], &rng.vec(c.m * c.k), "x").unwrap();
        let dyt = Tensor::from_f32(gpu, &[c.m, c.n], &rng.vec(c.m * c.n), "dy").unwrap();
        let ct = Mix::All(vec![0.6, 0.4]).coef_tensor(gpu, c.m, &stack).unwrap();
        let tt = Tensor::from_f32(gpu, &[c.m, stack.rp()], &rng.vec(c.m * stack.rp()), "t").unwrap();
        let run = || {
            let g = Tensor::zeros(gpu, &[c.m, stack.rp()], DType::F32, "g").unwrap();
            let dx = Tensor::zeros(gpu, &[c.m, c.k], DType::F32, "dx").unwrap();
            let da = Tensor::zeros(gpu, &[stack.rp(), c.k], DType::F32, "da").unwrap();
            let db = Tensor::zeros(gpu, &[c.n, stack.rp()], DType::F32, "db").unwrap();
            let mut rec = Recorder::new(gpu);
            let grads = LoraGrads { dx: Some(&dx), da: &da, db: &db, g: &g, accumulate: false };
            let f = FusedLinear { w: &wm, lora: &stack, coef: &ct, t: &tt };
            lora_backward(&mut rec, &f, &dyt, &xt, &grads, None, None).unwrap();
            rec.run().unwrap();
            [dx, da, db].map(|t| t.read_f32(gpu).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>())
        };
        assert_eq!(run(), run(), "{} layout: gradients differ between identical runs", layout.name());
    }
}

#[test]
fn sequential_and_merged_match_fused() {
    let gpu = gpu();
    let seed = seed();
    for layout in [Layout::Buffer, Layout::Texture] {
        if Variant::candidates(gpu, Form::Nt, layout).is_empty() {
            continue;
        }
        for dtype in [DType::F32, DType::F16] {
            for (ci, c) in cases().iter().enumerate() {
                let s = seed + ci as u64;
                let mut rng = Rng::new(s);
                let ads = adapters(&mut rng, c);
                let weights: Vec<f32> = (0..ads.len()).map(|i| 0.7 - 0.4 * i as f32).collect();
                let x = rng.vec(c.m * c.k);
                let w = round_f16(&rng.vec(c.n * c.k));
                let xt = Tensor::from_f32(gpu, &[c.m, c.k], &x, "x").unwrap();
                let wm = Matrix::from_host(gpu, layout, c.n, c.k, &w, dtype, "w").unwrap();
                let stack = LoraStack::new(gpu, layout, c.k, c.n, &ads).unwrap();
                let a_host = stack.a_buf.read_f32(gpu).unwrap();
                let b_host = stack.b_buf.read_f32(gpu).unwrap();
                let seg = stack.seg_host();
                let coef = Mix::All(weights.clone()).coef(c.m, stack.scales()).unwrap();
                let rs = RefStack {
                    k: c.k,
                    n: c.n,
                    rp: stack.rp(),
                    a: &a_host,
                    b: &b_host,
                    seg: &seg,
                    coef: &coef,
                    n_adapters: ads.len(),
                };
                let (want, _) = lora_forward_ref(c.m, &x, &w, &rs);
                let what = format!("{} {dtype} m={} ranks={:?}", layout.name(), c.m, c.ranks);

                // sequential: separate A_i, B_i, one shrink and one expand-and-add per adapter
                let factors: Vec<(Matrix, Matrix)> = ads
                    .iter()
                    .map(|ad| {
                        (
                            Matrix::from_host(gpu, layout, ad.rank, c.k, &ad.a, DType::F32, "a").unwrap(),
                            Matrix::from_host(gpu, layout, c.n, ad.rank, &ad.b, DType::F32, "b").unwrap(),
                        )
                    })
                    .collect();
                let seq: Vec<SeqAdapter> = (factors.iter().zip(&ads).zip(&weights))
                    .map(|((f, ad), &wt)| SeqAdapter { a: &f.0, b: &f.1, weight: wt * ad.scale })
                    .collect();
                let ts: Vec<Tensor> =
                    ads.iter().map(|ad| Tensor::zeros(gpu, &[c.m, ad.rank], DType::F32, "t").unwrap()).collect();
                let y = Tensor::zeros(gpu, &[c.m, c.n], DType::F32, "y").unwrap();
                y.poison(gpu);
                let mut rec = Recorder::new(gpu);
                let sequential = Sequential { w: &wm, adapters: &seq, ts: &ts, accumulate: false };
                lora_sequential(&mut rec, &sequential, &xt, &y).unwrap();
                rec.run().unwrap();
                assert_close(&format!("sequential {what}"), &y.read_f32(gpu).unwrap(), &want, TOL, s);

                // merged: W' = W + Σ λ s B A by the merge kernel, then the plain matmul
                let w_buf = if dtype == DType::F16 {
                    Tensor::from_f32_as_f16(gpu, &[c.n, c.k], &w, "w").unwrap()
                } else {
                    Tensor::from_f32(gpu, &[c.n, c.k], &w, "w").unwrap()
                };
                let merged = Tensor::zeros(gpu, &[c.n, c.k], DType::F32, "merged").unwrap();
                merged.poison(gpu);
                let mut rec = Recorder::new(gpu);
                lora_merge(&mut rec, &w_buf, &stack, &weights, &merged).unwrap();
                rec.run().unwrap();
                let mh = merged.read_f32(gpu).unwrap();
                let c_cols: Vec<f32> = seg
                    .iter()
                    .enumerate()
                    .map(
                        |(j, &sg)| {
                            if j < c.ranks.iter().sum() { weights[sg as usize] * ads[sg as usize].scale } else { 0.0 }
                        },
                    )
                    .collect();
                let want_w =
                    lorafuse::kernels::lora_merge::merge_ref(&w, &a_host, &b_host, &c_cols, c.n, c.k, stack.rp());
                assert_close(&format!("merge kernel {what}"), &mh, &want_w, TOL, s);
                let mm = Matrix::from_host(gpu, layout, c.n, c.k, &mh, DType::F32, "w merged").unwrap();
                let y = Tensor::zeros(gpu, &[c.m, c.n], DType::F32, "y").unwrap();
                y.poison(gpu);
                let mut rec = Recorder::new(gpu);
                matmul(&mut rec, Form::Nt, &xt, &mm, &y, &MatmulOpts::default()).unwrap();
                rec.run().unwrap();
                assert_close(&format!("merged {what}"), &y.read_f32(gpu).unwrap(), &want, TOL, s);
            }
        }
    }
}

#[test]
fn merge_writes_f16() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (n, k) = (37, 45);
    let ads = vec![HostAdapter { rank: 5, a: rng.vec(5 * k), b: rng.vec(n * 5), scale: 2.0 }];
    let stack = LoraStack::new(gpu, Layout::Buffer, k, n, &ads).unwrap();
    let w = rng.vec(n * k);
    let wt = Tensor::from_f32(gpu, &[n, k], &w, "w").unwrap();
    let out = Tensor::zeros(gpu, &[n, k], DType::F16, "out").unwrap();
    out.poison(gpu);
    let mut rec = Recorder::new(gpu);
    lora_merge(&mut rec, &wt, &stack, &[0.5], &out).unwrap();
    rec.run().unwrap();
    let a = stack.a_buf.read_f32(gpu).unwrap();
    let b = stack.b_buf.read_f32(gpu).unwrap();
    let c: Vec<f32> = (0..stack.rp()).map(|j| if j < 5 { 1.0 } else { 0.0 }).collect();
    let want = lorafuse::kernels::lora_merge::merge_ref(&w, &a, &b, &c, n, k, stack.rp());
    // f16 output: half-precision rounding, relative 2^-11 per element.
    assert_close("merge to f16", &out.read_f32(gpu).unwrap(), &want, 1e-3, seed);
}

/// A fresh adapter (B = 0) and a stack with no adapters leave the base output unchanged.
#[test]
fn zero_b_and_no_adapters_equal_base() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (m, k, n) = (33, 96, 75);
    let x = rng.vec(m * k);
    let w = rng.vec(n * k);
    for layout in [Layout::Buffer, Layout::Texture] {
        if Variant::candidates(gpu, Form::Nt, layout).is_empty() {
            continue;
        }
        let wm = Matrix::from_host(gpu, layout, n, k, &w, DType::F32, "w").unwrap();
        let xt = Tensor::from_f32(gpu, &[m, k], &x, "x").unwrap();
        let base = lorafuse::kernels::matmul::matmul_ref(Form::Nt, m, n, k, &x, &w);
        let fresh = vec![HostAdapter { rank: 8, a: rng.vec(8 * k), b: vec![0.0; n * 8], scale: 4.0 }];
        for ads in [fresh, Vec::new()] {
            let stack = LoraStack::new(gpu, layout, k, n, &ads).unwrap();
            let ct = Mix::All(vec![1.0; ads.len()]).coef_tensor(gpu, m, &stack).unwrap();
            let t = Tensor::zeros(gpu, &[m, stack.rp()], DType::F32, "t").unwrap();
            let y = Tensor::zeros(gpu, &[m, n], DType::F32, "y").unwrap();
            y.poison(gpu);
            let mut rec = Recorder::new(gpu);
            lora_forward(&mut rec, &FusedLinear { w: &wm, lora: &stack, coef: &ct, t: &t }, &xt, &y, None).unwrap();
            rec.run().unwrap();
            assert_close(
                &format!("{} adapters, {} layout", ads.len(), layout.name()),
                &y.read_f32(gpu).unwrap(),
                &base,
                TOL,
                seed,
            );
        }
    }
}

#[test]
fn mismatched_adapters_are_errors() {
    let gpu = gpu();
    let bad = vec![HostAdapter { rank: 4, a: vec![0.0; 4 * 10], b: vec![0.0; 7 * 3], scale: 1.0 }];
    let err = LoraStack::new(gpu, Layout::Buffer, 10, 7, &bad).err().expect("a wrong B shape must be refused");
    assert!(err.to_string().contains("adapter 0"), "{err}");
    let ok = vec![HostAdapter { rank: 4, a: vec![0.0; 40], b: vec![0.0; 28], scale: 1.0 }];
    let stack = LoraStack::new(gpu, Layout::Buffer, 10, 7, &ok).unwrap();
    let w = Matrix::from_host(gpu, Layout::Buffer, 8, 10, &[0.0; 80], DType::F32, "w").unwrap();
    let x = Tensor::zeros(gpu, &[2, 10], DType::F32, "x").unwrap();
    let ct = Mix::All(vec![1.0]).coef_tensor(gpu, 2, &stack).unwrap();
    let t = Tensor::zeros(gpu, &[2, 4], DType::F32, "t").unwrap();
    let y = Tensor::zeros(gpu, &[2, 8], DType::F32, "y").unwrap();
    let mut rec = Recorder::new(gpu);
    let err = lora_forward(&mut rec, &FusedLinear { w: &w, lora: &stack, coef: &ct, t: &t }, &x, &y, None).unwrap_err();
    assert!(err.to_string().contains("adapters for [7, 10]"), "{err}");
    assert!(Mix::All(vec![1.0, 2.0]).coef_tensor(gpu, 2, &stack).is_err());
}
