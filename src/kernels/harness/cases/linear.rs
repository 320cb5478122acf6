//! Cases of the matmul family (every form, variant and weight type), the fused multi-LoRA
//! forward and backward, the sequential baseline, the merge, and the activation pack.

use super::{Shape, case, input, round_f16};
use crate::error::Result;
use crate::gpu::texture::pack_host;
use crate::gpu::{DType, Gpu, Layout, Matrix, Tensor, TexMatrix};
use crate::kernels::harness::{Case, Expect, FiniteDiff, Instance, Loss, Output, output, texel_values};
use crate::kernels::lora::{
    FusedLinear, HostAdapter, LoraGrads, LoraStack, Mix, RefStack, SeqAdapter, Sequential, lora_backward,
    lora_backward_ref, lora_forward, lora_forward_ref, lora_merge, lora_sequential,
};
use crate::kernels::lora_merge::merge_ref;
use crate::kernels::matmul::{Act, Form, MatmulOpts, Prologue, Variant, matmul, matmul_act, matmul_ref, pack};
use crate::rng::Rng;

const TOL: f64 = 1e-4;

/// (A, B) shapes of `form` for Y [m, n] with inner size k.
fn operands(form: Form, (m, k, n): Shape) -> ([usize; 2], [usize; 2]) {
    match form {
        Form::Nt => ([m, k], [n, k]),
        Form::Nn => ([m, k], [k, n]),
        Form::Tn => ([k, m], [k, n]),
    }
}

/// B's host values as the kernels see them (rounded or quantized), and B on the GPU.
fn weights(
    gpu: &Gpu,
    rng: &mut Rng,
    layout: Layout,
    rows: usize,
    cols: usize,
    dtype: DType,
) -> Result<(Vec<f32>, Matrix)> {
    let raw = rng.vec(rows * cols, 1.0);
    // Matrix::from_host quantizes 4- and 8-bit weights with these same functions
    let host = match dtype {
        DType::F16 => round_f16(&raw),
        DType::Q4 => crate::gpu::q4::dequantize(&crate::gpu::q4::quantize(&raw)),
        DType::Q8 => crate::gpu::q8::dequantize(&crate::gpu::q8::quantize(&raw)),
        _ => raw.clone(),
    };
    Ok((host, Matrix::from_host(gpu, layout, rows, cols, &raw, dtype, "b")?))
}

/// Y = op(A)·op(B), optionally Y = alpha·op(A)·op(B) + Y (accumulating), for one forced variant.
pub fn matmul_case(form: Form, v: Variant, dtype: DType, mnk: Shape, accumulate: bool) -> Case {
    let (m, k, n) = mnk;
    let extra = if accumulate { " acc α=0.5" } else { "" };
    let shape = format!("{m}x{k}x{n}{extra}");
    let group = format!("matmul {form} {shape} {dtype} {}", v.layout().name());
    let mut c = case(&format!("matmul {form}"), &shape, dtype, &v.to_string(), move |gpu, rng| {
        let (sa, sb) = operands(form, mnk);
        let a = rng.vec(sa[0] * sa[1], 1.0);
        let (b, bm) = weights(gpu, rng, v.layout(), sb[0], sb[1], dtype)?;
        let at = input(gpu, &sa, &a)?;
        let y = output(gpu, &[m, n], DType::F32, "y")?;
        let mut want = matmul_ref(form, m, n, k, &a, &b);
        let mut out_prior = None;
        if accumulate {
            let prior = rng.vec(m * n, 1.0);
            want.iter_mut().zip(&prior).for_each(|(w, p)| *w = 0.5 * *w + *p as f64);
            out_prior = Some(prior);
        }
        let yo = y.clone();
        let opts_alpha = if accumulate { 0.5 } else { 1.0 };
        let launch = move |rec: &mut crate::gpu::Recorder| {
            let opts = MatmulOpts { variant: Some(v), alpha: opts_alpha, accumulate, ..Default::default() };
            matmul(rec, form, &at, &bm, &yo, &opts)
        };
        let mut out = Output::new("Y", &y, want, Expect::Close(TOL));
        if let Some(p) = out_prior {
            out = out.with_prior(p);
        }
        Ok(Instance { launch: Box::new(launch), outputs: vec![out], flops: None })
    });
    c.group = group;
    c
}

