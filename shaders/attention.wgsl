// Causal grouped-query attention over a KV cache, with online softmax over tiles of keys:
//   out[r, h, :] = Σ_{t ≤ pos[r]} softmax_t(q[r,h,:]·Kc[slot[r], g, t, :] / √d) · Vc[slot[r], g, t, :]
// with g = h / (H / G). Rows are any mix of sequences and positions (a prefill's prompt tokens,
// a decode step's one token per sequence): each row sees the keys of its own slot up to its own
// position, which the rope_kv launch before this one has stored. Also writes the log-sum-exp of
// each (row, head) (LSE), which a backward pass uses to recompute the probabilities.
// q is read from the fused q/k/v tensor [R, (H + 2G)·d] (its first H·d columns).
// One invocation per (row, head); d = HD (a multiple of 4) is compiled in.
// PREFIX: a slot may read its first keys from another slot (a shared prompt prefix prefilled
// once): prefix[2s] is the slot holding them, prefix[2s + 1] how many; the key loop is the same,
// only where each key is read from changes.

const TILE: u32 = 8u;
const NEG: f32 = -3.0e38;

struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    max_len: u32,
    scale: f32,
    slots: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<vec4<f32>>;
#if ROPE
@group(0) @binding(2) var<storage, read_write> kc: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> vc: array<vec4<f32>>;
// cos and sin of position·θᵢ, [positions, d/2], as rope.wgsl reads them
@group(0) @binding(9) var<storage, read> cos_t: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read> sin_t: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> kc: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> vc: array<vec4<f32>>;
#endif
@group(0) @binding(4) var<storage, read> pos: array<u32>;
@group(0) @binding(5) var<storage, read> slot: array<u32>;
#if BACKWARD_DQ
// the forward's output, read to form D = dO·O
@group(0) @binding(6) var<storage, read> out: array<vec4<f32>>;
#else
#if !BACKWARD_DKV
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
#endif
#endif
#if LSE
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;
#endif
#if PREFIX
@group(0) @binding(8) var<storage, read> prefix: array<u32>;
#endif

#if !BACKWARD_DQ
#if !BACKWARD_DKV
@compute @workgroup_size(64)
fn attention(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let unit = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;
    if (unit >= p.rows * p.heads) {
        return;
    }
    let row = unit / p.heads;
    let h = unit % p.heads;
    let g = h / (p.heads / p.kv_heads);
    let d4 = HD / 4u;
    let qb = row * (p.heads + 2u * p.kv_heads) * d4 + h * d4;
    let ob = (row * p.heads + h) * d4;
#repeat i HD4
    let q{i} = qkv[qb + {i}u] * p.scale;
    var acc{i} = vec4<f32>(0.0);
#end
    let n = pos[row] + 1u;
    let kb = (slot[row] * p.kv_heads + g) * p.max_len * d4;
#if PREFIX
    let shared_len = prefix[2u * slot[row] + 1u];
    let pb = (prefix[2u * slot[row]] * p.kv_heads + g) * p.max_len * d4;
#endif
    var m = NEG;
    var l = 0.0;
    for (var t0 = 0u; t0 < n; t0 += TILE) {
        var s: array<f32, TILE>;
        var tile_max = NEG;
        for (var j = 0u; j < TILE; j++) {
            s[j] = NEG;
            if (t0 + j < n) {
#if PREFIX
                let kr = select(kb, pb, t0 + j < shared_len) + (t0 + j) * d4;
#else
                let kr = kb + (t0 + j) * d4;
#endif
                var dotp = 0.0;
#repeat i HD4
                dotp += dot(q{i}, kc[kr + {i}u]);
#end
                s[j] = dotp;
                tile_max = max(tile_max, dotp);
            }
        }
        let m_new = max(m, tile_max);
        let corr = exp(m - m_new);
        l *= corr;
#repeat i HD4
        acc{i} *= corr;
#end
        for (var j = 0u; j < TILE; j++) {
            if (t0 + j < n) {
                let e = exp(s[j] - m_new);
                l += e;
#if PREFIX
                let vr = select(kb, pb, t0 + j < shared_len) + (t0 + j) * d4;
#else
                let vr = kb + (t0 + j) * d4;
#endif
#repeat i HD4
                acc{i} += e * vc[vr + {i}u];
#end
            }
        }
        m = m_new;
    }
    let inv = 1.0 / l;
#repeat i HD4
    out[ob + {i}u] = acc{i} * inv;
#end
#if LSE
    lse[row * p.heads + h] = m + log(l);
#endif
}
#endif
#endif

