// RMSNorm: out[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) * w.  x, out [R, H]; w [H].
// One invocation per row (rows are independent and H is a few thousand at most); the sum of
// squares accumulates in f32 as Hugging Face's LlamaRMSNorm does.

struct Params {
    rows: u32,
    h: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn rmsnorm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.h;
    var ss = 0.0;
    for (var i = 0u; i < p.h; i++) {
        let v = x[base + i];
        ss += v * v;
    }
    let inv = inverseSqrt(ss / f32(p.h) + p.eps);
    for (var i = 0u; i < p.h; i++) {
        out[base + i] = x[base + i] * inv * w[i];
    }
}
