//! Cases of the layer kernels: RMSNorm, RoPE with the KV-cache store, attention, SwiGLU, bias,
//! copy, and the row gather and scatter, forward and backward.

use super::{case, f64s, input, input_u32, round_f16};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::attention::{
    Attention, AttentionVariant, Heads, Saved, Spans, attention, attention_backward, attention_backward_ref,
    attention_causal_ref, attention_ref,
};
use crate::kernels::elementwise::{add_bias, copy, swiglu, swiglu_backward, swiglu_backward_ref, swiglu_ref};
use crate::kernels::embedding::{gather, gather_ref, scatter};
use crate::kernels::harness::{Case, Expect, FiniteDiff, Instance, Output, output};
use crate::kernels::rmsnorm::{rmsnorm, rmsnorm_backward, rmsnorm_backward_ref, rmsnorm_ref};
use crate::kernels::rope::{Cache, RopeTable, Rows, rope_backward, rope_kv, rope_ref};
use crate::rng::Rng;

fn dot(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * *y as f64).sum()
}

fn inv_freq(hd: usize) -> Vec<f64> {
    (0..hd / 2).map(|i| 10000f64.powf(-(2.0 * i as f64) / hd as f64)).collect()
}

/// Finite differences of `loss` at `x`, with this module's step and tolerance.
fn fd(loss: impl Fn(&[f32]) -> f64 + 'static, x: &[f32]) -> FiniteDiff {
    FiniteDiff { loss: Box::new(loss), x: x.to_vec(), h: 1e-2, samples: 8, tol: 2e-3, floor: 1e-2 }
}

pub fn rmsnorm_case(r: usize, h: usize) -> Case {
    case("rmsnorm", &format!("{r}x{h}"), DType::F32, "-", move |gpu, rng| {
        let (x, w) = (rng.vec(r * h, 3.0), rng.vec(h, 1.0));
        let want = rmsnorm_ref(&x, &w, 1e-5);
        let (xt, wt, out) = (input(gpu, &[r, h], &x)?, input(gpu, &[h], &w)?, output(gpu, &[r, h], DType::F32, "out")?);
        let outputs = vec![Output::new("out", &out, want, Expect::Close(1e-5))];
        Ok(Instance { launch: Box::new(move |rec| rmsnorm(rec, &xt, &wt, &out, 1e-5)), outputs, flops: None })
    })
}

/// dx (+)= rmsnorm'(x)ᵀ·dy; in grad mode against finite differences of Σ dy ⊙ rmsnorm(x).
pub fn rmsnorm_backward_case(r: usize, h: usize, accumulate: bool) -> Case {
    let shape = format!("{r}x{h}{}", if accumulate { " acc" } else { "" });
    case("rmsnorm backward", &shape, DType::F32, "-", move |gpu, rng| {
        let (x, w, dy, prior) = (rng.vec(r * h, 3.0), rng.vec(h, 1.0), rng.vec(r * h, 1.0), rng.vec(r * h, 1.0));
        let mut want = rmsnorm_backward_ref(&x, &w, &dy, 1e-5);
        let (xt, wt, dyt) = (input(gpu, &[r, h], &x)?, input(gpu, &[h], &w)?, input(gpu, &[r, h], &dy)?);
        let dx = output(gpu, &[r, h], DType::F32, "dx")?;
        let out = if accumulate {
            want.iter_mut().zip(&prior).for_each(|(a, p)| *a += *p as f64);
            Output::new("dx", &dx, want, Expect::Close(1e-5)).with_prior(prior)
        } else {
            let (w, dy) = (w.clone(), dy.clone());
            Output::new("dx", &dx, want, Expect::Close(1e-5))
                .with_fd(fd(move |x| dot(&rmsnorm_ref(x, &w, 1e-5), &dy), &x))
        };
        let launch = move |rec: &mut Recorder| rmsnorm_backward(rec, &xt, &wt, &dyt, &dx, 1e-5, accumulate);
        Ok(Instance { launch: Box::new(launch), outputs: vec![out], flops: None })
    })
}

