// Rotary position embedding in Hugging Face's rotate-half layout, fused with the KV-cache write:
//   q[r, h, :]  ← rope(q[r, h, :], pos[r])                       (in place)
//   Kc[slot[r], g, pos[r], :] ← rope(k[r, g, :], pos[r]),  Vc[slot[r], g, pos[r], :] ← v[r, g, :]
// rope(x, p)[i] = x[i]·cos(p·θᵢ) − x[i+d/2]·sin(p·θᵢ),  rope(x, p)[i+d/2] = x[i+d/2]·cos + x[i]·sin,
// with cos/sin tabulated on the host in f64 ([positions, d/2]).
// q, k and v are the column blocks of one [R, (H + 2G)·d] tensor (the fused q/k/v projection's
// output); caches [slots, G, max_len, d]. One invocation per (row, head unit): units 0..H rotate
// q heads, units H..H+G rotate and store one KV head.
//
// rope_backward: the gradients of q and k before rotation from those after it, in place in a
// [R, (H + 2G)·d] gradient tensor: the transpose of a rotation is the rotation by −p·θ.

struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    hd: u32,
    max_len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(4) var<storage, read> pos: array<u32>;
@group(0) @binding(6) var<storage, read> cos_t: array<f32>;
@group(0) @binding(7) var<storage, read> sin_t: array<f32>;
#if BACKWARD
@compute @workgroup_size(64)
fn rope_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let unit = gid.x;
    let row = gid.y + gid.z * nwg.y;
    if (unit >= p.heads + p.kv_heads || row >= p.rows) {
        return;
    }
    let half = p.hd / 2u;
    let t = pos[row] * half;
    let base = row * (p.heads + 2u * p.kv_heads) * p.hd + unit * p.hd;
    for (var i = 0u; i < half; i++) {
        let x1 = qkv[base + i];
        let x2 = qkv[base + i + half];
        let c = cos_t[t + i];
        let s = sin_t[t + i];
        qkv[base + i] = x1 * c + x2 * s;
        qkv[base + i + half] = x2 * c - x1 * s;
    }
}
#else
@group(0) @binding(5) var<storage, read> slot: array<u32>;
@group(0) @binding(8) var<storage, read_write> kc: array<f32>;
@group(0) @binding(9) var<storage, read_write> vc: array<f32>;

@compute @workgroup_size(64)
fn rope_kv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let unit = gid.x;
    let row = gid.y + gid.z * nwg.y;
    if (unit >= p.heads + p.kv_heads || row >= p.rows) {
        return;
    }
    let half = p.hd / 2u;
    let ps = pos[row];
    let t = ps * half;
    let row_base = row * (p.heads + 2u * p.kv_heads) * p.hd;
    if (unit < p.heads) {
        let base = row_base + unit * p.hd;
        for (var i = 0u; i < half; i++) {
            let x1 = qkv[base + i];
            let x2 = qkv[base + i + half];
            let c = cos_t[t + i];
            let s = sin_t[t + i];
            qkv[base + i] = x1 * c - x2 * s;
            qkv[base + i + half] = x2 * c + x1 * s;
        }
    } else {
        let g = unit - p.heads;
        let src = row_base + unit * p.hd;
        let vsrc = src + p.kv_heads * p.hd;
        let dst = ((slot[row] * p.kv_heads + g) * p.max_len + ps) * p.hd;
        for (var i = 0u; i < half; i++) {
            let x1 = qkv[src + i];
            let x2 = qkv[src + i + half];
            let c = cos_t[t + i];
            let s = sin_t[t + i];
            kc[dst + i] = x1 * c - x2 * s;
            kc[dst + i + half] = x2 * c + x1 * s;
        }
        for (var i = 0u; i < p.hd; i++) {
            vc[dst + i] = qkv[vsrc + i];
        }
    }
}
#endif
