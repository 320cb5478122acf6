//! The autotuner: choices are timed once per shape class, saved atomically, reloaded by a new
//! process, and a corrupt cache is replaced rather than trusted.

mod common;

use common::*;
use lorafuse::gpu::{DType, Gpu, GpuOptions, Layout};
use lorafuse::kernels::matmul::{Form, Variant};
use lorafuse::tune;

fn open_with_cache(dir: &std::path::Path, timing: bool) -> Gpu {
    let mut opts = GpuOptions::from_env().unwrap();
    opts.tune_cache = Some(dir.to_path_buf());
    opts.tune = timing;
    Gpu::new(&opts).unwrap()
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
    let layout = tune::preferred_layout(&g).unwrap();
    let v = tune::select(&g, Form::Nt, layout, DType::F32, 40, 300, 200).unwrap();
    assert!(Variant::candidates(&g, Form::Nt, layout).contains(&v));
    let entries = g.tuner().entries().clone();
    let key = entries.keys().find(|k| k.starts_with("matmul/nt/")).expect("an nt entry").clone();
    let choice = &entries[&key];
    assert_eq!(choice.tried.len(), Variant::candidates(&g, Form::Nt, layout).len(), "every candidate timed");
    assert!(choice.tried.values().all(|ms| *ms > 0.0 && ms.is_finite()));
    assert!(dir.join("tune.json").exists());
    // Same class, another shape: no new timing, same answer.
    assert_eq!(tune::select(&g, Form::Nt, layout, DType::F32, 50, 260, 140).unwrap(), v);
    assert_eq!(g.tuner().entries().len(), entries.len());
    // A new device handle (a new process) reads the choice back instead of timing again.
    let g2 = open_with_cache(&dir, true);
    assert_eq!(g2.tuner().entries().get(&key).map(|c| c.variant.clone()), Some(v.to_string()));
    assert_eq!(tune::preferred_layout(&g2).unwrap(), layout);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn corrupt_cache_is_replaced() {
    let _ = gpu();
    let dir = temp_dir("corrupt");
    std::fs::write(dir.join("tune.json"), "{ not json").unwrap();
    let g = open_with_cache(&dir, true);
    assert!(g.tuner().entries().is_empty());
    tune::select(&g, Form::Tn, Layout::Buffer, DType::F32, 8, 40, 300).unwrap();
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
        let layout = if form == Form::Tn { Layout::Buffer } else { tune::preferred_layout(&g).unwrap() };
        let v = tune::select(&g, form, layout, DType::F32, 1, 64, 64).unwrap();
        assert!(Variant::candidates(&g, form, layout).contains(&v), "{form}: {v}");
    }
    assert!(!dir.join("tune.json").exists());
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