/// q, k and v side by side in the rows of qkv.
fn stack_qkv(q: &[f32], k: &[f32], v: &[f32], r: usize, nq: usize, nkv: usize) -> Vec<f32> {
    (0..r)
        .flat_map(|i| {
            q[i * nq..(i + 1) * nq].iter().chain(&k[i * nkv..(i + 1) * nkv]).chain(&v[i * nkv..(i + 1) * nkv]).copied()
        })
        .collect()
}

/// rope_kv: q rotated in place (k and v left as they are in qkv), rotated k and v stored in
/// the cache at each row's (slot, position), every other cache cell untouched.
pub fn rope_kv_case(heads: usize, kv_heads: usize, hd: usize, r: usize) -> Case {
    case("rope_kv", &format!("H{heads} G{kv_heads} d{hd} rows {r}"), DType::F32, "-", move |gpu, rng| {
        let (slots, max_len) = (3, 40.max(r));
        // distinct (slot, pos) cells, so each has one writer
        let mut cells: Vec<(u32, u32)> =
            (0..slots as u32).flat_map(|s| (0..max_len as u32).map(move |p| (s, p))).collect();
        rng.shuffle(&mut cells);
        let (slot, pos): (Vec<u32>, Vec<u32>) = cells[..r].iter().copied().unzip();
        let (nq, nkv) = (heads * hd, kv_heads * hd);
        let (q, k, v) = (rng.vec(r * nq, 1.0), rng.vec(r * nkv, 1.0), rng.vec(r * nkv, 1.0));
        let freqs = inv_freq(hd);
        let qkv = stack_qkv(&q, &k, &v, r, nq, nkv);
        let qr = rope_ref(&q, heads, hd, &pos, &freqs);
        let kr = rope_ref(&k, kv_heads, hd, &pos, &freqs);
        let mut want_qkv: Vec<f64> = f64s(&qkv);
        for i in 0..r {
            want_qkv[i * (nq + 2 * nkv)..][..nq].copy_from_slice(&qr[i * nq..(i + 1) * nq]);
        }
        let cells_n = slots * kv_heads * max_len * hd;
        let prior_k = rng.vec(cells_n, 1.0);
        let prior_v = rng.vec(cells_n, 1.0);
        let (mut want_k, mut want_v) = (f64s(&prior_k), f64s(&prior_v));
        for row in 0..r {
            for g in 0..kv_heads {
                let cell = ((slot[row] as usize * kv_heads + g) * max_len + pos[row] as usize) * hd;
                want_k[cell..cell + hd].copy_from_slice(&kr[(row * kv_heads + g) * hd..][..hd]);
                for e in 0..hd {
                    want_v[cell + e] = v[(row * kv_heads + g) * hd + e] as f64;
                }
            }
        }
        let table = RopeTable::new(gpu, &freqs, max_len)?;
        let cache_shape = [slots, kv_heads, max_len, hd];
        let (qt, kc, vc) = (
            output(gpu, &[r, nq + 2 * nkv], DType::F32, "qkv")?,
            output(gpu, &cache_shape, DType::F32, "k cache")?,
            output(gpu, &cache_shape, DType::F32, "v cache")?,
        );
        let (pt, st) = (input_u32(gpu, &pos)?, input_u32(gpu, &slot)?);
        let outputs = vec![
            Output::new("qkv", &qt, want_qkv, Expect::Close(1e-6)).with_prior(qkv),
            Output::new("k cache", &kc, want_k, Expect::Close(1e-6)).with_prior(prior_k),
            Output::new("v cache", &vc, want_v, Expect::Exact).with_prior(prior_v),
        ];
        let launch = move |rec: &mut Recorder| {
            rope_kv(rec, &qt, heads, &Rows { pos: &pt, slot: &st }, &table, &Cache { k: &kc, v: &vc })
        };
        Ok(Instance { launch: Box::new(launch), outputs, flops: None })
    })
}

