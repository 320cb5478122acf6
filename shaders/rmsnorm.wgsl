// RMSNorm and its backward. x, out, dy, dx [R, H]; w [H]; one invocation per row (rows are
// independent and H is a few thousand at most). Sums accumulate in f32, as Hugging Face's
// LlamaRMSNorm does.
//   rmsnorm:          out = x · ρ · w,  ρ = 1/sqrt(mean(x²) + eps)
//   rmsnorm_backward: dx (+)= ρ·w⊙dy − x · ρ³ · Σ(w⊙dy⊙x) / H   (ACCUMULATE adds into dx: the
//                     residual stream's gradient)

struct Params {
    rows: u32,
    h: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#if BACKWARD
@group(0) @binding(4) var<storage, read> dy: array<f32>;
#endif

fn row_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;
}

fn inv_rms(base: u32) -> f32 {
    var ss = 0.0;
    for (var i = 0u; i < p.h; i++) {
        let v = x[base + i];
        ss += v * v;
    }
    return inverseSqrt(ss / f32(p.h) + p.eps);
}

#if !BACKWARD
@compute @workgroup_size(64)
fn rmsnorm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_index(gid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.h;
    let inv = inv_rms(base);
    for (var i = 0u; i < p.h; i++) {
        out[base + i] = x[base + i] * inv * w[i];
    }
}
#else
@compute @workgroup_size(64)
fn rmsnorm_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_index(gid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.h;
    let inv = inv_rms(base);
    var s = 0.0;
    for (var i = 0u; i < p.h; i++) {
        s += w[i] * dy[base + i] * x[base + i];
    }
    let c = inv * inv * inv * s / f32(p.h);
    for (var i = 0u; i < p.h; i++) {
        var g = inv * w[i] * dy[base + i] - x[base + i] * c;
#if ACCUMULATE
        g += out[base + i];
#endif
        out[base + i] = g;
    }
}
#endif
