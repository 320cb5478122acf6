//! Adapter fusion against PEFT's definitions, written out here on dense f64 matrices: cat is the
//! exact weighted sum; the factor methods (linear, ties, magnitude_prune) combine A's and B's
//! as PEFT does; the svd methods are the best rank-r approximation of their combined delta
//! (checked against nalgebra's full SVD); DARE prunes at its density and rescales; mismatched
//! adapters are errors. On a tiny random Llama, runtime fusion (fused kernel and sequential
//! baseline), the fused adapter loaded, the model merged into a Hugging Face directory and the f64
//! reference all give the same logits.

mod common;

use common::tiny::*;
use common::*;
use lorafuse::gpu::DType;
use lorafuse::lora::combine::SignMethod;
use lorafuse::lora::fuse::{FuseOptions, Method, fuse};
use lorafuse::lora::peft::{Adapter, Factors};
use lorafuse::model::export::export_hf;
use lorafuse::model::llama::{Llama, LoadOptions};
use lorafuse::model::reference::HostLlama;
use lorafuse::model::source::ModelSource;

fn spec() -> Tiny {
    Tiny { heads: 4, kv_heads: 2, head_dim: 8, hidden: 32, inter: 44, layers: 2, vocab: 61, ..Tiny::default() }
}

fn quiet(_: usize, _: usize) {}

fn opts(method: &str) -> FuseOptions {
    FuseOptions::new(method.parse::<Method>().unwrap())
}

