//! Every matmul variant the autotuner may pick, in every form and weight dtype, against the f64
//! CPU reference on fresh random inputs of awkward sizes, outputs poisoned before the run.

mod common;

use common::*;
use lorafuse::gpu::{DType, Layout, Matrix, Recorder, Tensor};
use lorafuse::kernels::matmul::{Epilogue, Form, MatmulOpts, RowCoef, Variant, matmul, matmul_ref};

/// f32 kernels accumulate in f32 over at most a few hundred terms: 1e-4 is the bound and
/// leaves two orders of magnitude of margin.
const TOL_F32: f64 = 1e-4;
/// f16 weights: the reference uses the same f16-rounded weights, so only accumulation error
/// remains; the bound is the f32 one. (Against unrounded weights the error is ~3e-4.)
const TOL_F16: f64 = 1e-4;

fn operand_shapes(form: Form, m: usize, n: usize, k: usize) -> ([usize; 2], [usize; 2]) {
    match form {
        Form::Nt => ([m, k], [n, k]),
        Form::Nn => ([m, k], [k, n]),
        Form::Tn => ([k, m], [k, n]),
    }
}

fn check(form: Form, variant: Variant, dtype: DType, m: usize, n: usize, k: usize, seed: u64) {
    let gpu = gpu();
    let mut rng = Rng::new(seed);
    let (sa, sb) = operand_shapes(form, m, n, k);
    let a = rng.vec(sa[0] * sa[1]);
    let mut b = rng.vec(sb[0] * sb[1]);
    if dtype == DType::F16 {
        b = round_f16(&b);
    }
    let at = Tensor::from_f32(gpu, &sa, &a, "a").unwrap();
    let bm = Matrix::from_host(gpu, variant.layout(), sb[0], sb[1], &b, dtype, "b").unwrap();
    let y = Tensor::zeros(gpu, &[m, n], DType::F32, "y").unwrap();
    y.poison(gpu);
    let mut rec = Recorder::new(gpu);
    let opts = MatmulOpts { variant: Some(variant), ..Default::default() };
    matmul(&mut rec, form, &at, &bm, &y, &opts).unwrap();
    rec.run().unwrap();
    let got = y.read_f32(gpu).unwrap();
    let want = matmul_ref(form, m, n, k, &a, &b);
    let tol = if dtype == DType::F16 { TOL_F16 } else { TOL_F32 };
    assert_close(&format!("matmul {form} {variant} {dtype} m={m} n={n} k={k}"), &got, &want, tol, seed);
}

fn sweep(form: Form, layout: Layout) {
    let gpu = gpu();
    let variants = Variant::candidates(gpu, form, layout);
    // Texture kernels exist for nt and nn on devices with fixed-size subgroups (lavapipe's
    // Vulkan adapter among them); storage-buffer kernels exist everywhere.
    let expected = match layout {
        Layout::Buffer => true,
        Layout::Texture => form != Form::Tn && lorafuse::gpu::texture::subgroup_size(gpu).is_some(),
    };
    assert_eq!(!variants.is_empty(), expected, "{form} variants for {} operands: {variants:?}", layout.name());
    let dtypes: &[DType] = if form == Form::Tn { &[DType::F32] } else { &[DType::F32, DType::F16] };
    let seed = seed();
    for &v in &variants {
        for &dtype in dtypes {
            for (i, &m) in MS.iter().enumerate() {
                for (j, &(k, n)) in KNS.iter().enumerate() {
                    check(form, v, dtype, m, n, k, seed + (i * 7 + j) as u64);
                }
            }
        }
    }
}

#[test]
fn nt_buffer_variants() {
    sweep(Form::Nt, Layout::Buffer);
}

#[test]
fn nn_buffer_variants() {
    sweep(Form::Nn, Layout::Buffer);
}

#[test]
fn tn_buffer_variants() {
    sweep(Form::Tn, Layout::Buffer);
}

