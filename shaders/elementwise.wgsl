// Element-wise kernels, one invocation per element (rows folded over y, z).
//   swiglu:          out[r, j] = silu(gu[r, j]) · gu[r, F + j]   (the Llama MLP's gate; gu is the
//                    fused gate/up projection's output [R, 2F], out [R, F])
//   swiglu_backward: d gu from d out:  dg = dout · u · σ(g)(1 + g(1 − σ(g))),  du = dout · silu(g)
//   add_bias:        y[r, j] += bias[j]                          (Qwen2's q, k, v projections)
//   copy:            out[r, j] = a[r, j]                         (saving activations for backward)

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
#if SWIGLU_BACKWARD
@group(0) @binding(2) var<storage, read> dout: array<f32>;
#endif
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
#endif
#if SWIGLU_BACKWARD
    let gi = row * 2u * p.cols + col;
    let g = a[gi];
    let u = a[gi + p.cols];
    let sig = 1.0 / (1.0 + exp(-g));
    let d = dout[i];
    out[gi] = d * u * sig * (1.0 + g * (1.0 - sig));
    out[gi + p.cols] = d * g * sig;
#endif
#if BIAS
    out[i] += a[col];
#endif
#if COPY
    out[i] = a[i];
#endif
}