/// rope_backward in place: the q and k blocks rotated back (the transpose of the rotation), v
/// left alone; in grad mode against finite differences of Σ g ⊙ rope(x).
pub fn rope_backward_case(heads: usize, kv: usize, hd: usize, r: usize) -> Case {
    case("rope backward", &format!("H{heads} G{kv} d{hd} rows {r}"), DType::F32, "-", move |gpu, rng| {
        let positions = 64;
        let freqs = inv_freq(hd);
        let pos: Vec<u32> = (0..r).map(|_| rng.below(positions) as u32).collect();
        let width = (heads + 2 * kv) * hd;
        let qk = (heads + kv) * hd;
        let g = rng.vec(r * width, 1.0);
        // rotation by −θ on the q and k blocks
        let back: Vec<f64> = {
            let neg: Vec<f64> = freqs.iter().map(|f| -f).collect();
            let block: Vec<f32> = (0..r).flat_map(|i| g[i * width..i * width + qk].to_vec()).collect();
            let rot = rope_ref(&block, heads + kv, hd, &pos, &neg);
            let mut w = f64s(&g);
            for i in 0..r {
                w[i * width..i * width + qk].copy_from_slice(&rot[i * qk..(i + 1) * qk]);
            }
            w
        };
        let forward = {
            let (pos, freqs, g) = (pos.clone(), freqs.clone(), g.clone());
            move |x: &[f32]| -> f64 {
                let mut y = f64s(x);
                let block: Vec<f32> = (0..r).flat_map(|i| x[i * width..i * width + qk].to_vec()).collect();
                let rot = rope_ref(&block, heads + kv, hd, &pos, &freqs);
                for i in 0..r {
                    y[i * width..i * width + qk].copy_from_slice(&rot[i * qk..(i + 1) * qk]);
                }
                dot(&y, &g)
            }
        };
        let x = rng.vec(r * width, 1.0);
        let table = RopeTable::new(gpu, &freqs, positions)?;
        let (t, pt) = (output(gpu, &[r, width], DType::F32, "dqkv")?, input_u32(gpu, &pos)?);
        let outputs = vec![Output::new("dqkv", &t, back, Expect::Close(1e-6)).with_prior(g).with_fd(fd(forward, &x))];
        let launch = move |rec: &mut Recorder| rope_backward(rec, &t, heads, kv, &pt, &table);
        Ok(Instance { launch: Box::new(launch), outputs, flops: None })
    })
}

