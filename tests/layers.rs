//! The model's other kernels against their CPU references on fresh random inputs of awkward
//! sizes, outputs poisoned first: row gather, RMSNorm, SwiGLU, bias, RoPE with the KV-cache
//! store, and grouped-query attention over ragged rows.

mod common;

use common::*;
use lorafuse::gpu::{DType, Recorder, Tensor};
use lorafuse::kernels::attention::{Attention, Heads, attention, attention_ref};
use lorafuse::kernels::elementwise::{add_bias, swiglu, swiglu_ref};
use lorafuse::kernels::embedding::{gather, gather_ref};
use lorafuse::kernels::rmsnorm::{rmsnorm, rmsnorm_ref};
use lorafuse::kernels::rope::{Cache, RopeTable, Rows, rope_kv, rope_ref};

#[test]
fn gather_rows() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    for (v, h, r) in [(50, 45, 7), (1000, 576, 33), (3, 1, 1)] {
        let table = rng.vec(v * h);
        let idx: Vec<u32> = (0..r).map(|_| rng.below(v) as u32).collect();
        let it = Tensor::from_u32(gpu, &[r], &idx, "idx").unwrap();
        for dtype in [DType::F32, DType::F16] {
            let t = match dtype {
                DType::F16 => Tensor::from_f32_as_f16(gpu, &[v, h], &table, "t").unwrap(),
                _ => Tensor::from_f32(gpu, &[v, h], &table, "t").unwrap(),
            };
            let out = Tensor::zeros(gpu, &[r, h], DType::F32, "out").unwrap();
            out.poison(gpu);
            let mut rec = Recorder::new(gpu);
            gather(&mut rec, &t, &it, &out).unwrap();
            rec.run().unwrap();
            let src = if dtype == DType::F16 { round_f16(&table) } else { table.clone() };
            assert_eq!(out.read_f32(gpu).unwrap(), gather_ref(&src, h, &idx), "gather {dtype} [{v}, {h}] x{r}");
        }
    }
}

#[test]
fn scatter_and_copy_rows() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (t, h, r) = (40, 45, 13);
    let mut idx: Vec<u32> = (0..t as u32).collect();
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    idx.truncate(r);
    let src = rng.vec(r * h);
    let base = rng.vec(t * h);
    let out = Tensor::from_f32(gpu, &[t, h], &base, "out").unwrap();
    let copied = Tensor::zeros(gpu, &[r, h], DType::F32, "copy").unwrap();
    copied.poison(gpu);
    let st = Tensor::from_f32(gpu, &[r, h], &src, "src").unwrap();
    let mut rec = Recorder::new(gpu);
    lorafuse::kernels::embedding::scatter(&mut rec, &st, &Tensor::from_u32(gpu, &[r], &idx, "idx").unwrap(), &out)
        .unwrap();
    lorafuse::kernels::elementwise::copy(&mut rec, &st, &copied).unwrap();
    rec.run().unwrap();
    let mut want = base.clone();
    for (i, &row) in idx.iter().enumerate() {
        want[row as usize * h..(row as usize + 1) * h].copy_from_slice(&src[i * h..(i + 1) * h]);
    }
    assert_eq!(out.read_f32(gpu).unwrap(), want, "scatter");
    assert_eq!(copied.read_f32(gpu).unwrap(), src, "copy");
}

#[test]
fn rmsnorm_rows() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    for (r, h) in [(1, 576), (7, 45), (33, 130), (257, 64)] {
        let x: Vec<f32> = rng.vec(r * h).iter().map(|v| v * 3.0).collect();
        let w = rng.vec(h);
        let xt = Tensor::from_f32(gpu, &[r, h], &x, "x").unwrap();
        let wt = Tensor::from_f32(gpu, &[h], &w, "w").unwrap();
        let out = Tensor::zeros(gpu, &[r, h], DType::F32, "out").unwrap();
        out.poison(gpu);
        let mut rec = Recorder::new(gpu);
        rmsnorm(&mut rec, &xt, &wt, &out, 1e-5).unwrap();
        rec.run().unwrap();
        assert_close(
            &format!("rmsnorm [{r}, {h}]"),
            &out.read_f32(gpu).unwrap(),
            &rmsnorm_ref(&x, &w, 1e-5),
            1e-5,
            seed,
        );
    }
}

