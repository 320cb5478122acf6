//! The GPU layer: device limits and features, tensors, texture packing and splitting, the
//! profiler, launch grids past the per-dimension limit, and errors for oversized requests.

mod common;

use common::*;
use lorafuse::gpu::{Clock, DType, Gpu, GpuOptions, Layout, Matrix, Recorder, Tensor, TexMatrix};
use lorafuse::kernels::matmul::pack;
use lorafuse::kernels::matmul::{Form, MatmulOpts, Variant, matmul, matmul_ref};

#[test]
fn device_uses_the_adapters_own_limits() {
    let gpu = gpu();
    let caps = gpu.caps();
    // The WebGPU default is 128 MiB; the device must carry the adapter's value, whatever it is.
    let summary = gpu.summary();
    assert_eq!(caps.limits.max_storage_buffer_binding_size, summary.max_storage_buffer_binding_size);
    assert_eq!(caps.limits.max_texture_dimension_2d, summary.max_texture_dimension_2d);
    for f in &summary.features {
        match *f {
            "subgroups" => assert!(caps.subgroups),
            "shader-f16" => assert!(caps.shader_f16),
            "timestamp-query" => assert!(caps.timestamps),
            _ => {}
        }
    }
}

#[test]
fn tensors_round_trip() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let v = rng.vec(37 * 5);
    let t = Tensor::from_f32(gpu, &[37, 5], &v, "t").unwrap();
    assert_eq!(t.read_f32(gpu).unwrap(), v);
    let h = Tensor::from_f32_as_f16(gpu, &[37, 5], &v, "h").unwrap();
    assert_eq!(h.read_f32(gpu).unwrap(), round_f16(&v));
    let u: Vec<u32> = (0..11).map(|_| rng.next_u64() as u32).collect();
    assert_eq!(Tensor::from_u32(gpu, &[11], &u, "u").unwrap().read_u32(gpu).unwrap(), u);
    t.poison(gpu);
    assert!(t.read_f32(gpu).unwrap().iter().all(|x| x.is_nan()));
}

/// The GPU pack kernel writes exactly the texels the host packer (its CPU reference) writes,
/// padding included, for f32 and f16, scalar and vec4 paths.
#[test]
fn pack_matches_host_packing() {
    let gpu = gpu();
    // Packing needs no subgroups; 32 columns is the padding lavapipe's kernels use.
    let align = 32;
    let seed = seed();
    let mut rng = Rng::new(seed);
    for (rows, cols) in [(1, 3), (7, 45), (70, 64), (257, 130)] {
        let v = rng.vec(rows * cols);
        let src = Tensor::from_f32(gpu, &[rows, cols], &v, "src").unwrap();
        for dtype in [DType::F32, DType::F16] {
            let tex = TexMatrix::zeros(gpu, rows, cols, dtype, align, "packed").unwrap();
            let mut rec = Recorder::new(gpu);
            pack::pack(&mut rec, &src, &tex).unwrap();
            rec.run().unwrap();
            let host = TexMatrix::from_host(gpu, rows, cols, &v, dtype, align, "host").unwrap();
            let got = tex.read_f32(gpu).unwrap();
            let want = host.read_f32(gpu).unwrap();
            let exp = if dtype == DType::F16 { round_f16(&v) } else { v.clone() };
            assert_eq!(want, exp, "host packing of [{rows}, {cols}] {dtype} does not round-trip");
            assert_eq!(got, want, "GPU packing of [{rows}, {cols}] {dtype} differs from host packing");
        }
    }
}