#[test]
fn nt_texture_variants() {
    sweep(Form::Nt, Layout::Texture);
}

/// 4-bit weights (texture kernels, nt and nn: the forward and dX) against the f64 product with
/// the dequantized weights. The weight's K is a multiple of 32 (the format's block); M and N
/// stay awkward. Every option rides along on one shape.
fn q4_sweep(form: Form) {
    let gpu = gpu();
    let variants = Variant::candidates(gpu, form, Layout::Texture);
    if lorafuse::gpu::texture::subgroup_size(gpu).is_some_and(|sg| sg % 8 == 0) {
        assert!(!variants.is_empty());
    }
    let seed = seed();
    for &v in &variants {
        for (i, &m) in MS.iter().enumerate() {
            for (j, &(wk, wn)) in [(32usize, 37usize), (160, 67), (288, 259)].iter().enumerate() {
                let s = seed + (i * 7 + j) as u64;
                let mut rng = Rng::new(s);
                // W is [wn, wk] in both forms: nt computes X·Wᵀ (inner wk), nn X·W (inner wn)
                let (k, n) = if form == Form::Nt { (wk, wn) } else { (wn, wk) };
                let a = rng.vec(m * k);
                let blocks = lorafuse::gpu::q4::quantize(&rng.vec(wn * wk));
                let b = lorafuse::gpu::q4::dequantize(&blocks);
                let at = Tensor::from_f32(gpu, &[m, k], &a, "a").unwrap();
                let bm = Matrix::from_q4(gpu, Layout::Texture, wn, wk, &blocks, "b").unwrap();
                let y = Tensor::zeros(gpu, &[m, n], DType::F32, "y").unwrap();
                y.poison(gpu);
                let mut rec = Recorder::new(gpu);
                matmul(&mut rec, form, &at, &bm, &y, &MatmulOpts { variant: Some(v), ..Default::default() }).unwrap();
                rec.run().unwrap();
                let want = matmul_ref(form, m, n, k, &a, &b);
                assert_close(
                    &format!("matmul {form} {v} q4 m={m} n={n} k={k}"),
                    &y.read_f32(gpu).unwrap(),
                    &want,
                    TOL_F32,
                    s,
                );
            }
        }
    }
}

#[test]
fn nt_q4_texture_variants() {
    q4_sweep(Form::Nt);
}

#[test]
fn nn_q4_texture_variants() {
    q4_sweep(Form::Nn);
}

#[test]
fn nn_texture_variants() {
    sweep(Form::Nn, Layout::Texture);
}

/// Lavapipe (the CI device) must offer the texture kernels: they are its fast path, and a silent
/// fall back to storage buffers would hide a broken feature request.
#[test]
fn software_adapter_offers_texture_kernels() {
    let gpu = gpu();
    if gpu.is_software() && gpu.info().backend == wgpu::Backend::Vulkan {
        assert!(!Variant::candidates(gpu, Form::Nt, Layout::Texture).is_empty(), "{}", gpu.describe());
    }
}

