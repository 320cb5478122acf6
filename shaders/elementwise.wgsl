// Element-wise kernels, one invocation per element (rows folded over y, z).
//   swiglu:   out[r, j] = silu(gate[r, j]) · up[r, j]     (the Llama MLP's gate)
//   add_bias: y[r, j] += bias[j]                          (Qwen2's q, k, v projections)

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
#if SWIGLU
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#else
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col = gid.x;
    let row = gid.y + gid.z * nwg.y;
    if (col >= p.cols || row >= p.rows) {
        return;
    }
    let i = row * p.cols + col;
#if SWIGLU
    let g = a[i];
    out[i] = g / (1.0 + exp(-g)) * b[i];
#else
    out[i] += a[col];
#endif
}