/// s·B·A [out, in] in f64.
fn delta(f: &Factors, s: f64) -> Vec<f64> {
    let r = f.a.len() / f.inp;
    let mut m = vec![0.0; f.out * f.inp];
    for i in 0..f.out {
        for j in 0..f.inp {
            m[i * f.inp + j] = s * (0..r).map(|k| f.b[i * r + k] as f64 * f.a[k * f.inp + j] as f64).sum::<f64>();
        }
    }
    m
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// PEFT's magnitude_based_pruning: keep the ⌊d·n⌋ largest |x|.
fn ref_prune(t: &[f64], d: f64) -> Vec<f64> {
    if d >= 1.0 {
        return t.to_vec();
    }
    let k = (d * t.len() as f64) as usize;
    let mut mags: Vec<f64> = t.iter().map(|x| x.abs()).collect();
    mags.sort_by(|a, b| b.total_cmp(a));
    let cut = if k == 0 { f64::INFINITY } else { mags[k - 1] };
    t.iter().map(|&x| if x.abs() >= cut { x } else { 0.0 }).collect()
}

/// PEFT's ties / magnitude_prune / task_arithmetic on a list of tensors.
fn ref_combine(method: &str, ts: &[Vec<f64>], w: &[f64], d: f64, sign: SignMethod) -> Vec<f64> {
    let n = ts[0].len();
    let pruned: Vec<Vec<f64>> =
        if method == "linear" { ts.to_vec() } else { ts.iter().map(|t| ref_prune(t, d)).collect() };
    (0..n)
        .map(|e| {
            if method != "ties" {
                return pruned.iter().zip(w).map(|(t, wi)| wi * t[e]).sum();
            }
            let votes: f64 = pruned
                .iter()
                .map(|t| if sign == SignMethod::Total { t[e] } else { t[e].signum() * (t[e] != 0.0) as u8 as f64 })
                .sum();
            let elected = if votes >= 0.0 { 1.0 } else { -1.0 };
            let agree: Vec<f64> = pruned
                .iter()
                .zip(w)
                .filter(|(t, _)| t[e] != 0.0 && t[e].signum() == elected)
                .map(|(t, wi)| wi * t[e])
                .collect();
            agree.iter().sum::<f64>() / agree.len().max(1) as f64
        })
        .collect()
}

/// Three adapters on overlapping targets with different ranks, alphas and rsLoRA.
fn three(rng: &mut Rng, same_rank: bool) -> Vec<Adapter> {
    let spec = spec();
    let mut a = random_adapter(rng, &spec, &["q_proj", "v_proj", "down_proj"], 4, 16.0, false);
    let mut b =
        random_adapter(rng, &spec, &["q_proj", "o_proj", "gate_proj"], if same_rank { 4 } else { 3 }, 6.0, false);
    b.config.use_rslora = true;
    let c = random_adapter(rng, &spec, &["v_proj", "up_proj"], if same_rank { 4 } else { 2 }, 2.0, false);
    for (i, x) in [&mut a, &mut b].into_iter().enumerate() {
        x.source = Some(format!("adapter-{i}").into());
    }
    vec![a, b, c]
}

const WEIGHTS: [f64; 3] = [0.6, 0.4, -0.7];

fn inputs(ads: &[Adapter]) -> Vec<(&Adapter, f64)> {
    ads.iter().zip(WEIGHTS).collect()
}

/// Σ w s ΔW of the adapters that have (layer, target), f64.
fn weighted_sum(ads: &[Adapter], key: &(usize, String), coef: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    let mut sum: Option<Vec<f64>> = None;
    for (a, w) in ads.iter().zip(WEIGHTS) {
        if let Some(f) = a.factors.get(key) {
            let d = delta(f, coef(w, a.scale() as f64));
            sum = Some(match sum {
                None => d,
                Some(s) => s.iter().zip(&d).map(|(x, y)| x + y).collect(),
            });
        }
    }
    sum.expect("some adapter has the module")
}

#[test]
fn cat_is_the_exact_weighted_sum() {
    let seed = seed();
    let ads = three(&mut Rng::new(seed), false);
    let fused = fuse(&inputs(&ads), &opts("cat"), &quiet).unwrap();
    assert_eq!(fused.config.r, 4 + 3 + 2);
    assert_eq!(fused.config.lora_alpha, 9.0);
    assert!(!fused.config.use_rslora);
    assert_eq!(fused.config.target_modules, ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
    assert_eq!(fused.factors.len(), 2 * 6);
    for (key, f) in &fused.factors {
        assert_eq!(f.a.len(), 9 * f.inp);
        let want = weighted_sum(&ads, key, |w, s| w * s);
        assert_close(
            &format!("cat {key:?}"),
            &delta(f, fused.scale() as f64).iter().map(|&x| x as f32).collect::<Vec<_>>(),
            &want,
            1e-6,
            seed,
        );
    }
    // one adapter alone merges linearly, as in PEFT: the same delta at its weight
    let one = fuse(&[(&ads[0], -0.5)], &opts("ties"), &quiet).unwrap();
    assert_eq!(one.config.r, 4);
    for (key, f) in &one.factors {
        let want: Vec<f64> = delta(&ads[0].factors[key], -0.5 * ads[0].scale() as f64);
        let got: Vec<f32> = delta(f, one.scale() as f64).iter().map(|&x| x as f32).collect();
        assert_close("single adapter", &got, &want, 1e-6, seed);
    }
}

#[test]
fn factor_methods_follow_peft() {
    let seed = seed();
    let ads = three(&mut Rng::new(seed), true);
    for (method, density, sign) in [
        ("linear", None, SignMethod::Total),
        ("ties", Some(0.4), SignMethod::Total),
        ("ties", Some(0.7), SignMethod::Frequency),
        ("magnitude_prune", Some(0.5), SignMethod::Total),
    ] {
        let mut o = opts(method);
        o.density = density;
        o.majority_sign = sign;
        let fused = fuse(&inputs(&ads), &o, &quiet).unwrap();
        assert_eq!((fused.config.r, fused.config.lora_alpha), (4, 4.0));
        for (key, f) in &fused.factors {
            let present: Vec<(&Factors, f64)> = ads
                .iter()
                .zip(WEIGHTS)
                .filter_map(|(a, w)| a.factors.get(key).map(|x| (x, w * a.scale() as f64)))
                .collect();
            let wa: Vec<f64> = present.iter().map(|(_, ws)| ws.abs().sqrt() * ws.signum()).collect();
            let wb: Vec<f64> = present.iter().map(|(_, ws)| ws.abs().sqrt()).collect();
            let a_s: Vec<Vec<f64>> = present.iter().map(|(x, _)| f64s(&x.a)).collect();
            let b_s: Vec<Vec<f64>> = present.iter().map(|(x, _)| f64s(&x.b)).collect();
            let d = density.unwrap_or(1.0);
            let what = format!("{method} {density:?} {sign:?} {key:?}");
            assert_close(&format!("{what} A"), &f.a, &ref_combine(method, &a_s, &wa, d, sign), 1e-6, seed);
            assert_close(&format!("{what} B"), &f.b, &ref_combine(method, &b_s, &wb, d, sign), 1e-6, seed);
        }
    }
}

/// The best rank-k approximation of M [out, in] by a one-sided Jacobi SVD (Hestenes): rotate
/// column pairs of M·V until orthogonal; the columns are then σⱼuⱼ and V's columns vⱼ.
fn best_rank(m: &[f64], out: usize, inp: usize, k: usize) -> Vec<f64> {
    let mut w = m.to_vec();
    let mut v: Vec<f64> = (0..inp * inp).map(|e| (e / inp == e % inp) as u8 as f64).collect();
    for _sweep in 0..100 {
        let mut rotated = false;
        for p in 0..inp {
            for q in p + 1..inp {
                let (mut al, mut be, mut ga) = (0.0, 0.0, 0.0);
                for i in 0..out {
                    let (x, y) = (w[i * inp + p], w[i * inp + q]);
                    (al, be, ga) = (al + x * x, be + y * y, ga + x * y);
                }
                if ga.abs() <= 1e-15 * (al * be).sqrt() || ga == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (be - al) / (2.0 * ga);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for (mat, rows) in [(&mut w, out), (&mut v, inp)] {
                    for i in 0..rows {
                        let (x, y) = (mat[i * inp + p], mat[i * inp + q]);
                        mat[i * inp + p] = c * x - s * y;
                        mat[i * inp + q] = s * x + c * y;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let norm = |j: usize| (0..out).map(|i| w[i * inp + j].powi(2)).sum::<f64>();
    let mut order: Vec<usize> = (0..inp).collect();
    order.sort_by(|&i, &j| norm(j).total_cmp(&norm(i)));
    let mut r = vec![0.0; out * inp];
    for &j in order.iter().take(k) {
        for i in 0..out {
            for c in 0..inp {
                r[i * inp + c] += w[i * inp + j] * v[c * inp + j];
            }
        }
    }
    r
}

#[test]
fn svd_methods_are_best_low_rank_approximations() {
    let seed = seed();
    let ads = three(&mut Rng::new(seed), false);
    for (method, density, rank, peft_scale) in [
        ("svd", None, None, false),
        ("svd", None, Some(3), true),
        ("ties_svd", Some(0.5), Some(5), false),
        ("magnitude_prune_svd", Some(0.3), None, false),
    ] {
        let mut o = opts(method);
        o.density = density;
        o.rank = rank;
        o.peft_svd_scale = peft_scale;
        let fused = fuse(&inputs(&ads), &o, &quiet).unwrap();
        let k = rank.unwrap_or(4);
        assert_eq!((fused.config.r, fused.config.lora_alpha), (k, k as f64));
        let coef = |w: f64, s: f64| if peft_scale { w * s } else { w };
        for (key, f) in &fused.factors {
            let combined = if method == "svd" {
                weighted_sum(&ads, key, |w, s| coef(w, s) * s)
            } else {
                let present: Vec<(Vec<f64>, f64)> = ads
                    .iter()
                    .zip(WEIGHTS)
                    .filter_map(|(a, w)| {
                        a.factors.get(key).map(|x| (delta(x, a.scale() as f64), coef(w, a.scale() as f64)))
                    })
                    .collect();
                let ts: Vec<Vec<f64>> = present.iter().map(|p| p.0.clone()).collect();
                let ws: Vec<f64> = present.iter().map(|p| p.1).collect();
                ref_combine(method.trim_end_matches("_svd"), &ts, &ws, density.unwrap(), SignMethod::Total)
            };
            let want = best_rank(&combined, f.out, f.inp, k);
            let got: Vec<f32> = delta(f, 1.0).iter().map(|&x| x as f32).collect();
            assert_close(&format!("{method} rank {k} {key:?}"), &got, &want, 1e-5, seed);
        }
    }
}

#[test]
fn dare_prunes_at_its_density_and_rescales() {
    let seed = seed();
    let mut ads = three(&mut Rng::new(seed), true);
    ads.truncate(2);
    let density = 0.3;
    let run = |method: &str, s: u64| {
        let mut o = opts(method);
        o.density = Some(density);
        o.seed = s;
        // the second adapter at weight 0 leaves the first's pruned, rescaled values alone
        fuse(&[(&ads[0], 0.5), (&ads[1], 0.0)], &o, &quiet).unwrap()
    };
    let fused = run("dare_linear", seed);
    let (mut kept, mut total) = (0usize, 0usize);
    for (key, f) in &fused.factors {
        let Some(orig) = ads[0].factors.get(key) else { continue };
        let ws = 0.5 * ads[0].scale() as f64;
        for (got, x) in f.a.iter().zip(&orig.a) {
            total += 1;
            if *got != 0.0 {
                kept += 1;
                let want = ws.sqrt() * *x as f64 / density;
                assert!((*got as f64 - want).abs() <= 1e-6 * want.abs(), "kept value {got}, want {want}");
            }
        }
    }
    // binomial: mean n·d, sd √(n·d·(1−d)); 5 sd either side
    let (n, d) = (total as f64, density);
    let sd = (n * d * (1.0 - d)).sqrt();
    assert!(((kept as f64) - n * d).abs() < 5.0 * sd, "kept {kept} of {total} at density {d}");
    // seeded: the same seed draws the same masks, another seed others
    assert_eq!(run("dare_linear", seed).factors, fused.factors);
    assert_ne!(run("dare_linear", seed ^ 1).factors, fused.factors);
    // at density 1 nothing is dropped: dare_ties is ties
    let mut o = opts("dare_ties");
    o.density = Some(1.0);
    let mut t = opts("ties");
    t.density = Some(1.0);
    let i = inputs(&ads);
    assert_eq!(fuse(&i, &o, &quiet).unwrap().factors, fuse(&i, &t, &quiet).unwrap().factors);
}

#[test]
fn mismatched_adapters_are_errors() {
    let seed = seed();
    let ads = three(&mut Rng::new(seed), false);
    let err = |method: &str, density: Option<f64>, ins: &[(&Adapter, f64)]| {
        let mut o = opts(method);
        o.density = density;
        fuse(ins, &o, &quiet).unwrap_err().to_string()
    };
    let e = err("linear", None, &inputs(&ads));
    assert!(e.contains("one rank") && e.contains("adapter-0 (r 4)") && e.contains("adapter-1 (r 3)"), "{e}");
    let e = err("ties", None, &inputs(&ads[..1].iter().chain(&ads[..1]).cloned().collect::<Vec<_>>()));
    assert!(e.contains("--density"), "{e}");
    let e = err("svd", Some(1.5), &inputs(&ads));
    assert!(e.contains("outside [0, 1]"), "{e}");
    assert!("bogus".parse::<Method>().unwrap_err().to_string().contains("cat, linear, svd"));
    assert!(fuse(&[], &opts("cat"), &quiet).is_err());
    // an adapter of another model: same module, other shape
    let wide = Tiny { hidden: 40, ..spec() };
    let other = random_adapter(&mut Rng::new(seed), &wide, &["q_proj"], 4, 8.0, false);
    let e = err("cat", None, &[(&ads[0], 1.0), (&other, 1.0)]);
    assert!(e.contains("different models") && e.contains("q_proj"), "{e}");
    // with the odd one first, both are named with their shapes, the good one not blamed alone
    let mut other = other;
    other.source = Some("wide-adapter".into());
    let e = err("cat", None, &[(&other, 1.0), (&ads[0], 1.0)]);
    assert!(e.contains("wide-adapter has [40 → ") && e.contains("adapter-0 has [32 → "), "{e}");
}

#[test]
fn runtime_fused_and_merged_models_agree() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let spec = spec();
    let dir = temp_dir("fuse-models");
    let weights = random_weights(&spec, seed);
    write_hf(&dir.join("hf"), &spec, &weights, safetensors::Dtype::F32);
    write_gguf_model(&dir.join("tiny.gguf"), &spec, &weights, false);
    let src = ModelSource::open(&dir.join("hf")).unwrap();
    let ads = three(&mut rng, false);
    let (task, safety) = (&ads[0], &ads[1]);
    let tokens: Vec<u32> = (0..10).map(|_| rng.below(spec.vocab) as u32).collect();
    let load = |s: &ModelSource| Llama::load(gpu, s, LoadOptions { dtype: DType::F32, layout: None }).unwrap();

    let mut host = HostLlama::load(&src).unwrap();
    host.merge(task, 0.6);
    host.merge(safety, -0.4);
    let want: Vec<f64> = host.logits(&tokens).concat();

    let mut runtime = load(&src);
    runtime.attach(&[task.clone(), safety.clone()], &[0.6, -0.4]).unwrap();
    assert_close("runtime fusion", &logits(&runtime, &tokens), &want, 1e-4, seed);
    runtime.attach_sequential(&[task.clone(), safety.clone()], &[0.6, -0.4]).unwrap();
    assert_close("sequential application", &logits(&runtime, &tokens), &want, 1e-4, seed);

    let fused = fuse(&[(task, 0.6), (safety, -0.4)], &opts("cat"), &quiet).unwrap();
    fused.save(&dir.join("fused")).unwrap();
    let mut loaded = load(&src);
    loaded.attach(&[Adapter::load(&dir.join("fused")).unwrap()], &[1.0]).unwrap();
    assert_close("fused adapter", &logits(&loaded, &tokens), &want, 1e-4, seed);

    // merged into each kind of base; the GGUF one comes out with q/k rows in HF order
    for base in ["hf", "tiny.gguf"] {
        let out = dir.join(format!("merged-{base}"));
        let base_src = ModelSource::open(&dir.join(base)).unwrap();
        let e = export_hf(&base_src, &[(&fused, 1.0)], safetensors::Dtype::F32, &out, &mut quiet_mut()).unwrap();
        assert_eq!(e.merged, 2 * 5);
        assert!(out.join("config.json").exists() && out.join("model.safetensors").exists());
        let merged = load(&ModelSource::open(&out).unwrap());
        assert_close(&format!("merged into {base}"), &logits(&merged, &tokens), &want, 1e-4, seed);
    }
    // f16 output rounds the weights, nothing more
    let out = dir.join("merged-f16");
    export_hf(&src, &[(&fused, 1.0)], safetensors::Dtype::F16, &out, &mut quiet_mut()).unwrap();
    let merged = load(&ModelSource::open(&out).unwrap());
    assert_close("merged, f16", &logits(&merged, &tokens), &want, 5e-3, seed);
    std::fs::remove_dir_all(&dir).ok();
}

fn quiet_mut() -> impl FnMut(usize, usize) {
    |_, _| {}
}

#[test]
fn cli_fuse_writes_adapters_and_merged_models() {
    let seed = seed();
    let dir = temp_dir("cli-fuse");
    let spec = spec();
    write_hf(&dir.join("base"), &spec, &random_weights(&spec, seed), safetensors::Dtype::F32);
    let ads = three(&mut Rng::new(seed), false);
    for (i, a) in ads.iter().enumerate() {
        a.save(&dir.join(format!("a{i}"))).unwrap();
    }
    let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
    let (a0, a1, out) = (format!("{}:0.6", p("a0")), format!("{}:-0.4", p("a1")), p("fused"));
    let run = run_cli(&["fuse", "--adapter", &a0, "--adapter", &a1, "--method", "svd", "--rank", "5", "--out", &out]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let f = Adapter::load(&dir.join("fused")).unwrap();
    assert_eq!(f.config.r, 5);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fused/fuse_report.json")).unwrap()).unwrap();
    assert_eq!(report["method"], "svd");
    let merged = p("merged");
    let run = run_cli(&[
        "fuse",
        "--adapter",
        &a0,
        "--adapter",
        &a1,
        "--merge-into-base",
        "--model",
        &p("base"),
        "--out",
        &merged,
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(!dir.join("merged/adapter_config.json").exists(), "a merged model must not look like an adapter");
    ModelSource::open(&dir.join("merged")).unwrap().config().unwrap();
    // refusals name the problem
    let run = run_cli(&["fuse", "--adapter", &a0, "--adapter", &a1, "--method", "linear", "--out", &out]);
    let e = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && e.contains("one rank"), "{e}");
    let run = run_cli(&["fuse", "--adapter", &p("missing"), "--out", &out]);
    let e = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && e.contains("missing"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `lorafuse fuse` refuses an adapter holding a NaN or infinity under every method (the file and
/// tensor named), an --out that is, holds or lies inside an input, and an output file that is a
/// symbolic link; nothing is written over an input.
#[test]
fn cli_fuse_refuses_non_finite_adapters_and_outputs_over_inputs() {
    let seed = seed();
    let dir = temp_dir("cli-fuse-refusals");
    let mut ads = three(&mut Rng::new(seed), true);
    let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
    ads[0].save(&dir.join("a0")).unwrap();
    ads[1].factors.values_mut().nth(1).unwrap().b[3] = f32::NAN;
    ads[1].save(&dir.join("bad")).unwrap();
    let fuse = |extra: &[&str]| {
        let o = run_cli(&[&["fuse", "--adapter", &format!("{}:0.5", p("a0"))], extra].concat());
        (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let bad = format!("{}:0.5", p("bad"));
    for method in ["cat", "linear", "svd", "ties", "dare_linear", "magnitude_prune_svd"] {
        let (ok, e) =
            fuse(&["--adapter", &bad, "--method", method, "--density", "0.5", "--out", &p(&format!("out-{method}"))]);
        assert!(
            !ok && e.contains("adapter_model.safetensors") && e.contains("lora_B.weight") && e.contains("NaN"),
            "{method}: {e}"
        );
        assert!(!dir.join(format!("out-{method}")).exists(), "{method}");
    }
    let weights = std::fs::read(dir.join("a0/adapter_model.safetensors")).unwrap();
    for (out, how) in
        [(p("a0"), "is an input"), (dir.to_str().unwrap().to_string(), "holds an input"), (p("a0/sub"), "lies inside")]
    {
        let (ok, e) = fuse(&["--out", &out]);
        assert!(!ok && e.contains(how), "{out}: {e}");
    }
    assert_eq!(std::fs::read(dir.join("a0/adapter_model.safetensors")).unwrap(), weights, "an input was written over");
    #[cfg(unix)]
    {
        let (out, elsewhere) = (dir.join("linked"), dir.join("elsewhere.json"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(&elsewhere, "keep").unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("adapter_config.json")).unwrap();
        let (ok, e) = fuse(&["--out", out.to_str().unwrap()]);
        assert!(!ok && e.contains("adapter_config.json") && e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "keep");
    }
    std::fs::remove_dir_all(&dir).ok();
}
