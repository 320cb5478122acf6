// The optimizer's kernels, one invocation per element (folded over y, z):
//   sumsq:  partial[i] = Σ (mask ⊙ g)² over elements [i·CHUNK, (i+1)·CHUNK): the host adds the
//           partials in order, so the global gradient norm is deterministic (no atomics).
//   adamw:  PyTorch's AdamW step with decoupled weight decay, g scaled by grad_scale (the
//           clipping factor) and by the mask (0 where an entry is not a parameter: the rows of a
//           stacked LoRA B outside its adapter's projection):
//           p ← p(1 − lr·wd);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
//           p ← p − (lr/bc₁) · m / (√v/√bc₂ + ε),  bcᵢ = 1 − βᵢᵗ

const CHUNK: u32 = 256u;

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    wd: f32,
    bc1: f32,
    bc2: f32,
    grad_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
#if MASK
@group(0) @binding(2) var<storage, read> mask: array<f32>;
#endif
#if ADAMW
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read_write> m1: array<f32>;
@group(0) @binding(5) var<storage, read_write> m2: array<f32>;
#else
@group(0) @binding(6) var<storage, read_write> partial: array<f32>;
#endif

fn grad(i: u32) -> f32 {
#if MASK
    return g[i] * mask[i];
#else
    return g[i];
#endif
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;
}

#if ADAMW
@compute @workgroup_size(64)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let gi = grad(i) * p.grad_scale;
    let w = param[i] * (1.0 - p.lr * p.wd);
    let m = p.beta1 * m1[i] + (1.0 - p.beta1) * gi;
    let v = p.beta2 * m2[i] + (1.0 - p.beta2) * gi * gi;
    m1[i] = m;
    m2[i] = v;
    param[i] = w - (p.lr / p.bc1) * m / (sqrt(v) / sqrt(p.bc2) + p.eps);
}
#else
@compute @workgroup_size(64)
fn sumsq(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = index(gid, nwg);
    let start = c * CHUNK;
    if (start >= p.n) {
        return;
    }
    var s = 0.0;
    for (var i = start; i < min(start + CHUNK, p.n); i++) {
        let x = grad(i);
        s += x * x;
    }
    partial[c] = s;
}
#endif
