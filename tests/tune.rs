//! The autotuner: a recording only looks choices up; the warm-up times the classes a dry run of
//! the work met, once per class; choices are saved atomically, reloaded by a new process, and a
//! corrupt cache is replaced rather than trusted.

mod common;

use common::*;
use lorafuse::gpu::{DType, Gpu, GpuOptions, Layout, Matrix, Recorder, Tensor};
use lorafuse::kernels::matmul::tune::{self, Problem, Settings};
use lorafuse::kernels::matmul::{Form, MatmulOpts, Variant, matmul};

fn open_with_cache(dir: &std::path::Path, timing: bool) -> Gpu {
    let g = Gpu::new(&GpuOptions::from_env().unwrap()).unwrap();
    tune::configure(&g, Settings { cache_dir: Some(dir.to_path_buf()), timing });
    g
}

/// Records (without running it unless `run`) one product of the class of (m, n, k).
fn product(g: &Gpu, form: Form, layout: Layout, (m, n, k): (usize, usize, usize), run: bool) {
    let (a, b) = match form {
        Form::Nt => ([m, k], [n, k]),
        Form::Nn => ([m, k], [k, n]),
        Form::Tn => ([k, m], [k, n]),
    };
    let x = Tensor::zeros(g, &a, DType::F32, "x").unwrap();
    let w = Matrix::from_host(g, layout, b[0], b[1], &vec![0.5; b[0] * b[1]], DType::F32, "w").unwrap();
    let y = Tensor::zeros(g, &[m, n], DType::F32, "y").unwrap();
    let mut rec = Recorder::new(g);
    matmul(&mut rec, form, &x, &w, &y, &MatmulOpts::default()).unwrap();
    if run {
        rec.run().unwrap();
    } else {
        rec.submit().unwrap();
    }
}

/// The warm-up of one product: its class timed unless cached; returns how many classes it timed.
fn warm_up(g: &Gpu, form: Form, layout: Layout, mnk: (usize, usize, usize)) -> usize {
    tune::warm_up(g, true, || {
        product(g, form, layout, mnk, false);
        Ok(())
    })
    .unwrap()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lorafuse-test-{name}-{}-{}", std::process::id(), seed()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn choices_are_timed_once_saved_and_reloaded() {
    let _ = gpu();
    let dir = temp_dir("tune");
    let g = open_with_cache(&dir, true);
    let layout = tune::tune_layout(&g, true).unwrap();
    assert_eq!(warm_up(&g, Form::Nt, layout, (40, 300, 200)), 1, "the warm-up times the class it met");
    let p = Problem { form: Form::Nt, layout, dtype: DType::F32, m: 40, n: 300, k: 200 };
    let v = tune::lookup(&g, &p).unwrap();
    assert!(Variant::candidates(&g, Form::Nt, layout).contains(&v));
    let entries = tune::tuner(&g).lock().entries().clone();
    let key = entries.keys().find(|k| k.starts_with("matmul/nt/")).expect("an nt entry").clone();
    let choice = &entries[&key];
    assert_eq!(choice.variant, v.to_string(), "the forward runs what was timed fastest");
    assert_eq!(choice.tried.len(), Variant::candidates(&g, Form::Nt, layout).len(), "every candidate timed");
    assert!(choice.tried.values().all(|ms| *ms > 0.0 && ms.is_finite()));
    assert!(dir.join("tune.json").exists());
    // Same class, another shape: no new timing, same answer.
    assert_eq!(warm_up(&g, Form::Nt, layout, (50, 260, 140)), 0);
    assert_eq!(tune::lookup(&g, &Problem { m: 50, n: 260, k: 140, ..p }).unwrap(), v);
    assert_eq!(tune::tuner(&g).lock().entries().len(), entries.len());
    // A new device handle (a new process) reads the choice back instead of timing again.
    let g2 = open_with_cache(&dir, true);
    assert_eq!(tune::tuner(&g2).lock().entries().get(&key).map(|c| c.variant.clone()), Some(v.to_string()));
    assert_eq!(tune::preferred_layout(&g2), layout);
    assert_eq!(tune::tune_layout(&g2, true).unwrap(), layout);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn corrupt_cache_is_replaced() {
    let _ = gpu();
    let dir = temp_dir("corrupt");
    std::fs::write(dir.join("tune.json"), "{ not json").unwrap();
    let g = open_with_cache(&dir, true);
    assert!(tune::tuner(&g).lock().entries().is_empty());
    assert_eq!(warm_up(&g, Form::Tn, Layout::Buffer, (8, 40, 300)), 1);
    let text = std::fs::read_to_string(dir.join("tune.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("rewritten cache is valid JSON");
    assert!(parsed["devices"].as_object().map(|d| !d.is_empty()).unwrap_or(false));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn timing_off_uses_defaults_and_writes_nothing() {
    let _ = gpu();
    let dir = temp_dir("off");
    let g = open_with_cache(&dir, false);
    for form in Form::ALL {
        let layout = if form == Form::Tn { Layout::Buffer } else { tune::tune_layout(&g, true).unwrap() };
        assert_eq!(warm_up(&g, form, layout, (5, 64, 64)), 0, "{form}: nothing timed");
        let v = tune::lookup(&g, &Problem { form, layout, dtype: DType::F32, m: 1, n: 64, k: 64 }).unwrap();
        assert!(Variant::candidates(&g, form, layout).contains(&v), "{form}: {v}");
    }
    assert!(tune::tuner(&g).lock().entries().is_empty());
    assert!(!dir.join("tune.json").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_recording_only_looks_choices_up() {
    let _ = gpu();
    let dir = temp_dir("lookup");
    let g = open_with_cache(&dir, true);
    let layout = tune::preferred_layout(&g);
    // products recorded and run outside a warm-up time nothing, note nothing, write nothing
    for form in Form::ALL {
        let layout = if form == Form::Tn { Layout::Buffer } else { layout };
        product(&g, form, layout, (33, 70, 90), true);
    }
    assert!(tune::tuner(&g).lock().entries().is_empty());
    assert!(!dir.join("tune.json").exists());
    assert_eq!(tune::warm_up(&g, true, || Ok(())).unwrap(), 0, "no class was left pending");
    // the explicit step times the classes it is given, each once
    let p = Problem { form: Form::Nn, layout, dtype: DType::F16, m: 100, n: 70, k: 90 };
    let many = tune::candidates_of(&g, &p).unwrap().len() > 1;
    assert_eq!(tune::tune_now(&g, &[p, Problem { m: 120, ..p }], true).unwrap(), many as usize);
    assert_eq!(tune::tune_now(&g, &[p], true).unwrap(), 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn variant_names_round_trip() {
    let g = gpu();
    for form in Form::ALL {
        for layout in [Layout::Buffer, Layout::Texture] {
            for v in Variant::candidates(g, form, layout) {
                assert_eq!(v.to_string().parse::<Variant>().unwrap(), v);
            }
        }
    }
    assert!("texture_rxc2".parse::<Variant>().is_err());
    assert!("fast".parse::<Variant>().is_err());
}
