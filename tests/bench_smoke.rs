//! The kernel benchmark runs end to end on a tiny grid and its JSON has the fields the issue
//! names. (No speed is asserted: speed is measured in benchmarks, not tests.)

mod common;

use common::*;
use lorafuse::bench::{Silent, kernels};
use lorafuse::gpu::DType;
use lorafuse::kernels::matmul::Form;

#[test]
fn kernel_bench_reports_every_field() {
    let gpu = gpu();
    let grid = kernels::Grid {
        matmuls: vec![(Form::Nt, 9, 70, 33), (Form::Tn, 5, 40, 12)],
        dtypes: vec![DType::F32, DType::F16],
        lora_ms: vec![1, 16],
        lora_ranks: vec![8],
        lora_adapters: vec![1, 2],
        lora_hidden: vec![64],
        lora_dtype: DType::F32,
        reps: 1,
    };
    let report = kernels::run(gpu, &grid, &mut Silent).unwrap();
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    for key in ["name", "backend", "driver"] {
        assert!(json["device"][key].is_string(), "device.{key}");
    }
    for key in ["fma_gflops", "copy_gbps", "dispatch_us"] {
        let v = json["ceiling"][key].as_f64().unwrap();
        assert!(v > 0.0 && v.is_finite(), "ceiling.{key} = {v}");
    }
    let matmul = json["matmul"].as_array().unwrap();
    assert!(!matmul.is_empty());
    for row in matmul {
        for key in ["m", "k", "n", "form", "variant", "ms", "gflops"] {
            assert!(!row[key].is_null(), "matmul row lacks {key}: {row}");
        }
        assert!(row["ms"].as_f64().unwrap() > 0.0);
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
    let md = kernels::markdown(&report);
    assert!(md.contains("| M | hidden |") && md.contains(&report.device.name));
}