/// The weight types a variant takes in `form`.
pub fn dtypes_of(gpu: &Gpu, form: Form, v: Variant) -> Vec<DType> {
    let blocks = v.layout() == Layout::Texture && crate::gpu::texture::subgroup_size(gpu).is_some_and(|sg| sg % 8 == 0);
    match form {
        Form::Tn => vec![DType::F32],
        _ if blocks => vec![DType::F32, DType::F16, DType::Q4, DType::Q8],
        _ => vec![DType::F32, DType::F16],
    }
}

fn adapters(rng: &mut Rng, k: usize, n: usize, ranks: &[usize]) -> Vec<HostAdapter> {
    ranks
        .iter()
        .map(|&r| HostAdapter {
            rank: r,
            a: rng.vec(r * k, 1.0 / (k as f32).sqrt()),
            b: rng.vec(n * r, 0.5),
            scale: 2.0 / r as f32,
        })
        .collect()
}

/// A per-row mix: each row its own weights for every adapter.
fn row_mix(rng: &mut Rng, m: usize, na: usize) -> Mix {
    Mix::Rows((0..m * na).map(|_| rng.symmetric(1.0)).collect())
}

/// The fused multi-LoRA forward: T and Y against the reference, per-row mixes.
pub fn lora_forward_case(layout: Layout, dtype: DType, mkn: Shape, ranks: Vec<usize>) -> Case {
    let (m, k, n) = mkn;
    let shape = format!("{m}x{k}x{n} r{ranks:?}");
    case("lora forward", &shape, dtype, layout.name(), move |gpu, rng| {
        let ads = adapters(rng, k, n, &ranks);
        let x = rng.vec(m * k, 1.0);
        let (w, wm) = weights(gpu, rng, layout, n, k, dtype)?;
        let stack = LoraStack::new(gpu, layout, k, n, &ads)?;
        let mix = row_mix(rng, m, ads.len());
        let coef = mix.coef(m, stack.scales())?;
        let ct = mix.coef_tensor(gpu, m, &stack)?;
        let (a_host, b_host, seg) = (stack.a_buf.read_f32(gpu)?, stack.b_buf.read_f32(gpu)?, stack.seg_host());
        let rs =
            RefStack { k, n, rp: stack.rp(), a: &a_host, b: &b_host, seg: &seg, coef: &coef, n_adapters: ads.len() };
        let (want_y, want_t) = lora_forward_ref(m, &x, &w, &rs);
        let (xt, t, y) = (
            input(gpu, &[m, k], &x)?,
            output(gpu, &[m, stack.rp()], DType::F32, "t")?,
            output(gpu, &[m, n], DType::F32, "y")?,
        );
        let outputs =
            vec![Output::new("T", &t, want_t, Expect::Close(TOL)), Output::new("Y", &y, want_y, Expect::Close(TOL))];
        let launch = move |rec: &mut crate::gpu::Recorder| {
            lora_forward(rec, &FusedLinear { w: &wm, lora: &stack, coef: &ct, t: &t }, &xt, &y, None)
        };
        Ok(Instance { launch: Box::new(launch), outputs, flops: None })
    })
}

