//! Backward kernels for training (RMSNorm, SwiGLU, RoPE, masked cross-entropy) and the optimizer
//! (gradient norm, AdamW) and LoRA dropout against their CPU references on fresh random inputs, outputs poisoned;
//! each analytic reference is itself checked against central finite differences of its forward.

mod common;

use common::*;
use lorafuse::gpu::{DType, Recorder, Tensor};
use lorafuse::kernels::cross_entropy::{MASKED, cross_entropy, cross_entropy_ref};
use lorafuse::kernels::dropout::{Dropout, dropout, dropout_ref, keep_ref};
use lorafuse::kernels::elementwise::{swiglu_backward, swiglu_backward_ref, swiglu_ref};
use lorafuse::kernels::optimizer::{AdamW, AdamwState, HostAdamw, adamw, adamw_ref, sumsq, sumsq_partials};
use lorafuse::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_backward_ref, rmsnorm_ref};
use lorafuse::kernels::rope::{RopeTable, rope_backward, rope_ref};

/// Central difference of f at x[i] (perturbing a copy; the exact step taken is used).
fn fd(f: &dyn Fn(&[f32]) -> f64, x: &[f32], i: usize, h: f32) -> f64 {
    let (mut a, mut b) = (x.to_vec(), x.to_vec());
    a[i] += h;
    b[i] -= h;
    (f(&a) - f(&b)) / (a[i] as f64 - b[i] as f64)
}

fn dot(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * *y as f64).sum()
}

#[test]
fn rmsnorm_backward_matches_reference_and_finite_differences() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    // the reference against finite differences of L = Σ dy ⊙ rmsnorm(x)
    let (h, eps) = (7, 1e-5);
    let x = rng.vec(2 * h);
    let w = rng.vec(h);
    let dy = rng.vec(2 * h);
    let analytic = rmsnorm_backward_ref(&x, &w, &dy, eps);
    for (i, want) in analytic.iter().enumerate() {
        let g = fd(&|x: &[f32]| dot(&rmsnorm_ref(x, &w, eps), &dy), &x, i, 1e-3);
        assert!((g - want).abs() < 1e-3, "dx[{i}]: fd {g} vs {want}");
    }
    for (r, h) in [(1, 576), (7, 45), (33, 130)] {
        for accumulate in [false, true] {
            let x: Vec<f32> = rng.vec(r * h).iter().map(|v| v * 3.0).collect();
            let w = rng.vec(h);
            let dy = rng.vec(r * h);
            let prior = rng.vec(r * h);
            let dx = Tensor::from_f32(gpu, &[r, h], &prior, "dx").unwrap();
            if !accumulate {
                dx.poison(gpu);
            }
            let t = |v: &[f32], n: &str| Tensor::from_f32(gpu, &[r, h], v, n).unwrap();
            let mut rec = Recorder::new(gpu);
            rmsnorm_backward(
                &mut rec,
                &t(&x, "x"),
                &Tensor::from_f32(gpu, &[h], &w, "w").unwrap(),
                &t(&dy, "dy"),
                &dx,
                1e-5,
                accumulate,
            )
            .unwrap();
            rec.run().unwrap();
            let mut want = rmsnorm_backward_ref(&x, &w, &dy, 1e-5);
            if accumulate {
                want.iter_mut().zip(&prior).for_each(|(a, b)| *a += *b as f64);
            }
            assert_close(
                &format!("rmsnorm backward [{r}, {h}] accumulate={accumulate}"),
                &dx.read_f32(gpu).unwrap(),
                &want,
                1e-5,
                seed,
            );
        }
    }
}

