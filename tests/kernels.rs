//! Every kernel through the one harness (src/kernels/harness): check mode (fresh random inputs
//! of awkward sizes, outputs poisoned and guarded by sentinels, relative error against the f64
//! reference) and grad mode (the backward kernels against finite differences of their forward
//! references); the harness itself catches skipped, stray and wrong writes; and the table
//! reaches every entry point of every shader.

mod common;

use common::*;
use lorafuse::gpu::{DType, Recorder, Tensor};
use lorafuse::kernels::attention::AttentionVariant;
use lorafuse::kernels::elementwise::copy;
use lorafuse::kernels::harness::{self, Case, Expect, Instance, Output, check_table, output};

#[test]
fn every_kernel_passes_check_mode() {
    let gpu = gpu();
    let seed = seed();
    let table = check_table(gpu);
    let failures = harness::check(gpu, &table, seed);
    let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed (rerun with LORAFUSE_TEST_SEED={seed}):\n{}",
        failures.len(),
        table.len(),
        list.join("\n")
    );
}

#[test]
fn backward_kernels_pass_grad_mode() {
    let gpu = gpu();
    let seed = seed();
    let (failures, compared) = harness::grad(gpu, &check_table(gpu), seed);
    let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
    assert!(failures.is_empty(), "rerun with LORAFUSE_TEST_SEED={seed}:\n{}", list.join("\n"));
    // rmsnorm, swiglu and rope backward, attention backward, cross-entropy, LoRA dX/dA/dB
    assert!(compared >= 100, "only {compared} gradient entries compared");
}

/// A case copying `n` values of an input into a view of its output of `len` values: n < len
/// skips some, n > len writes past the shape.
fn copy_case(n: usize, len: usize, want: impl Fn(&[f32]) -> Vec<f64> + 'static) -> Case {
    Case {
        op: "test copy".into(),
        shape: format!("{n} into {len}"),
        dtype: DType::F32,
        variant: "-".into(),
        group: "test".into(),
        note: String::new(),
        build: Box::new(move |gpu, rng| {
            let a = rng.vec(n, 1.0);
            let src = Tensor::from_f32(gpu, &[1, n], &a, "src")?;
            let out = output(gpu, &[1, len], DType::F32, "out")?;
            let view = out.view(&[1, n])?;
            let outputs = vec![Output::new("out", &out, want(&a), Expect::Close(1e-6))];
            Ok(Instance { launch: Box::new(move |rec: &mut Recorder| copy(rec, &src, &view)), outputs, flops: None })
        }),
    }
}

#[test]
fn check_mode_catches_skipped_stray_and_wrong_writes() {
    let gpu = gpu();
    let seed = seed();
    let exact = |a: &[f32]| a.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let good = copy_case(100, 100, exact);
    let f = harness::check(gpu, &[good], seed);
    assert!(f.is_empty(), "a correct case failed: {f:?}");
    // 90 of 100 written: the poisoned rest is NaN
    let skipped = copy_case(90, 100, move |a| {
        let mut w = exact(a);
        w.resize(100, 0.0);
        w
    });
    let f = harness::check(gpu, &[skipped], seed);
    assert!(f.len() == 1 && f[0].what.contains("relative error inf"), "{f:?}");
    // 3 past the end: the guard's sentinels changed
    let stray = copy_case(103, 100, move |a| exact(&a[..100]));
    let f = harness::check(gpu, &[stray], seed);
    assert!(f.len() == 1 && f[0].what.contains("wrote past its shape"), "{f:?}");
    // a wrong reference: the comparison fails
    let wrong = copy_case(100, 100, move |a| exact(a).iter().map(|x| x + 0.01).collect());
    let f = harness::check(gpu, &[wrong], seed);
    assert!(f.len() == 1 && f[0].what.contains("relative error"), "{f:?}");
}

/// Running the check table compiles a pipeline for every compute entry point of every shader
/// (and every op of the shared elementwise entry): no kernel is missing from the harness.
#[test]
fn the_table_reaches_every_shader_entry_point() {
    let gpu = lorafuse::gpu::Gpu::from_env().expect("a GPU adapter");
    let f = harness::check(&gpu, &check_table(&gpu), seed());
    assert!(f.is_empty(), "{f:?}");
    let compiled = gpu.compiled_pipelines();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let shader = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.trim_start().starts_with("@compute") {
                continue;
            }
            let f = lines[i..].iter().find_map(|l| l.trim_start().strip_prefix("fn ")).unwrap();
            let name = f.split('(').next().unwrap().trim();
            // kernels that share data across a subgroup exist only where the device has such subgroups
            let skipped = match (shader.as_str(), name) {
                ("matmul_texture", _) => lorafuse::gpu::texture::subgroup_size(&gpu).is_none(),
                (_, "attention_groups") => {
                    !AttentionVariant::available(&gpu, 9, 3, 64).contains(&AttentionVariant::Groups)
                }
                ("attention_flash", _) => {
                    !AttentionVariant::available(&gpu, 9, 3, 64).contains(&AttentionVariant::Flash)
                }
                _ => false,
            };
            if !skipped && !compiled.iter().any(|k| k.shader == shader && k.entry == name) {
                missing.push(format!("{shader}::{name}"));
            }
        }
    }
    for define in ["SWIGLU", "SWIGLU_BACKWARD", "BIAS", "COPY"] {
        if !compiled.iter().any(|k| k.shader == "elementwise" && k.defines.iter().any(|d| d.0 == define)) {
            missing.push(format!("elementwise {define}"));
        }
    }
    assert!(missing.is_empty(), "entry points no harness case runs: {missing:?}");
}