#if GROUPS
// The same attention with one subgroup per (row, KV group), for rows with many keys each and few
// rows sharing them (decode): lanes walk the keys side by side (lane l takes keys l, l + SG, ...)
// and each key is read once for the group's GH query heads instead of once per head; every lane
// keeps an online softmax per head, and the subgroup merges the lanes' (max, sum, accumulator)
// at the end. The per-(row, head) kernel above leaves most of a SIMD group idle for one row and
// reads the group's K/V GH times.
@compute @workgroup_size(SG)
fn attention_groups(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(subgroup_invocation_id) lane: u32) {
    let unit = wg.x + (wg.y + wg.z * nwg.y) * nwg.x;
    if (unit >= p.rows * p.kv_heads) {
        return;
    }
    let row = unit / p.kv_heads;
    let g = unit % p.kv_heads;
    let d4 = HD / 4u;
    let rb = row * (p.heads + 2u * p.kv_heads) * d4;
    let qb = rb + g * GH * d4;
    let ps = pos[row];
    let kb = (slot[row] * p.kv_heads + g) * p.max_len * d4;
#if ROPE
    // A decode row: rotate its q heads and its group's k here (rope.wgsl's arithmetic), store k
    // and v at (slot, pos), and attend to the cached keys before pos and to this one from
    // registers (the last key of lane pos % SG, as if read back).
    let tb = ps * (HD4 / 2u);
    var kn: array<vec4<f32>, HD4>;
    var vn: array<vec4<f32>, HD4>;
#repeat i HD4H
    let cs{i} = cos_t[tb + {i}u];
    let sn{i} = sin_t[tb + {i}u];
    let k1_{i} = qkv[rb + (p.heads + g) * d4 + {i}u];
    let k2_{i} = qkv[rb + (p.heads + g) * d4 + HD4H + {i}u];
    kn[{i}u] = k1_{i} * cs{i} - k2_{i} * sn{i};
    kn[HD4H + {i}u] = k2_{i} * cs{i} + k1_{i} * sn{i};
#end
#repeat i HD4
    vn[{i}u] = qkv[rb + (p.heads + p.kv_heads + g) * d4 + {i}u];
#end
    if (lane == 0u) {
#repeat i HD4
        kc[kb + ps * d4 + {i}u] = kn[{i}u];
        vc[kb + ps * d4 + {i}u] = vn[{i}u];
#end
    }
#endif
#repeat h GH
    var q{h}: array<vec4<f32>, HD4>;
#if ROPE
#repeat i HD4H
    let q1_{h}_{i} = qkv[qb + ({h}u * HD4 + {i}u)];
    let q2_{h}_{i} = qkv[qb + ({h}u * HD4 + HD4H + {i}u)];
    q{h}[{i}u] = (q1_{h}_{i} * cs{i} - q2_{h}_{i} * sn{i}) * p.scale;
    q{h}[HD4H + {i}u] = (q2_{h}_{i} * cs{i} + q1_{h}_{i} * sn{i}) * p.scale;
#end
#else
#repeat i HD4
    q{h}[{i}u] = qkv[qb + ({h}u * HD4 + {i}u)] * p.scale;
#end
#endif
#repeat i HD4
    var acc{h}_{i} = vec4<f32>(0.0);
#end
    var m{h} = NEG;
    var l{h} = 0.0;
#end
#if PREFIX
    let shared_len = prefix[2u * slot[row] + 1u];
    let pb = (prefix[2u * slot[row]] * p.kv_heads + g) * p.max_len * d4;
#endif
    for (var t = lane; t < ps + 1u; t += SG) {
#if PREFIX
        let kr = select(kb, pb, t < shared_len) + t * d4;
#else
        let kr = kb + t * d4;
#endif
        var kt: array<vec4<f32>, HD4>;
        var vt: array<vec4<f32>, HD4>;
#if ROPE
        if (t == ps) {
            kt = kn;
            vt = vn;
        } else {
#repeat i HD4
            kt[{i}u] = kc[kr + {i}u];
            vt[{i}u] = vc[kr + {i}u];
#end
        }
#else
#repeat i HD4
        kt[{i}u] = kc[kr + {i}u];
        vt[{i}u] = vc[kr + {i}u];
#end
#endif
#repeat h GH
        var s{h} = 0.0;
#repeat i HD4
        s{h} += dot(q{h}[{i}u], kt[{i}u]);
#end
        let mn{h} = max(m{h}, s{h});
        let c{h} = exp(m{h} - mn{h});
        let e{h} = exp(s{h} - mn{h});
        l{h} = l{h} * c{h} + e{h};
        m{h} = mn{h};
#repeat i HD4
        acc{h}_{i} = acc{h}_{i} * c{h} + e{h} * vt[{i}u];
#end
#end
    }
    // A lane without keys has m = NEG and l = acc = 0, so its weight exp(m - max) is 0.
#repeat h GH
    let mx{h} = subgroupMax(m{h});
    let f{h} = exp(m{h} - mx{h});
    let lt{h} = subgroupAdd(l{h} * f{h});
    let inv{h} = 1.0 / lt{h};
    let ob{h} = (row * p.heads + g * GH + {h}u) * d4;
#repeat i HD4
    let o{h}_{i} = subgroupAdd(acc{h}_{i} * f{h}) * inv{h};
#end
    if (lane == 0u) {
#repeat i HD4
        out[ob{h} + {i}u] = o{h}_{i};
#end
#if LSE
        lse[row * p.heads + g * GH + {h}u] = mx{h} + log(lt{h});
#endif
    }
#end
}
#endif