#[test]
fn swiglu_backward_matches_reference_and_finite_differences() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let f = 5;
    let gu: Vec<f32> = rng.vec(2 * 2 * f).iter().map(|v| v * 3.0).collect();
    let dout = rng.vec(2 * f);
    let analytic = swiglu_backward_ref(&gu, &dout, f);
    let forward = |gu: &[f32]| -> f64 {
        let (mut g, mut u) = (Vec::new(), Vec::new());
        for row in gu.chunks(2 * f) {
            g.extend_from_slice(&row[..f]);
            u.extend_from_slice(&row[f..]);
        }
        dot(&swiglu_ref(&g, &u), &dout)
    };
    for (i, want) in analytic.iter().enumerate() {
        let g = fd(&forward, &gu, i, 1e-3);
        assert!((g - want).abs() < 1e-3, "dgu[{i}]: fd {g} vs {want}");
    }
    for (r, f) in [(1, 1536), (7, 45), (33, 130)] {
        let gu: Vec<f32> = rng.vec(r * 2 * f).iter().map(|v| v * 6.0).collect();
        let dout = rng.vec(r * f);
        let out = Tensor::zeros(gpu, &[r, 2 * f], DType::F32, "dgu").unwrap();
        out.poison(gpu);
        let mut rec = Recorder::new(gpu);
        swiglu_backward(
            &mut rec,
            &Tensor::from_f32(gpu, &[r, 2 * f], &gu, "gu").unwrap(),
            &Tensor::from_f32(gpu, &[r, f], &dout, "dout").unwrap(),
            &out,
        )
        .unwrap();
        rec.run().unwrap();
        assert_close(
            &format!("swiglu backward [{r}, {f}]"),
            &out.read_f32(gpu).unwrap(),
            &swiglu_backward_ref(&gu, &dout, f),
            1e-5,
            seed,
        );
    }
}

/// The backward of a rotation is its transpose: rotating a rotated gradient back recovers it, in
/// the q and k blocks, and the v block is left alone.
#[test]
fn rope_backward_is_the_inverse_rotation() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    for (heads, kv, hd, r) in [(9, 3, 64, 7), (4, 2, 12, 33)] {
        let freqs: Vec<f64> = (0..hd / 2).map(|i| 10000f64.powf(-(2.0 * i as f64) / hd as f64)).collect();
        let table = RopeTable::new(gpu, &freqs, 64).unwrap();
        let pos: Vec<u32> = (0..r).map(|_| rng.below(64) as u32).collect();
        let width = (heads + 2 * kv) * hd;
        let orig = rng.vec(r * width);
        // rotate q and k blocks forward on the host
        let qk_cols = (heads + kv) * hd;
        let block: Vec<f32> = (0..r).flat_map(|i| orig[i * width..i * width + qk_cols].to_vec()).collect();
        let rotated = rope_ref(&block, heads + kv, hd, &pos, &freqs);
        let mut input = orig.clone();
        for i in 0..r {
            for c in 0..qk_cols {
                input[i * width + c] = rotated[i * qk_cols + c] as f32;
            }
        }
        let t = Tensor::from_f32(gpu, &[r, width], &input, "dqkv").unwrap();
        let pt = Tensor::from_u32(gpu, &[r], &pos, "pos").unwrap();
        let mut rec = Recorder::new(gpu);
        rope_backward(&mut rec, &t, heads, kv, &pt, &table).unwrap();
        rec.run().unwrap();
        let want: Vec<f64> = orig.iter().map(|&x| x as f64).collect();
        assert_close(&format!("rope backward H={heads} G={kv} d={hd}"), &t.read_f32(gpu).unwrap(), &want, 1e-6, seed);
    }
}

#[test]
fn cross_entropy_matches_reference_and_finite_differences() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let v = 11;
    let logits: Vec<f32> = rng.vec(3 * v).iter().map(|x| x * 5.0).collect();
    let target = [4u32, MASKED, 0];
    let (_, analytic) = cross_entropy_ref(&logits, &target, v, 0.5);
    for (i, want) in analytic.iter().enumerate() {
        let g = fd(&|l: &[f32]| 0.5 * cross_entropy_ref(l, &target, v, 1.0).0.iter().sum::<f64>(), &logits, i, 1e-3);
        assert!((g - want).abs() < 1e-4, "dlogit[{i}]: fd {g} vs {want}");
    }
    for (r, v) in [(1, 49152), (7, 1000), (33, 97)] {
        let logits: Vec<f32> = rng.vec(r * v).iter().map(|x| x * 8.0).collect();
        let target: Vec<u32> = (0..r).map(|i| if i % 3 == 1 { MASKED } else { rng.below(v) as u32 }).collect();
        let counted = target.iter().filter(|&&t| t != MASKED).count().max(1);
        let scale = 1.0 / counted as f32;
        let lt = Tensor::from_f32(gpu, &[r, v], &logits, "logits").unwrap();
        let tt = Tensor::from_u32(gpu, &[r], &target, "targets").unwrap();
        let loss = Tensor::zeros(gpu, &[r], DType::F32, "loss").unwrap();
        loss.poison(gpu);
        let mut rec = Recorder::new(gpu);
        cross_entropy(&mut rec, &lt, &tt, &loss, scale).unwrap();
        rec.run().unwrap();
        let (want_loss, want_grad) = cross_entropy_ref(&logits, &target, v, scale as f64);
        assert_close(&format!("cross-entropy loss [{r}, {v}]"), &loss.read_f32(gpu).unwrap(), &want_loss, 1e-5, seed);
        assert_close(&format!("cross-entropy grad [{r}, {v}]"), &lt.read_f32(gpu).unwrap(), &want_grad, 1e-5, seed);
    }
}