/// Attention over a cache of random keys, rows of random slots and positions, or with `runs` > 0
/// that many runs of rows of one sequence each at consecutive positions, as a (chunked) prefill
/// lays them out (with `shared`, the slots after the first read their first keys from slot 0).
/// With `rope`, the rows are decode
/// rows (distinct slots, qkv as the projection wrote it): the launch itself rotates q and k and
/// stores k and v at each row's (slot, position), which the row then attends to, as rope_kv and
/// attention would in two launches; every other cache cell stays as it was.
pub fn attention_case(
    heads: Heads,
    r: usize,
    max_len: usize,
    shared: bool,
    rope: bool,
    runs: usize,
    variant: AttentionVariant,
) -> Case {
    let Heads { heads, kv_heads, hd } = heads;
    let shape = format!(
        "H{heads} G{kv_heads} d{hd} rows {r}{} keys ≤{max_len}{}{}",
        if runs > 0 { format!(" in {runs} run(s)") } else { String::new() },
        if shared { " shared prefix" } else { "" },
        if rope { " rope" } else { "" }
    );
    case("attention", &shape, DType::F32, variant.name(), move |gpu, rng| {
        let first = shared as usize;
        // decode rows need a slot each
        let slots = if rope { 4.max(r + first) } else { 4 };
        let prefix_len: Vec<usize> =
            (0..slots).map(|s| if shared && s > 0 { rng.below(max_len / 2) } else { 0 }).collect();
        let (slot, pos): (Vec<u32>, Vec<u32>) = if runs > 0 {
            assert!(runs <= r.min(slots - first), "attention case: {runs} runs of {r} rows over {slots} slots");
            let mut all: Vec<u32> = (first as u32..slots as u32).collect();
            rng.shuffle(&mut all);
            let mut rows = Vec::new();
            for (i, &s) in all[..runs].iter().enumerate() {
                let len = r / runs + usize::from(i < r % runs);
                let lo = prefix_len[s as usize].min(max_len - len);
                let start = lo + rng.below(max_len - len - lo + 1);
                rows.extend((start..start + len).map(|t| (s, t as u32)));
            }
            rows.into_iter().unzip()
        } else {
            let slot: Vec<u32> = if rope {
                let mut all: Vec<u32> = (first as u32..slots as u32).collect();
                rng.shuffle(&mut all);
                all[..r].to_vec()
            } else {
                (0..r).map(|_| (first + rng.below(slots - first)) as u32).collect()
            };
            let pos = slot
                .iter()
                .map(|&s| (prefix_len[s as usize] + rng.below(max_len - prefix_len[s as usize])) as u32)
                .collect();
            (slot, pos)
        };
        let (nq, nkv) = (heads * hd, kv_heads * hd);
        let q = rng.vec(r * nq, 4.0);
        let cell = kv_heads * max_len * hd;
        let (kc, vc) = (rng.vec(slots * cell, 1.0), rng.vec(slots * cell, 1.0));
        let (k, v) = if rope {
            (rng.vec(r * nkv, 1.0), rng.vec(r * nkv, 1.0))
        } else {
            (vec![f32::NAN; r * nkv], vec![f32::NAN; r * nkv])
        };
        let freqs = inv_freq(hd);
        // the cache after the launch, and the query it attends with
        let (mut kc_after, mut vc_after) = (f64s(&kc), f64s(&vc));
        let qa: Vec<f32> = if rope {
            let kr = rope_ref(&k, kv_heads, hd, &pos, &freqs);
            for row in 0..r {
                for g in 0..kv_heads {
                    let at = ((slot[row] as usize * kv_heads + g) * max_len + pos[row] as usize) * hd;
                    for e in 0..hd {
                        kc_after[at + e] = kr[(row * kv_heads + g) * hd + e];
                        vc_after[at + e] = v[(row * kv_heads + g) * hd + e] as f64;
                    }
                }
            }
            rope_ref(&q, heads, hd, &pos, &freqs).iter().map(|&x| x as f32).collect()
        } else {
            q.clone()
        };
        // each slot's keys as attention sees them: the first ones from slot 0
        let seen = |c: &[f64]| -> Vec<f32> {
            let mut out: Vec<f32> = c.iter().map(|&x| x as f32).collect();
            for (s, &len) in prefix_len.iter().enumerate() {
                for g in 0..kv_heads {
                    for t in 0..len {
                        let (dst, src) = (((s * kv_heads + g) * max_len + t) * hd, ((g * max_len) + t) * hd);
                        out.copy_within(src..src + hd, dst);
                    }
                }
            }
            out
        };
        let (want, want_lse) = attention_ref(
            &qa,
            &seen(&kc_after),
            &seen(&vc_after),
            (&pos, &slot),
            Heads { heads, kv_heads, hd },
            max_len,
        );
        let cache_shape = [slots, kv_heads, max_len, hd];
        let qkv = input(gpu, &[r, nq + 2 * nkv], &stack_qkv(&q, &k, &v, r, nq, nkv))?;
        let (kt, vt) = if rope {
            (output(gpu, &cache_shape, DType::F32, "k cache")?, output(gpu, &cache_shape, DType::F32, "v cache")?)
        } else {
            (input(gpu, &cache_shape, &kc)?, input(gpu, &cache_shape, &vc)?)
        };
        let (pt, st) = (input_u32(gpu, &pos)?, input_u32(gpu, &slot)?);
        let table: Vec<u32> = (prefix_len.iter().enumerate())
            .flat_map(|(s, &l)| if l > 0 { [0, l as u32] } else { [s as u32, 0] })
            .collect();
        let prefix = if shared { Some(Tensor::from_u32(gpu, &[slots, 2], &table, "prefix")?) } else { None };
        let rope_table = if rope { Some(RopeTable::new(gpu, &freqs, max_len)?) } else { None };
        let (out, lse) = (output(gpu, &[r, nq], DType::F32, "out")?, output(gpu, &[r, heads], DType::F32, "lse")?);
        let mut outputs = vec![
            Output::new("out", &out, want, Expect::Close(1e-5)),
            Output::new("lse", &lse, want_lse, Expect::Close(1e-6)),
        ];
        if rope {
            outputs.push(Output::new("k cache", &kt, kc_after, Expect::Close(1e-6)).with_prior(kc));
            outputs.push(Output::new("v cache", &vt, vc_after, Expect::Exact).with_prior(vc));
        }
        let launch = move |rec: &mut Recorder| {
            let (cache, rows) = (Cache { k: &kt, v: &vt }, Rows { pos: &pt, slot: &st });
            let at = Attention {
                qkv: &qkv,
                heads,
                cache: &cache,
                rows: &rows,
                prefix: prefix.as_ref(),
                rope: rope_table.as_ref(),
                variant: Some(variant),
            };
            attention(rec, &at, &out, Some(&lse))
        };
        // q·k and p·v, 2d each, for every key a row sees
        let keys: u64 = pos.iter().map(|&p| p as u64 + 1).sum();
        let flops = Some(4 * (heads * hd) as u64 * keys);
        Ok(Instance { launch: Box::new(launch), outputs, flops })
    })
}