#if BACKWARD_DQ
// Backward, queries: per (row, head), with P recomputed from the saved log-sum-exp,
//   D = dO·O,  dq = scale · Σ_t P_t (dO·v_t − D) k_t
// written into the q block of dqkv [R, (H + 2G)·d]; D goes to dsum [R, H] for the key pass.
@group(0) @binding(7) var<storage, read> lse_in: array<f32>;
@group(0) @binding(8) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> dqkv: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dsum: array<f32>;

@compute @workgroup_size(64)
fn attention_dq(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let unit = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;
    if (unit >= p.rows * p.heads) {
        return;
    }
    let row = unit / p.heads;
    let h = unit % p.heads;
    let g = h / (p.heads / p.kv_heads);
    let d4 = HD / 4u;
    let qb = row * (p.heads + 2u * p.kv_heads) * d4 + h * d4;
    let ob = (row * p.heads + h) * d4;
    var dsum_v = 0.0;
#repeat i HD4
    let q{i} = qkv[qb + {i}u] * p.scale;
    let do{i} = dout[ob + {i}u];
    dsum_v += dot(do{i}, out[ob + {i}u]);
    var dq{i} = vec4<f32>(0.0);
#end
    let l = lse_in[row * p.heads + h];
    let n = pos[row] + 1u;
    let kb = (slot[row] * p.kv_heads + g) * p.max_len * d4;
    for (var t = 0u; t < n; t++) {
        let kr = kb + t * d4;
        var s = 0.0;
        var dp = 0.0;
#repeat i HD4
        s += dot(q{i}, kc[kr + {i}u]);
        dp += dot(do{i}, vc[kr + {i}u]);
#end
        let ds = exp(s - l) * (dp - dsum_v);
#repeat i HD4
        dq{i} += ds * kc[kr + {i}u];
#end
    }
#repeat i HD4
    dqkv[qb + {i}u] = dq{i} * p.scale;
#end
    dsum[row * p.heads + h] = dsum_v;
}
#endif

#if BACKWARD_DKV
// Backward, keys and values: per (slot, KV head g, position t) over the rows of that sequence
// that see t (a training batch keeps each sequence's rows together, positions 0..len−1, from
// seq_start[slot]) and the heads of group g:
//   dk_t = scale · Σ P (dO·v_t − D) q,   dv_t = Σ P dO
// written into the k and v blocks of dqkv at the row of position t. No atomics: each key's
// gradient is summed by one invocation in a fixed order.
@group(0) @binding(7) var<storage, read> lse_in: array<f32>;
@group(0) @binding(8) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> dqkv: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read> dsum: array<f32>;
@group(0) @binding(11) var<storage, read> seq_start: array<u32>;
@group(0) @binding(12) var<storage, read> seq_len: array<u32>;

@compute @workgroup_size(64)
fn attention_dkv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let unit = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;
    let per_slot = p.kv_heads * p.max_len;
    let s_idx = unit / per_slot;
    if (s_idx >= p.slots) {
        return;
    }
    let g = (unit % per_slot) / p.max_len;
    let t = unit % p.max_len;
    let len = seq_len[s_idx];
    if (t >= len) {
        return;
    }
    let d4 = HD / 4u;
    let kr = ((s_idx * p.kv_heads + g) * p.max_len + t) * d4;
#repeat i HD4
    let k{i} = kc[kr + {i}u] * p.scale;
    let v{i} = vc[kr + {i}u];
    var dk{i} = vec4<f32>(0.0);
    var dv{i} = vec4<f32>(0.0);
#end
    let group = p.heads / p.kv_heads;
    let start = seq_start[s_idx];
    for (var u = t; u < len; u++) {
        let row = start + u;
        for (var hh = 0u; hh < group; hh++) {
            let h = g * group + hh;
            let qb = row * (p.heads + 2u * p.kv_heads) * d4 + h * d4;
            let ob = (row * p.heads + h) * d4;
            var s = 0.0;
            var dp = 0.0;
#repeat i HD4
            s += dot(qkv[qb + {i}u], k{i});
            dp += dot(dout[ob + {i}u], v{i});
#end
            let pr = exp(s - lse_in[row * p.heads + h]);
            let ds = pr * (dp - dsum[row * p.heads + h]);
#repeat i HD4
            dk{i} += ds * qkv[qb + {i}u];
            dv{i} += pr * dout[ob + {i}u];
#end
        }
    }
    let row_t = start + t;
    let kb = row_t * (p.heads + 2u * p.kv_heads) * d4 + p.heads * d4 + g * d4;
    let vb = kb + p.kv_heads * d4;
#repeat i HD4
    dqkv[kb + {i}u] = dk{i} * p.scale;
    dqkv[vb + {i}u] = dv{i};
#end
}
#endif