#[test]
fn adamw_and_gradient_norm_match_reference() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    for n in [1, 257, 5000] {
        let p0 = rng.vec(n);
        let mask: Vec<f32> = (0..n).map(|i| if i % 5 == 3 { 0.0 } else { 1.0 }).collect();
        let hp = AdamW { lr: 3e-3, weight_decay: 0.1, ..AdamW::default() };
        let p = Tensor::from_f32(gpu, &[n], &p0, "p").unwrap();
        let m = Tensor::zeros(gpu, &[n], DType::F32, "m").unwrap();
        let v = Tensor::zeros(gpu, &[n], DType::F32, "v").unwrap();
        let mt = Tensor::from_f32(gpu, &[n], &mask, "mask").unwrap();
        let (mut rp, mut rm, mut rv): (Vec<f64>, Vec<f64>, Vec<f64>) =
            (p0.iter().map(|&x| x as f64).collect(), vec![0.0; n], vec![0.0; n]);
        for step in 1..=3 {
            let g = rng.vec(n);
            let gt = Tensor::from_f32(gpu, &[n], &g, "g").unwrap();
            // the clipping factor from the masked gradient norm
            let partials = Tensor::zeros(gpu, &[sumsq_partials(n)], DType::F32, "partials").unwrap();
            partials.poison(gpu);
            let mut rec = Recorder::new(gpu);
            sumsq(&mut rec, &gt, Some(&mt), &partials).unwrap();
            rec.run().unwrap();
            let norm = partials.read_f32(gpu).unwrap().iter().map(|&x| x as f64).sum::<f64>().sqrt();
            let want_norm = g.iter().zip(&mask).map(|(&a, &b)| (a * b) as f64 * (a * b) as f64).sum::<f64>().sqrt();
            assert!((norm - want_norm).abs() <= 1e-5 * want_norm.max(1.0), "norm {norm} vs {want_norm}");
            let scale = (1.0 / norm).min(1.0) as f32;
            let mut rec = Recorder::new(gpu);
            let state = AdamwState { param: &p, grad: &gt, mask: Some(&mt), m: &m, v: &v };
            adamw(&mut rec, &hp, step, scale, &state).unwrap();
            rec.run().unwrap();
            let host = HostAdamw { param: &mut rp, grad: &g, mask: Some(&mask), m: &mut rm, v: &mut rv };
            adamw_ref(&hp, step, scale as f64, host);
            // Each step rounds an update of about lr in f32, so a parameter that comes near 0 (n = 1
            // may draw one) has a relative error far above f32's own: the error is measured
            // against the parameters and the updates so far together. NaN fails the comparison.
            let got = p.read_f32(gpu).unwrap();
            let err = got.iter().zip(&rp).map(|(&g, w)| (g as f64 - w).powi(2)).sum::<f64>().sqrt();
            let size = rp.iter().map(|w| w * w).sum::<f64>().sqrt() + hp.lr as f64 * step as f64 * (n as f64).sqrt();
            assert!(
                err <= 1e-6 * size,
                "AdamW n={n} step {step}: error {err:.3e} against {size:.3e} (seed {seed}; rerun with LORAFUSE_TEST_SEED={seed})"
            );
            assert_close(&format!("AdamW moment 1, n={n}"), &m.read_f32(gpu).unwrap(), &rm, 1e-5, seed);
        }
    }
}