/// The fused multi-LoRA backward: dX, dA, dB (accumulating onto prior gradients when asked);
/// in grad mode dX, dA and dB against finite differences of the forward reference.
pub fn lora_backward_case(layout: Layout, mkn: Shape, ranks: Vec<usize>, accumulate: bool) -> Case {
    let (m, k, n) = mkn;
    let shape = format!("{m}x{k}x{n} r{ranks:?}{}", if accumulate { " acc" } else { "" });
    case("lora backward", &shape, DType::F32, layout.name(), move |gpu, rng| {
        let ads = adapters(rng, k, n, &ranks);
        let (x, dy) = (rng.vec(m * k, 1.0), rng.vec(m * n, 1.0));
        let (w, wm) = weights(gpu, rng, layout, n, k, DType::F32)?;
        let stack = LoraStack::new(gpu, layout, k, n, &ads)?;
        let mix = row_mix(rng, m, ads.len());
        let coef = mix.coef(m, stack.scales())?;
        let ct = mix.coef_tensor(gpu, m, &stack)?;
        let (a_host, b_host, seg) = (stack.a_buf.read_f32(gpu)?, stack.b_buf.read_f32(gpu)?, stack.seg_host());
        let (rp, na) = (stack.rp(), ads.len());
        let rs = RefStack { k, n, rp, a: &a_host, b: &b_host, seg: &seg, coef: &coef, n_adapters: na };
        let t_host: Vec<f32> = rs.t(m, &x).iter().map(|&v| v as f32).collect();
        let (want_dx, mut want_da, mut want_db) = lora_backward_ref(m, &dy, &x, &w, &rs);
        let (prior_a, prior_b) = (rng.vec(rp * k, 1.0), rng.vec(n * rp, 1.0));
        if accumulate {
            want_da.iter_mut().zip(&prior_a).for_each(|(a, p)| *a += *p as f64);
            want_db.iter_mut().zip(&prior_b).for_each(|(b, p)| *b += *p as f64);
        }
        let (dx, da, db) = (
            output(gpu, &[m, k], DType::F32, "dx")?,
            output(gpu, &[rp, k], DType::F32, "da")?,
            output(gpu, &[n, rp], DType::F32, "db")?,
        );
        let g = output(gpu, &[m, rp], DType::F32, "g")?;
        let want_g: Vec<f64> = {
            let dyb = matmul_ref(Form::Nn, m, rp, n, &dy, &b_host);
            (0..m * rp).map(|i| dyb[i] * coef[(i / rp) * na + seg[i % rp] as usize] as f64).collect()
        };
        // L = Σ dY ⊙ Y(x, A, B) of the forward reference, for the finite differences
        let loss = {
            let (w, seg, coef, dy) = (w.clone(), seg.clone(), coef.clone(), dy.clone());
            std::rc::Rc::new(move |xs: &[f32], a: &[f32], b: &[f32]| -> f64 {
                let rs = RefStack { k, n, rp, a, b, seg: &seg, coef: &coef, n_adapters: na };
                lora_forward_ref(m, xs, &w, &rs).0.iter().zip(&dy).map(|(y, d)| y * *d as f64).sum()
            })
        };
        let fd = |f: Loss, at: Vec<f32>| FiniteDiff { loss: f, x: at, h: 1e-2, samples: 6, tol: 2e-3, floor: 1e-2 };
        let (l1, l2, l3) = (loss.clone(), loss.clone(), loss);
        let (ah, bh, ah2, bh2, xh, xh2) =
            (a_host.clone(), b_host.clone(), a_host.clone(), b_host.clone(), x.clone(), x.clone());
        let mut outputs = vec![
            Output::new("G", &g, want_g, Expect::Close(TOL)),
            Output::new("dX", &dx, want_dx, Expect::Close(TOL))
                .with_fd(fd(Box::new(move |v| l1(v, &ah, &bh)), x.clone())),
        ];
        let mut oa = Output::new("dA", &da, want_da, Expect::Close(TOL));
        let mut ob = Output::new("dB", &db, want_db, Expect::Close(TOL));
        if accumulate {
            (oa, ob) = (oa.with_prior(prior_a), ob.with_prior(prior_b));
        } else {
            // B's entries outside its blocks get gradients too (the optimizer masks them), so
            // both factors are checked everywhere
            oa = oa.with_fd(fd(Box::new(move |v| l2(&xh, v, &bh2)), a_host.clone()));
            ob = ob.with_fd(fd(Box::new(move |v| l3(&xh2, &ah2, v)), b_host.clone()));
        }
        outputs.extend([oa, ob]);
        let (dyt, xt, tt) = (input(gpu, &[m, n], &dy)?, input(gpu, &[m, k], &x)?, input(gpu, &[m, rp], &t_host)?);
        let launch = move |rec: &mut crate::gpu::Recorder| {
            let f = FusedLinear { w: &wm, lora: &stack, coef: &ct, t: &tt };
            let grads = LoraGrads { dx: Some(&dx), da: &da, db: &db, g: &g, accumulate };
            lora_backward(rec, &f, &dyt, &xt, &grads, None, None)
        };
        Ok(Instance { launch: Box::new(launch), outputs, flops: None })
    })
}

