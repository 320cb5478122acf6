// Packs a row-major f32 matrix from a storage buffer into a 2-D array texture, the layout the
// texture matmul kernels read (see src/gpu/texture.rs):
//   src [rows, cols] (row stride ld)  ->  dst texel (x, y, layer) with row = layer * rpl + y,
//   f32: texel x holds cols 4x .. 4x+3 (rgba32float);
//   f16: texel x holds cols 8x .. 8x+7 as four pack2x16float words (rgba32uint).
// Columns past `cols` are written as zeros: the matmul kernels rely on zero padding instead of
// bounds tests in their inner loops. Rows past `rows` are left alone: kernels clamp activation
// rows, and a fresh texture's padding rows (which weight reductions do read) are zero already.
// One invocation per texel; workgroups cover (texels, rows) with rows folded over (y, z).
//
// With a prologue, the source is an activation whose value is computed as it is packed (the
// launch it replaces wrote it to a buffer first), in the arithmetic of that launch:
//   SWIGLU:    value[r, c] = silu(src[r, c]) · src[r, cols + c], src [rows, 2·cols] (ld = 2·cols)
//   pack_norm: value[r, c] = src[r, c] · ρ · gain[c], ρ = 1/sqrt(mean(src[r]²) + eps), one
//              invocation a row (ρ needs the whole row; rmsnorm.wgsl's serial sum).

struct Params {
    rows: u32,
    cols: u32,
    ld: u32,
    width: u32,     // texels per texture row
    rpl: u32,       // rows per layer
    eps: f32,       // pack_norm's epsilon
}

@group(0) @binding(0) var<uniform> p: Params;
#if VEC4
// cols and ld are multiples of 4: whole vec4 loads, four times fewer than scalar ones.
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
#else
@group(0) @binding(1) var<storage, read> src: array<f32>;
#endif
#if F16
@group(0) @binding(2) var dst: texture_storage_2d_array<rgba32uint, write>;
#else
@group(0) @binding(2) var dst: texture_storage_2d_array<rgba32float, write>;
#endif

#if VEC4
fn at4(row: u32, col: u32) -> vec4<f32> {
    if (col < p.cols) {
        return src[(row * p.ld + col) / 4u];
    }
    return vec4<f32>(0.0);
}
#else
fn at(row: u32, col: u32) -> f32 {
    if (col < p.cols) {
#if SWIGLU
        let g = src[row * p.ld + col];
        return g / (1.0 + exp(-g)) * src[row * p.ld + p.cols + col];
#else
        return src[row * p.ld + col];
#endif
    }
    return 0.0;
}

fn at4(row: u32, col: u32) -> vec4<f32> {
    return vec4<f32>(at(row, col), at(row, col + 1u), at(row, col + 2u), at(row, col + 3u));
}
#endif

@compute @workgroup_size(64)
fn pack(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let x = gid.x;
    let row = gid.y + gid.z * nwg.y;
    if (x >= p.width || row >= p.rows) {
        return;
    }
    let coord = vec2<u32>(x, row % p.rpl);
    let layer = row / p.rpl;
#if F16
    let lo = at4(row, x * 8u);
    let hi = at4(row, x * 8u + 4u);
    let v = vec4<u32>(pack2x16float(lo.xy), pack2x16float(lo.zw), pack2x16float(hi.xy), pack2x16float(hi.zw));
    textureStore(dst, coord, layer, v);
#else
    textureStore(dst, coord, layer, at4(row, x * 4u));
#endif
}

#if NORM
@group(0) @binding(3) var<storage, read> gain: array<f32>;

@compute @workgroup_size(64)
fn pack_norm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.ld;
    var ss = 0.0;
    for (var i = 0u; i < p.cols; i++) {
        let v = src[base + i];
        ss += v * v;
    }
    let inv = inverseSqrt(ss / f32(p.cols) + p.eps);
    for (var x = 0u; x < p.width; x++) {
        var v = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            let c = 4u * x + e;
            if (c < p.cols) {
                v[e] = src[base + c] * inv * gain[c];
            }
        }
        textureStore(dst, vec2<u32>(x, row % p.rpl), row / p.rpl, v);
    }
}
#endif