/// Dropout: the mask is the CPU reference's bit for bit (so the backward can regenerate it), keeps
/// 1 − p of the elements, differs between seeds, and the accumulating form adds to what is there.
#[test]
fn dropout_matches_reference_and_keeps_its_share() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (r, c) = (37, 1001);
    let x = rng.vec(r * c);
    let a = Tensor::from_f32(gpu, &[r, c], &x, "a").unwrap();
    let out = Tensor::zeros(gpu, &[r, c], DType::F32, "out").unwrap();
    for p in [0.0f32, 0.05, 0.5] {
        let d = Dropout { p, seed: rng.next_u64() };
        out.poison(gpu);
        let mut rec = Recorder::new(gpu);
        dropout(&mut rec, &d, &a, &out, false).unwrap();
        rec.run().unwrap();
        let got = out.read_f32(gpu).unwrap();
        let want = dropout_ref(&d, &x);
        assert!(got.iter().zip(&want).all(|(g, w)| g == w), "p={p}: GPU mask or scale differs (seed {seed})");
        let n = x.len() as f64;
        let kept = (0..x.len() as u32).filter(|&i| keep_ref(&d, i)).count() as f64 / n;
        let sd = (p as f64 * (1.0 - p as f64) / n).sqrt();
        assert!((kept - (1.0 - p as f64)).abs() <= 5.0 * sd + 1e-12, "p={p}: kept {kept} (seed {seed})");
        if p > 0.0 {
            let other = Dropout { p, seed: d.seed ^ 1 };
            let same = (0..x.len() as u32).filter(|&i| keep_ref(&d, i) == keep_ref(&other, i)).count() as f64 / n;
            let expect = (1.0 - p as f64).powi(2) + (p as f64).powi(2);
            assert!((same - expect).abs() < 0.02, "p={p}: neighbouring seeds agree on {same} of the mask");
        }
        // accumulate onto a random tensor
        let base = rng.vec(r * c);
        let acc = Tensor::from_f32(gpu, &[r, c], &base, "acc").unwrap();
        let mut rec = Recorder::new(gpu);
        dropout(&mut rec, &d, &a, &acc, true).unwrap();
        rec.run().unwrap();
        let want: Vec<f64> = base.iter().zip(&want).map(|(&b, &w)| b as f64 + w as f64).collect();
        assert_close(&format!("dropout accumulate p={p}"), &acc.read_f32(gpu).unwrap(), &want, 1e-7, seed);
    }
    let mut rec = Recorder::new(gpu);
    assert!(dropout(&mut rec, &Dropout { p: 1.0, seed: 0 }, &a, &out, false).is_err());
}

