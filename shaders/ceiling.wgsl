// The device's own ceilings, measured in the same run as the kernels they rate:
//   fma:  arithmetic throughput. Each invocation runs `iters` rounds of 8 independent vec4
//         multiply-adds (independent chains hide latency; lavapipe compiles fma() to a separate
//         multiply and add, so a*b+c is written out). 64 flops per round per invocation.
//   copy: memory throughput. dst[i] = src[i] over vec4s, grid-strided.

struct Params {
    iters: u32,
    n4: u32,       // vec4 elements to copy
    stride: u32,   // invocations in the grid
    seed: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(64)
fn fma(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = vec4<f32>(0.999, 1.001, 0.998, 1.002);
    let c = vec4<f32>(p.seed * 1e-3);
#repeat i 8
    var a{i} = vec4<f32>(f32(gid.x) * 1e-6 + f32({i}));
#end
    for (var it = 0u; it < p.iters; it++) {
#repeat i 8
        a{i} = a{i} * b + c;
#end
    }
    // Written only when the impossible happens, so the compiler keeps the arithmetic but the
    // store costs nothing.
    let s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    if (s.x == p.seed) {
        dst[gid.x] = s;
    }
}

@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>) {
    for (var i = gid.x; i < p.n4; i += p.stride) {
        dst[i] = src[i];
    }
}