/// Matrices taller than the texture limit are split across layers, and row blocks beyond the
/// per-dimension workgroup limit fold into the grid's third dimension.
#[test]
fn tall_matrices_split_across_layers_and_grids_fold() {
    let gpu = gpu();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let max_dim = gpu.caps().limits.max_texture_dimension_2d as usize;
    let max_groups = gpu.caps().limits.max_compute_workgroups_per_dimension as usize;
    // nt with N past the texture limit (W split over layers), then nn with the inner dimension
    // past it (a layer boundary inside the reduction).
    let (m, k, n) = (3, 12, max_dim + 300);
    let x = rng.vec(m * k);
    let w = rng.vec(n * k);
    for layout in [Layout::Texture, Layout::Buffer] {
        for v in Variant::candidates(gpu, Form::Nt, layout).into_iter().filter(|v| !matches!(v, Variant::Tiled)) {
            let xt = Tensor::from_f32(gpu, &[m, k], &x, "x").unwrap();
            let wm = Matrix::from_host(gpu, layout, n, k, &w, DType::F32, "w").unwrap();
            let y = Tensor::zeros(gpu, &[m, n], DType::F32, "y").unwrap();
            y.poison(gpu);
            let mut rec = Recorder::new(gpu);
            matmul(&mut rec, Form::Nt, &xt, &wm, &y, &MatmulOpts { variant: Some(v), ..Default::default() }).unwrap();
            rec.run().unwrap();
            assert_close(
                &format!("tall nt {v}"),
                &y.read_f32(gpu).unwrap(),
                &matmul_ref(Form::Nt, m, n, k, &x, &w),
                1e-4,
                seed,
            );
        }
        for v in Variant::candidates(gpu, Form::Nn, layout).into_iter().filter(|v| !matches!(v, Variant::Tiled)) {
            let (m, kin, nout) = (3, max_dim + 300, 12);
            let dy = rng.vec(m * kin);
            let w2 = rng.vec(kin * nout);
            let dyt = Tensor::from_f32(gpu, &[m, kin], &dy, "dy").unwrap();
            let wm = Matrix::from_host(gpu, layout, kin, nout, &w2, DType::F32, "w").unwrap();
            let y = Tensor::zeros(gpu, &[m, nout], DType::F32, "y").unwrap();
            y.poison(gpu);
            let mut rec = Recorder::new(gpu);
            matmul(&mut rec, Form::Nn, &dyt, &wm, &y, &MatmulOpts { variant: Some(v), ..Default::default() }).unwrap();
            rec.run().unwrap();
            let want = matmul_ref(Form::Nn, m, nout, kin, &dy, &w2);
            assert_close(&format!("tall nn {v}"), &y.read_f32(gpu).unwrap(), &want, 1e-4, seed);
        }
    }
    // One-row blocks over more rows than one grid dimension holds.
    let (m, k, n) = (max_groups + 1000, 8, 5);
    let x = rng.vec(m * k);
    let w = rng.vec(n * k);
    let want = matmul_ref(Form::Nt, m, n, k, &x, &w);
    for layout in [Layout::Texture, Layout::Buffer] {
        for v in Variant::candidates(gpu, Form::Nt, layout) {
            let rows_per_block = match v {
                Variant::Texture { rows, .. } | Variant::TextureDot { rows, .. } | Variant::Blocked { rows, .. } => {
                    rows
                }
                Variant::Tiled => 64,
            };
            if rows_per_block != 1 {
                continue;
            }
            let xt = Tensor::from_f32(gpu, &[m, k], &x, "x").unwrap();
            let wm = Matrix::from_host(gpu, layout, n, k, &w, DType::F32, "w").unwrap();
            let y = Tensor::zeros(gpu, &[m, n], DType::F32, "y").unwrap();
            y.poison(gpu);
            let mut rec = Recorder::new(gpu);
            matmul(&mut rec, Form::Nt, &xt, &wm, &y, &MatmulOpts { variant: Some(v), ..Default::default() }).unwrap();
            rec.run().unwrap();
            assert_close(&format!("{m} rows, {v}"), &y.read_f32(gpu).unwrap(), &want, 1e-4, seed);
        }
    }
}

#[test]
fn requests_over_device_limits_are_errors() {
    let gpu = gpu();
    let limit = gpu.caps().limits.max_storage_buffer_binding_size.min(gpu.caps().limits.max_buffer_size);
    let elems = (limit / 4 + 1024) as usize;
    let err = Tensor::zeros(gpu, &[elems], DType::F32, "huge activations").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("huge activations") && msg.contains("max_"), "{msg}");
    let max_dim = gpu.caps().limits.max_texture_dimension_2d as usize;
    let err = TexMatrix::zeros(gpu, 2, max_dim * 8 + 1, DType::F32, 32, "wide").unwrap_err();
    assert!(err.to_string().contains("max_texture_dimension_2d"), "{err}");
}

/// The profiler times every launch: GPU timestamps where the adapter has them, the wall clock
/// otherwise, labelled, grouped and with the work each launch declared.
#[test]
fn profiler_times_each_launch() {
    let gpu = gpu();
    let run = |g: &Gpu| {
        let (m, k, n) = (64, 256, 128);
        let x = Tensor::from_f32(g, &[m, k], &vec![0.5; m * k], "x").unwrap();
        let w = Matrix::from_host(g, Layout::Buffer, n, k, &vec![0.25; n * k], DType::F32, "w").unwrap();
        let y = Tensor::zeros(g, &[m, n], DType::F32, "y").unwrap();
        let mut rec = Recorder::profiled(g);
        for grp in 0..3 {
            rec.set_group(grp);
            let opts = MatmulOpts { variant: Some(Variant::Blocked { rows: 4, cols: 4 }), ..Default::default() };
            matmul(&mut rec, Form::Nt, &x, &w, &y, &opts).unwrap();
        }
        let t = rec.run().unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.iter().map(|k| k.group).collect::<Vec<_>>(), vec![0, 1, 2]);
        for kt in &t {
            assert!(kt.ns > 0.0 && kt.ns.is_finite(), "{kt:?}");
            assert_eq!(kt.label, "matmul_nt_blocked_r4c4");
            assert_eq!(kt.work.flops, 2 * (m * n * k) as u64);
        }
        let rows = lorafuse::gpu::profiler::summarize(&t);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].dispatches, 3);
        assert!(rows[0].gflops > 0.0);
        t[0].clock
    };
    let clock = run(gpu);
    assert_eq!(clock == Clock::Gpu, gpu.caps().timestamps);
    // The same device without timestamp queries falls back to the wall clock.
    let mut opts = GpuOptions::from_env().unwrap();
    opts.disabled.timestamps = true;
    let plain = Gpu::new(&opts).unwrap();
    assert_eq!(run(&plain), Clock::Wall);
}

