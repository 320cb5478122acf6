//! The kernel benchmark runs end to end on a tiny grid and its JSON has the fields the issue
//! names. (No speed is asserted: speed is measured in benchmarks, not tests.)

mod common;

use common::*;
use lorafuse::bench::{Silent, ops};
use lorafuse::gpu::DType;
use lorafuse::kernels::matmul::Form;

#[test]
fn kernel_bench_reports_every_field() {
    let gpu = gpu();
    let grid = ops::Grid {
        matmuls: vec![(Form::Nt, 9, 70, 33), (Form::Tn, 5, 40, 12)],
        dtypes: vec![DType::F32, DType::F16],
        lora_ms: vec![1, 16],
        lora_ranks: vec![8],
        lora_adapters: vec![1, 2],
        lora_hidden: vec![64],
        lora_dtype: DType::F32,
        seqs: vec![9],
        rows: 5,
        reps: 1,
    };
    let report = ops::run(gpu, &grid, &mut Silent).unwrap();
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    for key in ["name", "backend", "driver"] {
        assert!(json["device"][key].is_string(), "device.{key}");
    }
    for key in ["fma_gflops", "copy_gbps", "dispatch_us"] {
        let v = json["ceiling"][key].as_f64().unwrap();
        assert!(v > 0.0 && v.is_finite(), "ceiling.{key} = {v}");
    }
    let ops = json["ops"].as_array().unwrap();
    assert!(ops.iter().any(|r| r["op"] == "matmul nt") && ops.iter().any(|r| r["op"] == "attention backward"));
    for row in ops {
        for key in ["op", "shape", "dtype", "variant", "launches", "ms", "gflops", "gbps", "pct_fma", "pct_copy"] {
            assert!(!row[key].is_null(), "kernel row lacks {key}: {row}");
        }
        assert!(row["ms"].as_f64().unwrap() > 0.0 && row["launches"].as_u64().unwrap() >= 1, "{row}");
    }
    let lora = json["fused_lora"].as_array().unwrap();
    assert_eq!(lora.len(), 4);
    for row in lora {
        for key in ["m", "k", "n", "rank", "adapters", "base_ms", "fused_ms", "sequential_ms", "merged_ms"] {
            assert!(!row[key].is_null(), "fused_lora row lacks {key}: {row}");
        }
        for key in ["base_ms", "fused_ms", "sequential_ms", "merged_ms"] {
            assert!(row[key].as_f64().unwrap() > 0.0, "{key} in {row}");
        }
    }
    let md = ops::markdown(&report);
    assert!(md.contains("| M | hidden |") && md.contains(&report.device.name));
}

/// `bench fuse` end to end on a tiny random model: a base row and fused, sequential and merged
/// rows per adapter count, every rate positive.
#[test]
fn fuse_bench_reports_every_mode() {
    let gpu = gpu();
    let spec = tiny::Tiny { layers: 2, ..tiny::Tiny::default() };
    let dir = tiny::temp_dir("bench-fuse");
    tiny::write_hf(&dir, &spec, &tiny::random_weights(&spec, 3), safetensors::Dtype::F32);
    let opts = lorafuse::bench::fuse::Options {
        counts: vec![0, 2],
        r: 4,
        targets: vec!["q_proj".into(), "down_proj".into()],
        prompt_tokens: 9,
        gen_tokens: 3,
        batch: 2,
        reps: 1,
    };
    let load = lorafuse::model::llama::LoadOptions { dtype: DType::F32, layout: None };
    let report = lorafuse::bench::fuse::run(gpu, &dir, load, &opts, &mut Silent).unwrap();
    let modes: Vec<(usize, &str)> = report.rows.iter().map(|r| (r.adapters, r.mode.as_str())).collect();
    assert_eq!(modes, [(0, "base"), (2, "fused"), (2, "sequential"), (2, "merged")]);
    for r in &report.rows {
        assert!(r.prefill_tps > 0.0 && r.decode_tps > 0.0 && r.prefill_tps.is_finite(), "{r:?}");
    }
    let md = lorafuse::bench::fuse::markdown(&report);
    assert!(md.contains("fused / sequential"), "{md}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `bench serve` end to end on SmolLM2, briefly: a fused and a split row per mix count, every
/// request served, rates and percentiles positive, the chart drawn.
#[test]
fn serve_bench_reports_fused_and_split_rows() {
    let gpu = gpu();
    let src = lorafuse::model::source::ModelSource::open(&default_model()).unwrap();
    let load = lorafuse::model::llama::LoadOptions { dtype: DType::Q4, layout: None };
    let model = lorafuse::model::llama::Llama::load(gpu, &src, load).unwrap();
    let opts = lorafuse::bench::serve::Options {
        clients: 3,
        requests: 4,
        max_tokens: 3,
        mixes: vec![1, 0],
        time_limit: std::time::Duration::from_secs(600),
        max_seqs: 2,
        r: 4,
        targets: vec!["q_proj".into(), "v_proj".into()],
    };
    let (tok, template) = (src.tokenizer().unwrap(), src.chat_template().unwrap());
    let report = lorafuse::bench::serve::run(model, tok, template, "smollm2", &opts, &mut Silent).unwrap();
    let rows: Vec<(usize, &str)> = report.rows.iter().map(|r| (r.mixes, r.mode)).collect();
    assert_eq!(rows, [(1, "fused"), (1, "split"), (3, "fused"), (3, "split")]);
    for r in &report.rows {
        assert!(r.requests == 4 && !r.cut_short && r.tokens >= 4, "{r:?}");
        assert!(r.tokens_per_sec > 0.0 && r.ttft_p50 > 0.0 && r.latency_p99 >= r.ttft_p99, "{r:?}");
    }
    assert!(lorafuse::bench::serve::markdown(&report).contains("| 3 | split |"));
    assert!(lorafuse::bench::serve::chart(&report).starts_with("<svg"));
}