/// The sequential baseline, accumulating onto a prior Y: one shrink and one expand per adapter.
pub fn lora_sequential_case(layout: Layout, mkn: Shape, ranks: Vec<usize>) -> Case {
    let (m, k, n) = mkn;
    case("lora sequential", &format!("{m}x{k}x{n} r{ranks:?} acc"), DType::F32, layout.name(), move |gpu, rng| {
        let ads = adapters(rng, k, n, &ranks);
        let x = rng.vec(m * k, 1.0);
        let (w, wm) = weights(gpu, rng, layout, n, k, DType::F32)?;
        let prior = rng.vec(m * n, 1.0);
        let weights_: Vec<f32> = (0..ads.len()).map(|_| rng.symmetric(1.0)).collect();
        let mut want = matmul_ref(Form::Nt, m, n, k, &x, &w);
        for (ad, &wt) in ads.iter().zip(&weights_) {
            let t = matmul_ref(Form::Nt, m, ad.rank, k, &x, &ad.a);
            let t32: Vec<f32> = t.iter().map(|&v| v as f32).collect();
            let e = matmul_ref(Form::Nt, m, n, ad.rank, &t32, &ad.b);
            want.iter_mut().zip(e).for_each(|(y, e)| *y += (wt * ad.scale) as f64 * e);
        }
        want.iter_mut().zip(&prior).for_each(|(y, p)| *y += *p as f64);
        let factors = (ads.iter())
            .map(|ad| {
                Ok((
                    Matrix::from_host(gpu, layout, ad.rank, k, &ad.a, DType::F32, "a")?,
                    Matrix::from_host(gpu, layout, n, ad.rank, &ad.b, DType::F32, "b")?,
                    Tensor::zeros(gpu, &[m, ad.rank], DType::F32, "t")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let scaled: Vec<f32> = ads.iter().zip(&weights_).map(|(a, w)| w * a.scale).collect();
        let (xt, y) = (input(gpu, &[m, k], &x)?, output(gpu, &[m, n], DType::F32, "y")?);
        let outputs = vec![Output::new("Y", &y, want, Expect::Close(TOL)).with_prior(prior)];
        let launch = move |rec: &mut crate::gpu::Recorder| {
            let adapters: Vec<SeqAdapter> =
                factors.iter().zip(&scaled).map(|(f, &weight)| SeqAdapter { a: &f.0, b: &f.1, weight }).collect();
            let ts: Vec<Tensor> = factors.iter().map(|f| f.2.clone()).collect();
            lora_sequential(rec, &Sequential { w: &wm, adapters: &adapters, ts: &ts, accumulate: true }, &xt, &y)
        };
        Ok(Instance { launch: Box::new(launch), outputs, flops: None })
    })
}

/// The merge W' = W + B·diag(λ s)·A, into f32 or f16.
pub fn merge_case(out_dtype: DType, nk: (usize, usize), ranks: Vec<usize>) -> Case {
    let (n, k) = nk;
    case("lora merge", &format!("{n}x{k} r{ranks:?}"), out_dtype, "-", move |gpu, rng| {
        let ads = adapters(rng, k, n, &ranks);
        let w = rng.vec(n * k, 1.0);
        let stack = LoraStack::new(gpu, Layout::Buffer, k, n, &ads)?;
        let lambdas: Vec<f32> = (0..ads.len()).map(|_| rng.symmetric(1.0)).collect();
        let (a, b, seg) = (stack.a_buf.read_f32(gpu)?, stack.b_buf.read_f32(gpu)?, stack.seg_host());
        let used = stack.used_rank();
        let c: Vec<f32> = (0..stack.rp())
            .map(|j| if j < used { lambdas[seg[j] as usize] * stack.scales()[seg[j] as usize] } else { 0.0 })
            .collect();
        let mut want = merge_ref(&w, &a, &b, &c, n, k, stack.rp());
        let tol = if out_dtype == DType::F16 {
            // The kernel rounds its f32 sum to f16, the reference the exact one: a value within
            // f32 error of a rounding midpoint lands one f16 step (2^-11 relative) away. A few
            // such elements give ~1e-5 over the matrix (seed 1796225468800557635 did); a wrong
            // result is off everywhere.
            want = want.iter().map(|&v| half::f16::from_f64(v).to_f64()).collect();
            1e-4
        } else {
            TOL
        };
        let (wt, out) = (input(gpu, &[n, k], &w)?, output(gpu, &[n, k], out_dtype, "merged")?);
        let outputs = vec![Output::new("W'", &out, want, Expect::Close(tol))];
        let launch = move |rec: &mut crate::gpu::Recorder| lora_merge(rec, &wt, &stack, &lambdas, &out);
        Ok(Instance { launch: Box::new(launch), outputs, flops: None })
    })
}

/// The activation pack into the texture layout: every texel, padding included, as the host
/// packer writes it.
pub fn pack_case(dtype: DType, rows: usize, cols: usize) -> Case {
    case("pack", &format!("{rows}x{cols}"), dtype, "-", move |gpu, rng| {
        let v = rng.vec(rows * cols, 1.0);
        let align = crate::gpu::texture::col_align(gpu).unwrap_or(32);
        let dst = TexMatrix::zeros(gpu, rows, cols, dtype, align, "packed")?;
        let want = pack_host(&v, rows, cols, dtype, dst.width as usize, dst.padded_rows());
        let src = input(gpu, &[rows, cols], &v)?;
        let out = Output {
            name: "texels",
            target: crate::kernels::harness::Target::Texture(Box::new(dst.clone())),
            prior: None,
            want: texel_values(dtype, &want),
            expect: Expect::Exact,
            fd: None,
        };
        let launch = move |rec: &mut crate::gpu::Recorder| pack::pack(rec, &src, &dst);
        Ok(Instance { launch: Box::new(launch), outputs: vec![out], flops: None })
    })
}

/// The pack of an activation whose prologue is pending (the texture kernels' left operand with
/// several rows): RMSNorm or SwiGLU applied as it packs, one launch for the two it replaces.
pub fn pack_prologue_case(kind: PrologueKind, rows: usize, cols: usize) -> Case {
    case("pack prologue", &format!("{rows}x{cols} {kind:?}"), DType::F32, "-", move |gpu, rng| {
        let align = crate::gpu::texture::col_align(gpu).unwrap_or(32);
        let dst = TexMatrix::zeros(gpu, rows, cols, DType::F32, align, "packed")?;
        let (src, x, prologue) = prologue_operand(gpu, rng, kind, rows, cols)?;
        let want = pack_host(&x, rows, cols, DType::F32, dst.width as usize, dst.padded_rows());
        let out = Output {
            name: "texels",
            target: crate::kernels::harness::Target::Texture(Box::new(dst.clone())),
            prior: None,
            want: texel_values(DType::F32, &want),
            expect: Expect::Close(1e-6),
            fd: None,
        };
        let launch = move |rec: &mut crate::gpu::Recorder| pack::pack_prologue(rec, &src, &prologue, &dst);
        Ok(Instance { launch: Box::new(launch), outputs: vec![out], flops: None })
    })
}

/// The elementwise step a product's prologue computes from its source.
#[derive(Clone, Copy, Debug)]
pub enum PrologueKind {
    RmsNorm,
    SwiGlu,
}

/// A prologue's source S with fresh random values ([rows, k] for RMSNorm with a random gain and
/// eps 1e-5, [rows, 2k] for SwiGLU), the prologue, and its value f(S) [rows, k] from the f64
/// references, rounded to f32.
fn prologue_operand(
    gpu: &Gpu,
    rng: &mut Rng,
    kind: PrologueKind,
    rows: usize,
    k: usize,
) -> Result<(Tensor, Vec<f32>, Prologue)> {
    let (src, x, prologue) = match kind {
        PrologueKind::RmsNorm => {
            let (s, g, eps) = (rng.vec(rows * k, 2.0), rng.vec(k, 1.0), 1e-5);
            let x = crate::kernels::rmsnorm::rmsnorm_ref(&s, &g, eps as f64);
            (input(gpu, &[rows, k], &s)?, x, Prologue::RmsNorm { gain: input(gpu, &[k], &g)?, eps })
        }
        PrologueKind::SwiGlu => {
            let s = rng.vec(rows * 2 * k, 3.0);
            let (g, u): (Vec<f32>, Vec<f32>) = (
                s.chunks(2 * k).flat_map(|row| row[..k].to_vec()).collect(),
                s.chunks(2 * k).flat_map(|row| row[k..].to_vec()).collect(),
            );
            (input(gpu, &[rows, 2 * k], &s)?, crate::kernels::elementwise::swiglu_ref(&g, &u), Prologue::SwiGlu)
        }
    };
    Ok((src, x.iter().map(|&v| v as f32).collect(), prologue))
}

/// Y = f(S)·Wᵀ with f an RMSNorm (S [m, k], a gain, eps 1e-5) or SwiGLU (S [m, 2k]) that the
/// kernel applies as it reads S (one-row texture kernels) or that runs first into a scratch
/// activation (every other kernel): both must give the same Y.
pub fn prologue_case(v: Variant, dtype: DType, kind: PrologueKind, mkn: Shape) -> Case {
    let (m, k, n) = mkn;
    let shape = format!("{m}x{k}x{n} {kind:?}");
    case("matmul nt prologue", &shape, dtype, &v.to_string(), move |gpu, rng| {
        let (src, x, prologue) = prologue_operand(gpu, rng, kind, m, k)?;
        let (b, bm) = weights(gpu, rng, v.layout(), n, k, dtype)?;
        let want = matmul_ref(Form::Nt, m, n, k, &x, &b);
        let (y, scratch) = (output(gpu, &[m, n], DType::F32, "y")?, output(gpu, &[m, k], DType::F32, "x")?);
        let yo = y.clone();
        let launch = move |rec: &mut crate::gpu::Recorder| {
            let act = match &prologue {
                Prologue::RmsNorm { gain, eps } => Act::normed(&src, gain, *eps, &scratch, 0),
                Prologue::SwiGlu => Act::swiglu(&src, &scratch, 0),
            };
            let opts = MatmulOpts { variant: Some(v), ..Default::default() };
            matmul_act(rec, Form::Nt, &act, &bm, &yo, &opts)
        };
        Ok(Instance {
            launch: Box::new(launch),
            outputs: vec![Output::new("Y", &y, want, Expect::Close(TOL))],
            flops: None,
        })
    })
}