/// Every option at once (alpha, epilogue, per-row coefficients, accumulation) on every variant
/// of the forms that take them.
#[test]
fn options_fuse_into_every_variant() {
    let gpu = gpu();
    let seed = seed();
    for form in [Form::Nt, Form::Nn] {
        for layout in [Layout::Buffer, Layout::Texture] {
            for v in Variant::candidates(gpu, form, layout) {
                for (case, &(m, k, n, e)) in [(7usize, 45usize, 37usize, 12usize), (33, 132, 67, 20)].iter().enumerate()
                {
                    let s = seed + case as u64;
                    let mut rng = Rng::new(s);
                    let (sa, sb) = operand_shapes(form, m, n, k);
                    let a = rng.vec(sa[0] * sa[1]);
                    let b = rng.vec(sb[0] * sb[1]);
                    let t = rng.vec(m * e);
                    let b2_shape = if form == Form::Nt { [n, e] } else { [e, n] };
                    let b2 = rng.vec(n * e);
                    let n_adapters = 3;
                    let coef: Vec<f32> = rng.vec(m * n_adapters);
                    let seg: Vec<u32> = (0..n).map(|_| rng.below(n_adapters) as u32).collect();
                    let y0 = rng.vec(m * n);
                    let alpha = 0.75f32;

                    let at = Tensor::from_f32(gpu, &sa, &a, "a").unwrap();
                    let bm = Matrix::from_host(gpu, layout, sb[0], sb[1], &b, DType::F32, "b").unwrap();
                    let tt = Tensor::from_f32(gpu, &[m, e], &t, "t").unwrap();
                    let b2m = Matrix::from_host(gpu, layout, b2_shape[0], b2_shape[1], &b2, DType::F32, "b2").unwrap();
                    let ct = Tensor::from_f32(gpu, &[m, n_adapters], &coef, "coef").unwrap();
                    let st = Tensor::from_u32(gpu, &[n], &seg, "seg").unwrap();
                    let y = Tensor::from_f32(gpu, &[m, n], &y0, "y").unwrap();
                    let opts = MatmulOpts {
                        alpha,
                        accumulate: true,
                        epilogue: Some(Epilogue { t: &tt, b: &b2m }),
                        row_coef: Some(RowCoef { coef: &ct, seg: &st }),
                        variant: Some(v),
                    };
                    let mut rec = Recorder::new(gpu);
                    matmul(&mut rec, form, &at, &bm, &y, &opts).unwrap();
                    rec.run().unwrap();
                    let got = y.read_f32(gpu).unwrap();

                    let main = matmul_ref(form, m, n, k, &a, &b);
                    let epi = matmul_ref(form, m, n, e, &t, &b2);
                    let want: Vec<f64> = (0..m * n)
                        .map(|i| {
                            let (r, c) = (i / n, i % n);
                            let scale = coef[r * n_adapters + seg[c] as usize] as f64;
                            alpha as f64 * (main[i] + epi[i]) * scale + y0[i] as f64
                        })
                        .collect();
                    assert_close(
                        &format!("matmul {form} {v} with every option, m={m} k={k} n={n} e={e}"),
                        &got,
                        &want,
                        TOL_F32,
                        s,
                    );
                }
            }
        }
    }
}

/// Mismatched shapes and dtypes are errors that name the operation, never panics.
#[test]
fn bad_shapes_are_errors() {
    let gpu = gpu();
    let a = Tensor::zeros(gpu, &[4, 8], DType::F32, "a").unwrap();
    let b = Matrix::from_host(gpu, Layout::Buffer, 5, 9, &[0.0; 45], DType::F32, "b").unwrap();
    let y = Tensor::zeros(gpu, &[4, 5], DType::F32, "y").unwrap();
    let mut rec = Recorder::new(gpu);
    let err = matmul(&mut rec, Form::Nt, &a, &b, &y, &MatmulOpts::default()).unwrap_err();
    assert!(err.to_string().contains("matmul nt"), "{err}");
    let b = Matrix::from_host(gpu, Layout::Buffer, 5, 8, &[0.0; 40], DType::F32, "b").unwrap();
    let y_bad = Tensor::zeros(gpu, &[4, 6], DType::F32, "y").unwrap();
    let err = matmul(&mut rec, Form::Nt, &a, &b, &y_bad, &MatmulOpts::default()).unwrap_err();
    assert!(err.to_string().contains("output"), "{err}");
    let opts = MatmulOpts { variant: Some(Variant::Texture { rows: 16, cols: 2 }), ..Default::default() };
    let err = matmul(&mut rec, Form::Nt, &a, &b, &y, &opts).unwrap_err();
    assert!(err.to_string().contains("not a candidate") || err.to_string().contains("layout"), "{err}");
    let err = Tensor::from_f32(gpu, &[3, 3], &[0.0; 8], "short").unwrap_err();
    assert!(err.to_string().contains("short"), "{err}");
}