#[test]
fn swiglu_and_bias() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    for (r, f) in [(1, 1536), (7, 45), (33, 130)] {
        let g: Vec<f32> = rng.vec(r * f).iter().map(|v| v * 6.0).collect();
        let u = rng.vec(r * f);
        let gu: Vec<f32> =
            (0..r).flat_map(|i| g[i * f..(i + 1) * f].iter().chain(&u[i * f..(i + 1) * f]).copied()).collect();
        let gut = Tensor::from_f32(gpu, &[r, 2 * f], &gu, "gate_up").unwrap();
        let ut = Tensor::from_f32(gpu, &[r, f], &u, "u").unwrap();
        let out = Tensor::zeros(gpu, &[r, f], DType::F32, "out").unwrap();
        out.poison(gpu);
        let mut rec = Recorder::new(gpu);
        swiglu(&mut rec, &gut, &out).unwrap();
        rec.run().unwrap();
        assert_close(&format!("swiglu [{r}, {f}]"), &out.read_f32(gpu).unwrap(), &swiglu_ref(&g, &u), 1e-6, seed);

        let b = rng.vec(f);
        let bt = Tensor::from_f32(gpu, &[f], &b, "b").unwrap();
        let mut rec = Recorder::new(gpu);
        add_bias(&mut rec, &ut, &bt).unwrap();
        rec.run().unwrap();
        let want: Vec<f64> = u.iter().enumerate().map(|(i, &v)| v as f64 + b[i % f] as f64).collect();
        assert_close(&format!("bias [{r}, {f}]"), &ut.read_f32(gpu).unwrap(), &want, 1e-7, seed);
    }
}

/// Rows of [q | k | v], as the fused projection writes them.
fn stack_qkv(q: &[f32], k: &[f32], v: &[f32], r: usize, nq: usize, nkv: usize) -> Vec<f32> {
    (0..r)
        .flat_map(|i| {
            q[i * nq..(i + 1) * nq].iter().chain(&k[i * nkv..(i + 1) * nkv]).chain(&v[i * nkv..(i + 1) * nkv]).copied()
        })
        .collect()
}

fn inv_freq(hd: usize, theta: f64) -> Vec<f64> {
    (0..hd / 2).map(|i| theta.powf(-(2.0 * i as f64) / hd as f64)).collect()
}

/// Ragged rows: several sequences (slots) at various positions, as a prefill and a decode step
/// mix them.
fn ragged_rows(rng: &mut Rng, slots: usize, max_len: usize, r: usize) -> (Vec<u32>, Vec<u32>) {
    let slot: Vec<u32> = (0..r).map(|_| rng.below(slots) as u32).collect();
    let pos: Vec<u32> = (0..r).map(|_| rng.below(max_len) as u32).collect();
    (slot, pos)
}

#[test]
fn rope_rotates_q_and_stores_kv() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    for (heads, kv_heads, hd, r) in [(9, 3, 64, 7), (4, 4, 12, 33), (2, 1, 8, 1)] {
        let (slots, max_len) = (3, 40);
        // distinct (slot, pos) pairs, so each cache cell has one writer
        let mut cells: Vec<(u32, u32)> =
            (0..slots as u32).flat_map(|s| (0..max_len as u32).map(move |p| (s, p))).collect();
        for i in (1..cells.len()).rev() {
            cells.swap(i, rng.below(i + 1));
        }
        let (slot, pos): (Vec<u32>, Vec<u32>) = cells[..r].iter().copied().unzip();
        let q = rng.vec(r * heads * hd);
        let k = rng.vec(r * kv_heads * hd);
        let v = rng.vec(r * kv_heads * hd);
        let freqs = inv_freq(hd, 10000.0);
        let table = RopeTable::new(gpu, &freqs, max_len).unwrap();
        let (nq, nkv) = (heads * hd, kv_heads * hd);
        let qkv = stack_qkv(&q, &k, &v, r, nq, nkv);
        let qkvt = Tensor::from_f32(gpu, &[r, nq + 2 * nkv], &qkv, "qkv").unwrap();
        let cache_shape = [slots, kv_heads, max_len, hd];
        let kc = Tensor::zeros(gpu, &cache_shape, DType::F32, "kc").unwrap();
        let vc = Tensor::zeros(gpu, &cache_shape, DType::F32, "vc").unwrap();
        kc.poison(gpu);
        vc.poison(gpu);
        let pt = Tensor::from_u32(gpu, &[r], &pos, "pos").unwrap();
        let st = Tensor::from_u32(gpu, &[r], &slot, "slot").unwrap();
        let mut rec = Recorder::new(gpu);
        rope_kv(&mut rec, &qkvt, heads, &Rows { pos: &pt, slot: &st }, &table, &Cache { k: &kc, v: &vc }).unwrap();
        rec.run().unwrap();
        let got = qkvt.read_f32(gpu).unwrap();
        let got_q: Vec<f32> = (0..r).flat_map(|i| got[i * (nq + 2 * nkv)..][..nq].to_vec()).collect();
        assert_close("rope q", &got_q, &rope_ref(&q, heads, hd, &pos, &freqs), 1e-6, seed);
        let k_v_untouched: Vec<f32> = (0..r).flat_map(|i| got[i * (nq + 2 * nkv) + nq..][..2 * nkv].to_vec()).collect();
        let want_kv: Vec<f64> = (0..r)
            .flat_map(|i| qkv[i * (nq + 2 * nkv) + nq..][..2 * nkv].iter().map(|&x| x as f64).collect::<Vec<_>>())
            .collect();
        assert_close("k and v left in place", &k_v_untouched, &want_kv, 0.0, seed);
        let k_rot = rope_ref(&k, kv_heads, hd, &pos, &freqs);
        let kc_h = kc.read_f32(gpu).unwrap();
        let vc_h = vc.read_f32(gpu).unwrap();
        let (mut got_k, mut want_k, mut got_v, mut want_v) = (vec![], vec![], vec![], vec![]);
        for row in 0..r {
            for g in 0..kv_heads {
                let cell = ((slot[row] as usize * kv_heads + g) * max_len + pos[row] as usize) * hd;
                got_k.extend_from_slice(&kc_h[cell..cell + hd]);
                want_k.extend_from_slice(&k_rot[(row * kv_heads + g) * hd..][..hd]);
                got_v.extend_from_slice(&vc_h[cell..cell + hd]);
                want_v.extend(v[(row * kv_heads + g) * hd..][..hd].iter().map(|&x| x as f64));
            }
        }
        assert_close("rope k in cache", &got_k, &want_k, 1e-6, seed);
        assert_close("v in cache", &got_v, &want_v, 0.0, seed);
    }
}