/// While capturing, plain recorders (as workloads build them) on the capturing thread time their
/// launches and leave them with the device; other threads' (the other tests of this binary) and
/// those outside a capture time nothing.
#[test]
fn capture_collects_every_submission() {
    let gpu = gpu();
    let (m, k, n) = (9, 40, 13);
    let x = Tensor::from_f32(gpu, &[m, k], &vec![0.5; m * k], "x").unwrap();
    let w = Matrix::from_host(gpu, Layout::Buffer, n, k, &vec![0.25; n * k], DType::F32, "w").unwrap();
    let y = Tensor::zeros(gpu, &[m, n], DType::F32, "y").unwrap();
    let opts = MatmulOpts { variant: Some(Variant::Blocked { rows: 4, cols: 4 }), ..Default::default() };
    let launch = |times: usize| -> lorafuse::Result<usize> {
        let mut count = 0;
        for _ in 0..times {
            let mut rec = Recorder::new(gpu);
            matmul(&mut rec, Form::Nt, &x, &w, &y, &opts)?;
            count += rec.run()?.len();
        }
        Ok(count)
    };
    let (returned, captured) = gpu
        .capture(|| {
            let other = std::thread::scope(|s| s.spawn(|| launch(1)).join().unwrap())?;
            assert_eq!(other, 0, "another thread's submission was timed");
            launch(2)
        })
        .unwrap();
    assert_eq!(returned, 2, "captured submissions return their timings too");
    assert_eq!(captured.len(), 2);
    for (_, t) in &captured {
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].label, "matmul_nt_blocked_r4c4");
        assert!(t[0].ns > 0.0 && t[0].ns.is_finite());
    }
    assert!(captured[0].0 <= captured[1].0);
    assert_eq!(launch(1).unwrap(), 0, "nothing is timed outside a capture");
    assert!(y.read_f32(gpu).unwrap().iter().all(|&v| (v - 0.5 * 0.25 * k as f32).abs() < 1e-4));
}

/// A device without subgroups offers no texture kernel, and matmul still works through the
/// storage-buffer kernels, picked automatically.
#[test]
fn without_subgroups_buffer_kernels_serve() {
    let mut opts = GpuOptions::from_env().unwrap();
    opts.disabled.subgroups = true;
    let g = Gpu::new(&opts).unwrap();
    assert!(Variant::candidates(&g, Form::Nt, Layout::Texture).is_empty());
    assert_eq!(lorafuse::kernels::matmul::tune::preferred_layout(&g), Layout::Buffer);
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (m, k, n) = (33, 45, 37);
    let x = rng.vec(m * k);
    let w = rng.vec(n * k);
    let xt = Tensor::from_f32(&g, &[m, k], &x, "x").unwrap();
    let wm = Matrix::from_host(&g, Layout::Buffer, n, k, &w, DType::F32, "w").unwrap();
    let y = Tensor::zeros(&g, &[m, n], DType::F32, "y").unwrap();
    let mut rec = Recorder::new(&g);
    matmul(&mut rec, Form::Nt, &xt, &wm, &y, &MatmulOpts::default()).unwrap();
    rec.run().unwrap();
    assert_close(
        "auto-selected buffer kernel",
        &y.read_f32(&g).unwrap(),
        &matmul_ref(Form::Nt, m, n, k, &x, &w),
        1e-4,
        seed,
    );
    assert!(Matrix::from_host(&g, Layout::Texture, 4, 4, &[0.0; 16], DType::F32, "w").is_err());
}

/// The copy-ceiling kernel copies exactly (its CPU reference is the identity).
#[test]
fn ceiling_copy_is_exact() {
    let gpu = gpu();
    let seed = seed();
    let v = Rng::new(seed).vec(4 * 70_001);
    let src = Tensor::from_f32(gpu, &[v.len()], &v, "src").unwrap();
    let dst = Tensor::zeros(gpu, &[v.len()], DType::F32, "dst").unwrap();
    dst.poison(gpu);
    let mut rec = Recorder::new(gpu);
    lorafuse::kernels::ceiling::copy(&mut rec, &src, &dst).unwrap();
    rec.run().unwrap();
    assert_eq!(dst.read_f32(gpu).unwrap(), v);
}
