//! `cargo bench`: the same kernel benchmark as `lorafuse bench kernels` (the full grid; set
//! LORAFUSE_BENCH_QUICK=1 for the short one), printed as the Markdown tables of BENCHMARKS.md.

use lorafuse::bench::{BarProgress, ops};
use lorafuse::gpu::Gpu;

fn main() {
    // cargo passes `--bench`; the filter arguments of libtest do not apply to this harness.
    let gpu = match Gpu::from_env() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("cargo bench needs a GPU adapter: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("device: {}", gpu.describe());
    let grid =
        if std::env::var_os("LORAFUSE_BENCH_QUICK").is_some() { ops::Grid::quick() } else { ops::Grid::standard() };
    let report = {
        let mut progress = BarProgress::new();
        match ops::run(&gpu, &grid, &mut progress) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("benchmark failed: {e}");
                std::process::exit(1);
            }
        }
    };
    println!("{}", ops::markdown(&report));
}