#[test]
fn attention_over_ragged_rows() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    for (heads, kv_heads, hd, r, max_len) in
        [(9, 3, 64, 7, 50), (4, 4, 12, 33, 17), (2, 1, 8, 1, 300), (6, 2, 16, 20, 9)]
    {
        let slots = 3;
        let (slot, pos) = ragged_rows(&mut rng, slots, max_len, r);
        let q: Vec<f32> = rng.vec(r * heads * hd).iter().map(|v| v * 4.0).collect();
        let n = slots * kv_heads * max_len * hd;
        let kc = rng.vec(n);
        let vc = rng.vec(n);
        let cache_shape = [slots, kv_heads, max_len, hd];
        let (nq, nkv) = (heads * hd, kv_heads * hd);
        // the k and v blocks of qkv are not read by attention: NaN proves it
        let nan = vec![f32::NAN; r * nkv];
        let qt = Tensor::from_f32(gpu, &[r, nq + 2 * nkv], &stack_qkv(&q, &nan, &nan, r, nq, nkv), "qkv").unwrap();
        let kt = Tensor::from_f32(gpu, &cache_shape, &kc, "kc").unwrap();
        let vt = Tensor::from_f32(gpu, &cache_shape, &vc, "vc").unwrap();
        let pt = Tensor::from_u32(gpu, &[r], &pos, "pos").unwrap();
        let st = Tensor::from_u32(gpu, &[r], &slot, "slot").unwrap();
        let out = Tensor::zeros(gpu, &[r, heads * hd], DType::F32, "out").unwrap();
        let lse = Tensor::zeros(gpu, &[r, heads], DType::F32, "lse").unwrap();
        out.poison(gpu);
        lse.poison(gpu);
        let mut rec = Recorder::new(gpu);
        let (cache, rows) = (Cache { k: &kt, v: &vt }, Rows { pos: &pt, slot: &st });
        attention(
            &mut rec,
            &Attention { qkv: &qt, heads, cache: &cache, rows: &rows, prefix: None, rope: None, variant: None },
            &out,
            Some(&lse),
        )
        .unwrap();
        rec.run().unwrap();
        let shape = Heads { heads, kv_heads, hd };
        let (want, want_lse) = attention_ref(&q, &kc, &vc, (&pos, &slot), shape, max_len);
        let what = format!("attention H={heads} G={kv_heads} d={hd} rows={r} max_len={max_len}");
        assert_close(&what, &out.read_f32(gpu).unwrap(), &want, 1e-5, seed);
        assert_close(&format!("{what} lse"), &lse.read_f32(gpu).unwrap(), &want_lse, 1e-6, seed);
    }
}