/// Attention's backward over a training batch (sequences of different lengths, each one's rows
/// together), against the f64 reference, itself checked by finite differences of the forward.
#[test]
fn attention_backward_matches_reference_and_finite_differences() {
    use lorafuse::kernels::attention::{
        Attention, Heads, Saved, Spans, attention, attention_backward, attention_backward_ref, attention_causal_ref,
    };
    use lorafuse::kernels::rope::{Cache, Rows};
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    // host forward O for per-row q, k, v in the span layout
    let forward = |q: &[f32], k: &[f32], v: &[f32], spans: &[(usize, usize)], heads: usize, kv: usize, hd: usize| {
        attention_causal_ref(q, k, v, spans, Heads { heads, kv_heads: kv, hd })
    };
    {
        let (heads, kv, hd) = (2, 1, 4);
        let spans = [(0usize, 3usize), (3, 2)];
        let r = 5;
        let q = rng.vec(r * heads * hd);
        let k = rng.vec(r * kv * hd);
        let v = rng.vec(r * kv * hd);
        let dout = rng.vec(r * heads * hd);
        let (dq, dk, dv) = attention_backward_ref(&q, &k, &v, &dout, &spans, Heads { heads, kv_heads: kv, hd });
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            forward(q, k, v, &spans, heads, kv, hd).iter().zip(&dout).map(|(a, b)| a * *b as f64).sum()
        };
        for (i, want) in dq.iter().enumerate() {
            let g = fd(&|x: &[f32]| loss(x, &k, &v), &q, i, 1e-3);
            assert!((g - want).abs() < 1e-3, "dq[{i}]: fd {g} vs {want}");
        }
        for i in 0..k.len() {
            let gk = fd(&|x: &[f32]| loss(&q, x, &v), &k, i, 1e-3);
            let gv = fd(&|x: &[f32]| loss(&q, &k, x), &v, i, 1e-3);
            assert!((gk - dk[i]).abs() < 1e-3, "dk[{i}]: fd {gk} vs {}", dk[i]);
            assert!((gv - dv[i]).abs() < 1e-3, "dv[{i}]: fd {gv} vs {}", dv[i]);
        }
    }
    for (heads, kv, hd, lens) in
        [(9usize, 3usize, 64usize, vec![7usize, 1, 12]), (4, 2, 12, vec![33]), (6, 6, 8, vec![3, 5])]
    {
        let r: usize = lens.iter().sum();
        let slots = lens.len();
        let max_len = *lens.iter().max().unwrap() + 2;
        let mut spans = Vec::new();
        let (mut pos, mut slot, mut start) = (Vec::new(), Vec::new(), 0);
        for (s, &l) in lens.iter().enumerate() {
            spans.push((start, l));
            for t in 0..l {
                pos.push(t as u32);
                slot.push(s as u32);
            }
            start += l;
        }
        let (nq, nkv) = (heads * hd, kv * hd);
        let q: Vec<f32> = rng.vec(r * nq).iter().map(|x| x * 2.0).collect();
        let k = rng.vec(r * nkv);
        let v = rng.vec(r * nkv);
        let dout = rng.vec(r * nq);
        let width = nq + 2 * nkv;
        let mut qkv = vec![0.0f32; r * width];
        let mut kc = vec![0.0f32; slots * kv * max_len * hd];
        let mut vc = kc.clone();
        for row in 0..r {
            qkv[row * width..row * width + nq].copy_from_slice(&q[row * nq..(row + 1) * nq]);
            qkv[row * width + nq..row * width + nq + nkv].copy_from_slice(&k[row * nkv..(row + 1) * nkv]);
            qkv[row * width + nq + nkv..(row + 1) * width].copy_from_slice(&v[row * nkv..(row + 1) * nkv]);
            for g in 0..kv {
                let dst = ((slot[row] as usize * kv + g) * max_len + pos[row] as usize) * hd;
                kc[dst..dst + hd].copy_from_slice(&k[(row * kv + g) * hd..][..hd]);
                vc[dst..dst + hd].copy_from_slice(&v[(row * kv + g) * hd..][..hd]);
            }
        }
        let t = |shape: &[usize], x: &[f32], n: &str| Tensor::from_f32(gpu, shape, x, n).unwrap();
        let qkvt = t(&[r, width], &qkv, "qkv");
        let cache_shape = [slots, kv, max_len, hd];
        let (kct, vct) = (t(&cache_shape, &kc, "kc"), t(&cache_shape, &vc, "vc"));
        let cache = Cache { k: &kct, v: &vct };
        let pt = Tensor::from_u32(gpu, &[r], &pos, "pos").unwrap();
        let st = Tensor::from_u32(gpu, &[r], &slot, "slot").unwrap();
        let rows = Rows { pos: &pt, slot: &st };
        let out = Tensor::zeros(gpu, &[r, nq], DType::F32, "out").unwrap();
        let lse = Tensor::zeros(gpu, &[r, heads], DType::F32, "lse").unwrap();
        let dqkv = Tensor::zeros(gpu, &[r, width], DType::F32, "dqkv").unwrap();
        let dsum = Tensor::zeros(gpu, &[r, heads], DType::F32, "dsum").unwrap();
        dqkv.poison(gpu);
        let starts: Vec<u32> = spans.iter().map(|s| s.0 as u32).collect();
        let lens_u: Vec<u32> = spans.iter().map(|s| s.1 as u32).collect();
        let (sst, slt) = (
            Tensor::from_u32(gpu, &[slots], &starts, "start").unwrap(),
            Tensor::from_u32(gpu, &[slots], &lens_u, "len").unwrap(),
        );
        let mut rec = Recorder::new(gpu);
        let at = Attention { qkv: &qkvt, heads, cache: &cache, rows: &rows, prefix: None, rope: None, variant: None };
        attention(&mut rec, &at, &out, Some(&lse)).unwrap();
        attention_backward(
            &mut rec,
            &at,
            &Spans { start: &sst, len: &slt },
            &Saved { out: &out, lse: &lse },
            &t(&[r, nq], &dout, "dout"),
            &dqkv,
            &dsum,
        )
        .unwrap();
        rec.run().unwrap();
        let got = dqkv.read_f32(gpu).unwrap();
        let (dq, dk, dv) = attention_backward_ref(&q, &k, &v, &dout, &spans, Heads { heads, kv_heads: kv, hd });
        let want: Vec<f64> = (0..r)
            .flat_map(|row| {
                dq[row * nq..(row + 1) * nq]
                    .iter()
                    .chain(&dk[row * nkv..(row + 1) * nkv])
                    .chain(&dv[row * nkv..(row + 1) * nkv])
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_close(&format!("attention backward H={heads} G={kv} d={hd} lens={lens:?}"), &got, &want, 1e-4, seed);
    }
}