/// The attention backward over sequences of `lens`: dq, dk, dv in the blocks of dqkv; in grad
/// mode against finite differences of Σ dout ⊙ attention(q, k, v).
pub fn attention_backward_case(
    heads: usize,
    kv: usize,
    hd: usize,
    lens: Vec<usize>,
    variant: AttentionVariant,
) -> Case {
    let shape = format!("H{heads} G{kv} d{hd} lens {lens:?}");
    case("attention backward", &shape, DType::F32, variant.name(), move |gpu, rng| {
        let shape = Heads { heads, kv_heads: kv, hd };
        let mut spans = Vec::new();
        for &l in &lens {
            spans.push((spans.last().map_or(0, |s: &(usize, usize)| s.0 + s.1), l));
        }
        let r: usize = lens.iter().sum();
        let (nq, nkv) = (heads * hd, kv * hd);
        let width = nq + 2 * nkv;
        let (q, k, v, dout) =
            (rng.vec(r * nq, 1.0), rng.vec(r * nkv, 1.0), rng.vec(r * nkv, 1.0), rng.vec(r * nq, 1.0));
        let (dq, dk, dv) = attention_backward_ref(&q, &k, &v, &dout, &spans, shape);
        let want: Vec<f64> = (0..r)
            .flat_map(|i| {
                (dq[i * nq..(i + 1) * nq].iter().chain(&dk[i * nkv..(i + 1) * nkv]).chain(&dv[i * nkv..(i + 1) * nkv]))
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        let qkv = stack_qkv(&q, &k, &v, r, nq, nkv);
        let loss = {
            let (spans, dout) = (spans.clone(), dout.clone());
            move |x: &[f32]| -> f64 {
                let part = |off: usize, w: usize| -> Vec<f32> {
                    (0..r).flat_map(|i| x[i * width + off..][..w].to_vec()).collect()
                };
                dot(&attention_causal_ref(&part(0, nq), &part(nq, nkv), &part(nq + nkv, nkv), &spans, shape), &dout)
            }
        };
        // the GPU forward fills the cache and saves out and lse, as training does (the k and v
        // blocks go in unrotated: a zero-angle table)
        let max_len = *lens.iter().max().unwrap_or(&1);
        let cache_shape = [lens.len(), kv, max_len, hd];
        let (kc, vc) =
            (Tensor::zeros(gpu, &cache_shape, DType::F32, "kc")?, Tensor::zeros(gpu, &cache_shape, DType::F32, "vc")?);
        let (pos, slot): (Vec<u32>, Vec<u32>) =
            (spans.iter().enumerate()).flat_map(|(s, &(_, l))| (0..l).map(move |t| (t as u32, s as u32))).unzip();
        let qkvt = input(gpu, &[r, width], &qkv)?;
        let (pt, st) = (input_u32(gpu, &pos)?, input_u32(gpu, &slot)?);
        let starts: Vec<u32> = spans.iter().map(|s| s.0 as u32).collect();
        let (sst, slt) =
            (input_u32(gpu, &starts)?, input_u32(gpu, &lens.iter().map(|&l| l as u32).collect::<Vec<_>>())?);
        let (out, lse) =
            (Tensor::zeros(gpu, &[r, nq], DType::F32, "out")?, Tensor::zeros(gpu, &[r, heads], DType::F32, "lse")?);
        {
            let (cache, rows) = (Cache { k: &kc, v: &vc }, Rows { pos: &pt, slot: &st });
            let mut rec = Recorder::new(gpu);
            rope_kv(&mut rec, &qkvt, heads, &rows, &RopeTable::new(gpu, &vec![0.0; hd / 2], max_len)?, &cache)?;
            attention(
                &mut rec,
                &Attention { qkv: &qkvt, heads, cache: &cache, rows: &rows, prefix: None, rope: None, variant: None },
                &out,
                Some(&lse),
            )?;
            rec.run()?;
        }
        let want_out = attention_causal_ref(&q, &k, &v, &spans, shape);
        let want_dsum: Vec<f64> =
            (0..r * heads).map(|i| (0..hd).map(|e| dout[i * hd + e] as f64 * want_out[i * hd + e]).sum()).collect();
        let dout_t = input(gpu, &[r, nq], &dout)?;
        let (dqkv, dsum) =
            (output(gpu, &[r, width], DType::F32, "dqkv")?, output(gpu, &[r, heads], DType::F32, "dsum")?);
        let outputs = vec![
            Output::new("dqkv", &dqkv, want, Expect::Close(1e-4)).with_fd(fd(move |x| loss(x), &qkv)),
            Output::new("dsum", &dsum, want_dsum, Expect::Close(1e-4)),
        ];
        let launch = move |rec: &mut Recorder| {
            let (cache, rows) = (Cache { k: &kc, v: &vc }, Rows { pos: &pt, slot: &st });
            let at = Attention {
                qkv: &qkvt,
                heads,
                cache: &cache,
                rows: &rows,
                prefix: None,
                rope: None,
                variant: Some(variant),
            };
            let spans = Spans { start: &sst, len: &slt };
            attention_backward(rec, &at, &spans, &Saved { out: &out, lse: &lse }, &dout_t, &dqkv, &dsum)
        };
        // per (row, head, key seen): s = q·k and dO·v, then dq, dk, dv, 2d each
        let keys: u64 = lens.iter().map(|&l| (l * (l + 1) / 2) as u64).sum();
        let flops = Some(10 * (heads * hd) as u64 * keys);
        Ok(Instance { launch: Box::new(launch), outputs, flops })
    })
}

pub fn swiglu_case(r: usize, f: usize) -> Case {
    case("swiglu", &format!("{r}x{f}"), DType::F32, "-", move |gpu, rng| {
        let gu = rng.vec(r * 2 * f, 4.0);
        let (g, u): (Vec<f32>, Vec<f32>) = (
            gu.chunks(2 * f).flat_map(|row| row[..f].to_vec()).collect(),
            gu.chunks(2 * f).flat_map(|row| row[f..].to_vec()).collect(),
        );
        let want = swiglu_ref(&g, &u);
        let (gut, out) = (input(gpu, &[r, 2 * f], &gu)?, output(gpu, &[r, f], DType::F32, "act")?);
        let outputs = vec![Output::new("act", &out, want, Expect::Close(1e-6))];
        Ok(Instance { launch: Box::new(move |rec| swiglu(rec, &gut, &out)), outputs, flops: None })
    })
}

pub fn swiglu_backward_case(r: usize, f: usize) -> Case {
    case("swiglu backward", &format!("{r}x{f}"), DType::F32, "-", move |gpu, rng| {
        let (gu, dout) = (rng.vec(r * 2 * f, 4.0), rng.vec(r * f, 1.0));
        let want = swiglu_backward_ref(&gu, &dout, f);
        let forward = {
            let dout = dout.clone();
            move |gu: &[f32]| -> f64 {
                let (mut g, mut u) = (Vec::new(), Vec::new());
                for row in gu.chunks(2 * f) {
                    g.extend_from_slice(&row[..f]);
                    u.extend_from_slice(&row[f..]);
                }
                dot(&swiglu_ref(&g, &u), &dout)
            }
        };
        let (gut, dt, out) =
            (input(gpu, &[r, 2 * f], &gu)?, input(gpu, &[r, f], &dout)?, output(gpu, &[r, 2 * f], DType::F32, "dgu")?);
        let outputs = vec![Output::new("dgate_up", &out, want, Expect::Close(1e-5)).with_fd(fd(forward, &gu))];
        Ok(Instance { launch: Box::new(move |rec| swiglu_backward(rec, &gut, &dt, &out)), outputs, flops: None })
    })
}

pub fn bias_case(r: usize, n: usize) -> Case {
    case("add_bias", &format!("{r}x{n}"), DType::F32, "-", move |gpu, rng| {
        let (y, b) = (rng.vec(r * n, 1.0), rng.vec(n, 1.0));
        let want: Vec<f64> = y.iter().enumerate().map(|(i, &v)| v as f64 + b[i % n] as f64).collect();
        let (yt, bt) = (output(gpu, &[r, n], DType::F32, "y")?, input(gpu, &[n], &b)?);
        let outputs = vec![Output::new("y", &yt, want, Expect::Close(1e-7)).with_prior(y)];
        Ok(Instance { launch: Box::new(move |rec| add_bias(rec, &yt, &bt)), outputs, flops: None })
    })
}

pub fn copy_case(r: usize, n: usize) -> Case {
    case("copy", &format!("{r}x{n}"), DType::F32, "-", move |gpu, rng| {
        let a = rng.vec(r * n, 1.0);
        let (at, out) = (input(gpu, &[r, n], &a)?, output(gpu, &[r, n], DType::F32, "out")?);
        let outputs = vec![Output::new("out", &out, f64s(&a), Expect::Exact)];
        Ok(Instance { launch: Box::new(move |rec| copy(rec, &at, &out)), outputs, flops: None })
    })
}

/// Rows of an f32 or f16 table gathered by index (repeats allowed).
pub fn gather_case(dtype: DType, v: usize, h: usize, r: usize) -> Case {
    case("gather", &format!("{v}x{h} rows {r}"), dtype, "-", move |gpu, rng| {
        let table = rng.vec(v * h, 1.0);
        let idx: Vec<u32> = (0..r).map(|_| rng.below(v) as u32).collect();
        let src = if dtype == DType::F16 { round_f16(&table) } else { table.clone() };
        let want = f64s(&gather_ref(&src, h, &idx));
        let tt = match dtype {
            DType::F16 => Tensor::from_f32_as_f16(gpu, &[v, h], &table, "table")?,
            _ => input(gpu, &[v, h], &table)?,
        };
        let (it, out) = (input_u32(gpu, &idx)?, output(gpu, &[r, h], DType::F32, "rows")?);
        let outputs = vec![Output::new("rows", &out, want, Expect::Exact)];
        Ok(Instance { launch: Box::new(move |rec| gather(rec, &tt, &it, &out)), outputs, flops: None })
    })
}

/// Rows written into distinct rows of an output by index (the gather's backward); the other
/// rows keep what they held.
pub fn scatter_case(t: usize, h: usize, r: usize) -> Case {
    case("scatter", &format!("{r} rows into {t}x{h}"), DType::F32, "-", move |gpu, rng: &mut Rng| {
        let mut idx: Vec<u32> = (0..t as u32).collect();
        rng.shuffle(&mut idx);
        idx.truncate(r);
        let (src, base) = (rng.vec(r * h, 1.0), rng.vec(t * h, 1.0));
        let mut want = f64s(&base);
        for (i, &row) in idx.iter().enumerate() {
            for c in 0..h {
                want[row as usize * h + c] = src[i * h + c] as f64;
            }
        }
        let (st, it, out) =
            (input(gpu, &[r, h], &src)?, input_u32(gpu, &idx)?, output(gpu, &[t, h], DType::F32, "out")?);
        let outputs = vec![Output::new("out", &out, want, Expect::Exact).with_prior(base)];
        Ok(Instance { launch: Box::new(move |rec| scatter(rec, &st, &it, &out)), outputs, flops: None })
    })
}
