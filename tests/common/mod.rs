//! Shared test harness: one GPU per test binary (fails, never skips, without an adapter), fresh
//! random inputs with the seed printed for reproduction, and relative Frobenius errors in which
//! NaN never passes.
#![allow(dead_code)]

use std::sync::OnceLock;

use lorafuse::gpu::{Gpu, GpuOptions};
use lorafuse::kernels::matmul::tune;

/// The device every test in this binary shares. Panics (so the test fails) when wgpu finds no
/// adapter: a machine without a GPU needs Mesa's lavapipe, which .ci/run installs.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let opts = GpuOptions::from_env().expect("LORAFUSE_* environment");
        match Gpu::new(&opts) {
            Ok(g) => {
                eprintln!("test device: {}", g.describe());
                // Tests force variants or run the built-in choices, never timed ones: a choice
                // one test's warm-up made could change another's kernels between two runs it
                // compares bit for bit. tests/tune.rs and the CLI tests exercise the tuner.
                tune::configure(&g, tune::Settings { cache_dir: None, timing: false });
                g
            }
            Err(e) => panic!("GPU tests need an adapter and found none: {e}"),
        }
    })
}

/// A per-test seed: `LORAFUSE_TEST_SEED` if set, else fresh from the clock.
pub fn seed() -> u64 {
    match std::env::var("LORAFUSE_TEST_SEED") {
        Ok(s) => s.parse().expect("LORAFUSE_TEST_SEED must be an integer"),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        }
    }
}

/// Test data from the crate's one generator (src/rng.rs), seeded by the test's seed.
pub struct Rng(lorafuse::rng::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(lorafuse::rng::Rng::new(seed, 0))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0.symmetric(1.0)
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        self.0.vec(n, 1.0)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }
}

/// ‖got − want‖_F / ‖want‖_F; infinite when `got` has a NaN or infinity, or lengths differ.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let mut num = 0.0;
    let mut den = 0.0;
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - w).powi(2);
        den += w * w;
    }
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64, seed: u64) {
    let e = rel_err(got, want);
    assert!(
        e <= tol,
        "{what}: relative Frobenius error {e:.3e} > {tol:.1e} (seed {seed}; rerun with LORAFUSE_TEST_SEED={seed})"
    );
}

/// Rounds through f16, as the GPU stores f16 weights.
pub fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// Awkward sizes: the rows the issue names and inner/outer sizes that are multiples of no tile.
pub const MS: [usize; 4] = [1, 7, 33, 257];
pub const KNS: [(usize, usize); 3] = [(45, 37), (132, 67), (301, 259)];

/// The default model, fetched by scripts/fetch-model.sh (which .ci/run calls). Missing is a
/// failure, not a skip.
pub fn default_model() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-model.sh", p.display());
    p
}

/// The golden reference of SmolLM2-135M-Instruct (../shared/fixtures, beside the checkout).
pub fn golden() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/smollm2_golden.json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (the shared/ folder must sit beside the checkout)", p.display()));
    serde_json::from_str(&text).expect("golden fixture is JSON")
}

pub fn golden_ids(g: &serde_json::Value, key: &str) -> Vec<u32> {
    g[key].as_array().unwrap_or_else(|| panic!("golden.{key}")).iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// Logits of every position of one sequence, from one forward pass of the GPU model.
pub fn logits(model: &lorafuse::model::llama::Llama, tokens: &[u32]) -> Vec<f32> {
    let cache = model.new_cache(1, tokens.len() + 1).unwrap();
    let mut b = lorafuse::model::batch::Batch::default();
    b.push_sequence(0, 0, tokens, false);
    b.logits_rows = (0..tokens.len() as u32).collect();
    model.forward(&b, &cache).unwrap().read_f32(model.gpu()).unwrap()
}

/// The lorafuse binary with `args`, the default model as LORAFUSE_MODEL (a test's --model wins).
pub fn run_cli(args: &[&str]) -> std::process::Output {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    std::process::Command::new(env!("CARGO_BIN_EXE_lorafuse")).args(args).env("LORAFUSE_MODEL", model).output().unwrap()
}

/// A SmolLM2 adapter on q_proj and v_proj of every layer, B = `b_scale` × random (0: fresh).
pub fn smollm_adapter(b_scale: f32) -> lorafuse::lora::peft::Adapter {
    use lorafuse::lora::peft::{Adapter, Factors, LoraConfig};
    let mut factors = std::collections::BTreeMap::new();
    let mut rng = Rng::new(seed());
    for layer in 0..30 {
        for (t, out) in [("q_proj", 576), ("v_proj", 192)] {
            let b = rng.vec(out * 8).iter().map(|x| x * b_scale).collect();
            factors.insert((layer, t.to_string()), Factors { a: rng.vec(8 * 576), b, inp: 576, out });
        }
    }
    let targets = vec!["q_proj".to_string(), "v_proj".to_string()];
    Adapter { config: LoraConfig::new(8, 32.0, 0.05, &targets, false, None), factors, source: None }
}

pub mod tiny;
