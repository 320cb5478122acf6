// Packs a row-major f32 matrix from a storage buffer into a 2-D array texture, the layout the
// texture matmul kernels read (see src/gpu/texture.rs):
//   src [rows, cols] (row stride ld)  ->  dst texel (x, y, layer) with row = layer * rpl + y,
//   f32: texel x holds cols 4x .. 4x+3 (rgba32float);
//   f16: texel x holds cols 8x .. 8x+7 as four pack2x16float words (rgba32uint).
// Columns past `cols` and rows past `rows` are written as zeros: the matmul kernels rely on
// zero padding instead of bounds tests in their inner loops.
// One invocation per texel; workgroups cover (texels, rows) with rows folded over (y, z).

struct Params {
    rows: u32,
    cols: u32,
    ld: u32,
    width: u32,     // texels per texture row
    rpl: u32,       // rows per layer
    padded_rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
#if F16
@group(0) @binding(2) var dst: texture_storage_2d_array<rgba32uint, write>;
#else
@group(0) @binding(2) var dst: texture_storage_2d_array<rgba32float, write>;
#endif

fn at(row: u32, col: u32) -> f32 {
    if (row < p.rows && col < p.cols) {
        return src[row * p.ld + col];
    }
    return 0.0;
}

@compute @workgroup_size(64)
fn pack(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let x = gid.x;
    let row = gid.y + gid.z * nwg.y;
    if (x >= p.width || row >= p.padded_rows) {
        return;
    }
    let coord = vec2<u32>(x, row % p.rpl);
    let layer = row / p.rpl;
#if F16
    let c = x * 8u;
    let v = vec4<u32>(
        pack2x16float(vec2<f32>(at(row, c), at(row, c + 1u))),
        pack2x16float(vec2<f32>(at(row, c + 2u), at(row, c + 3u))),
        pack2x16float(vec2<f32>(at(row, c + 4u), at(row, c + 5u))),
        pack2x16float(vec2<f32>(at(row, c + 6u), at(row, c + 7u))),
    );
    textureStore(dst, coord, layer, v);
#else
    let c = x * 4u;
    textureStore(dst, coord, layer, vec4<f32>(at(row, c), at(row, c + 1u), at(row, c + 2u), at(row, c + 3u)));
#endif
}
