// Element-wise kernels, one invocation per element (rows folded over y, z).
//   swiglu:   out[r, j] = silu(gu[r, j]) · gu[r, F + j]   (the Llama MLP's gate; gu is the fused
//             gate/up projection's output [R, 2F], out [R, F])
//   add_bias: y[r, j] += bias[j]                          (Qwen2's q, k, v projections)

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col = gid.x;
    let row = gid.y + gid.z * nwg.y;
    if (col >= p.cols || row >= p.rows) {
        return;
    }
    let i = row * p.cols + col;
#if SWIGLU
    let g = a[row * 2u * p.cols + col];
    out[i] = g / (1.0 + exp(-g)) * a[row * 2u * p.cols + p.cols + col];
#else
    out[i] += a[col];
#endif
}
