// Flash attention, forward and backward, for rows that come in runs of one sequence (a prefill,
// a training batch): the same sums as attention.wgsl, shared by a subgroup.
//
// Forward: one subgroup per (block of SG·QR rows, KV group g); lane l holds rows
// first + j·SG + l (j < QR), each with the GH query heads of g, in registers. For every key the
// lanes load a share of k_t and v_t (KPL vec4s each) and pass the shares round with
// subgroupBroadcast, so a key is read once for SG·QR rows and GH heads where attention.wgsl's
// heads kernel reads it once per (row, head) — and lavapipe serves a storage read one lane at a
// time, while a broadcast is a register shuffle. Online softmax per (row, head), as there. A
// block whose rows are not all of one slot (a mixed batch) reads each row's keys itself: the
// same sums, in the same order, without the sharing.
//   out[r, h, :] = Σ_{t ≤ pos[r]} softmax_t(q[r,h,:]·Kc[slot[r], g, t, :] / √d) · Vc[slot[r], g, t, :]
// qkv [R, (H + 2G)·d] (q rotated, its first H·d columns), caches [slots, G, max_len, d],
// out [R, H·d], lse [R, H].
//
// Backward (sequences as a training batch lays them out: slot s's rows are seq_start[s] ..
// + seq_len[s] at positions 0 .. seq_len[s]), with P recomputed from the saved log-sum-exp and
// D = dO·O:
//   DQ:  one subgroup per (slot, block of SG·QR rows, g), keys shared as in the forward:
//        dq = scale · Σ_t P_t (dO·v_t − D) k_t; D to dsum [R, H].
//   DKV: one subgroup per (slot, block of SG·KR keys, g); lane l holds keys first + j·SG + l and
//        the rows' queries and output gradients are shared the same way:
//        dk_t = scale · Σ_{u ≥ t, h ∈ g} P (dO·v_t − D) q,   dv_t = Σ P dO.
//   Each gradient is summed by one lane in a fixed order: deterministic, no atomics.

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
@group(0) @binding(2) var<storage, read> kc: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> vc: array<vec4<f32>>;
#if FORWARD
@group(0) @binding(4) var<storage, read> pos: array<u32>;
@group(0) @binding(5) var<storage, read> slot: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
#if LSE
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;
#endif
#if PREFIX
// [slots, 2]: the slot holding slot s's first keys, and how many
@group(0) @binding(8) var<storage, read> prefix: array<u32>;
#endif
#else
@group(0) @binding(7) var<storage, read> lse_in: array<f32>;
@group(0) @binding(8) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> dqkv: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> seq_start: array<u32>;
@group(0) @binding(12) var<storage, read> seq_len: array<u32>;
#if DQ
@group(0) @binding(6) var<storage, read> out: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dsum: array<f32>;
#else
@group(0) @binding(10) var<storage, read> dsum: array<f32>;
#endif
#endif

// Where key t of slot s, group g starts in the caches.
fn key_row(s: u32, g: u32, t: u32) -> u32 {
#if PREFIX
    let src = select(s, prefix[2u * s], t < prefix[2u * s + 1u]);
#else
    let src = s;
#endif
    return ((src * p.kv_heads + g) * p.max_len + t) * HD4;
}

fn unit_of(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y + wg.z * nwg.y;
}

#if FORWARD
@compute @workgroup_size(SG)
fn attention_flash(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(subgroup_invocation_id) lane: u32) {
    let unit = unit_of(wg, nwg);
    let blocks = (p.rows + SG * QR - 1u) / (SG * QR);
    if (unit >= blocks * p.kv_heads) {
        return;
    }
    let g = unit % p.kv_heads;
    let first = (unit / p.kv_heads) * SG * QR;
    let stride = (p.heads + 2u * p.kv_heads) * HD4;
    let s0 = slot[first];
    var one_slot = true;
    var n = 0u;
#repeat j QR
    let row{j} = first + {j}u * SG + lane;
    let live{j} = row{j} < p.rows;
    let rr{j} = min(row{j}, p.rows - 1u);
    // the keys row j sees; a lane past the last row sees none
    let seen{j} = select(0u, pos[rr{j}] + 1u, live{j});
    let slot{j} = slot[rr{j}];
    one_slot = one_slot && (!live{j} || slot{j} == s0);
    n = max(n, seen{j});
#repeat h GH
    var q{j}_{h}: array<vec4<f32>, HD4>;
#repeat i HD4
    q{j}_{h}[{i}u] = qkv[rr{j} * stride + (g * GH + {h}u) * HD4 + {i}u] * p.scale;
    var acc{j}_{h}_{i} = vec4<f32>(0.0);
#end
    var m{j}_{h} = NEG;
    var l{j}_{h} = 0.0;
#end
#end
    let shared_keys = subgroupAll(one_slot);
    n = subgroupMax(n);
    var kt: array<vec4<f32>, KPL * SG>;
    var vt: array<vec4<f32>, KPL * SG>;
    for (var t = 0u; t < n; t++) {
        if (shared_keys) {
            let kr = key_row(s0, g, t);
#repeat c KPL
            let kp{c} = kc[kr + min({c}u * SG + lane, HD4 - 1u)];
            let vp{c} = vc[kr + min({c}u * SG + lane, HD4 - 1u)];
#repeat l SG
            kt[{c}u * SG + {l}u] = subgroupBroadcast(kp{c}, {l}u);
            vt[{c}u * SG + {l}u] = subgroupBroadcast(vp{c}, {l}u);
#end
#end
        }
#repeat j QR
        {
            let see = t < seen{j};
            if (!shared_keys) {
                // past its own keys a row reads its first one again (masked out below): a cache
                // cell no row has written may hold anything, and 0·NaN is NaN
                let kr = key_row(slot{j}, g, select(0u, t, see));
#repeat i HD4
                kt[{i}u] = kc[kr + {i}u];
                vt[{i}u] = vc[kr + {i}u];
#end
            }
#repeat h GH
            {
                var s = 0.0;
#repeat i HD4
                s += dot(q{j}_{h}[{i}u], kt[{i}u]);
#end
                s = select(NEG, s, see);
                let mn = max(m{j}_{h}, s);
                let c = exp(m{j}_{h} - mn);
                let e = select(0.0, exp(s - mn), see);
                l{j}_{h} = l{j}_{h} * c + e;
                m{j}_{h} = mn;
#repeat i HD4
                acc{j}_{h}_{i} = acc{j}_{h}_{i} * c + e * vt[{i}u];
#end
            }
#end
        }
#end
    }
#repeat j QR
    if (live{j}) {
#repeat h GH
        {
            let at = row{j} * p.heads + g * GH + {h}u;
            let inv = 1.0 / l{j}_{h};
#repeat i HD4
            out[at * HD4 + {i}u] = acc{j}_{h}_{i} * inv;
#end
#if LSE
            lse[at] = m{j}_{h} + log(l{j}_{h});
#endif
        }
#end
    }
#end
}
#endif

#if DQ
@compute @workgroup_size(SG)
fn attention_flash_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(subgroup_invocation_id) lane: u32) {
    let unit = unit_of(wg, nwg);
    let blocks = (p.max_len + SG * QR - 1u) / (SG * QR);
    let s = unit / (blocks * p.kv_heads);
    if (s >= p.slots) {
        return;
    }
    let g = unit % p.kv_heads;
    let first = ((unit / p.kv_heads) % blocks) * SG * QR;
    let len = seq_len[s];
    if (first >= len) {
        return;
    }
    let start = seq_start[s];
    let stride = (p.heads + 2u * p.kv_heads) * HD4;
    // keys 0 .. the block's last row
    let n = min(len, first + SG * QR);
#repeat j QR
    let u{j} = first + {j}u * SG + lane;
    let live{j} = u{j} < len;
    let row{j} = start + min(u{j}, len - 1u);
#repeat h GH
    let at{j}_{h} = row{j} * p.heads + g * GH + {h}u;
    var q{j}_{h}: array<vec4<f32>, HD4>;
    var do{j}_{h}: array<vec4<f32>, HD4>;
    var dsum{j}_{h} = 0.0;
#repeat i HD4
    q{j}_{h}[{i}u] = qkv[row{j} * stride + (g * GH + {h}u) * HD4 + {i}u] * p.scale;
    do{j}_{h}[{i}u] = dout[at{j}_{h} * HD4 + {i}u];
    dsum{j}_{h} += dot(do{j}_{h}[{i}u], out[at{j}_{h} * HD4 + {i}u]);
    var dq{j}_{h}_{i} = vec4<f32>(0.0);
#end
    let lse{j}_{h} = lse_in[at{j}_{h}];
#end
#end
    var kt: array<vec4<f32>, KPL * SG>;
    var vt: array<vec4<f32>, KPL * SG>;
    for (var t = 0u; t < n; t++) {
        let kr = key_row(s, g, t);
#repeat c KPL
        let kp{c} = kc[kr + min({c}u * SG + lane, HD4 - 1u)];
        let vp{c} = vc[kr + min({c}u * SG + lane, HD4 - 1u)];
#repeat l SG
        kt[{c}u * SG + {l}u] = subgroupBroadcast(kp{c}, {l}u);
        vt[{c}u * SG + {l}u] = subgroupBroadcast(vp{c}, {l}u);
#end
#end
#repeat j QR
#repeat h GH
        {
            var sc = 0.0;
            var dp = 0.0;
#repeat i HD4
            sc += dot(q{j}_{h}[{i}u], kt[{i}u]);
            dp += dot(do{j}_{h}[{i}u], vt[{i}u]);
#end
            // a future key's exp may overflow: chosen away, never multiplied
            let ds = select(0.0, exp(sc - lse{j}_{h}) * (dp - dsum{j}_{h}), t <= u{j});
#repeat i HD4
            dq{j}_{h}_{i} += ds * kt[{i}u];
#end
        }
#end
#end
    }
#repeat j QR
    if (live{j}) {
#repeat h GH
#repeat i HD4
        dqkv[row{j} * stride + (g * GH + {h}u) * HD4 + {i}u] = dq{j}_{h}_{i} * p.scale;
#end
        dsum[at{j}_{h}] = dsum{j}_{h};
#end
    }
#end
}
#endif

#if DKV
@compute @workgroup_size(SG)
fn attention_flash_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(subgroup_invocation_id) lane: u32) {
    let unit = unit_of(wg, nwg);
    let blocks = (p.max_len + SG * KR - 1u) / (SG * KR);
    let s = unit / (blocks * p.kv_heads);
    if (s >= p.slots) {
        return;
    }
    let g = unit % p.kv_heads;
    let first = ((unit / p.kv_heads) % blocks) * SG * KR;
    let len = seq_len[s];
    if (first >= len) {
        return;
    }
    let start = seq_start[s];
    let stride = (p.heads + 2u * p.kv_heads) * HD4;
#repeat j KR
    let t{j} = first + {j}u * SG + lane;
    let live{j} = t{j} < len;
    let kr{j} = key_row(s, g, min(t{j}, len - 1u));
    var k{j}: array<vec4<f32>, HD4>;
    var v{j}: array<vec4<f32>, HD4>;
#repeat i HD4
    k{j}[{i}u] = kc[kr{j} + {i}u] * p.scale;
    v{j}[{i}u] = vc[kr{j} + {i}u];
    var dk{j}_{i} = vec4<f32>(0.0);
    var dv{j}_{i} = vec4<f32>(0.0);
#end
#end
    var qt: array<vec4<f32>, KPL * SG>;
    var dt: array<vec4<f32>, KPL * SG>;
    // rows before the block's first key see none of its keys
    for (var u = first; u < len; u++) {
        let row = start + u;
#repeat h GH
        {
            let at = row * p.heads + g * GH + {h}u;
            let qb = row * stride + (g * GH + {h}u) * HD4;
#repeat c KPL
            let qp{c} = qkv[qb + min({c}u * SG + lane, HD4 - 1u)];
            let dp{c} = dout[at * HD4 + min({c}u * SG + lane, HD4 - 1u)];
#repeat l SG
            qt[{c}u * SG + {l}u] = subgroupBroadcast(qp{c}, {l}u);
            dt[{c}u * SG + {l}u] = subgroupBroadcast(dp{c}, {l}u);
#end
#end
            let lse_u = lse_in[at];
            let dsum_u = dsum[at];
#repeat j KR
            {
                var sc = 0.0;
                var dp = 0.0;
#repeat i HD4
                sc += dot(qt[{i}u], k{j}[{i}u]);
                dp += dot(dt[{i}u], v{j}[{i}u]);
#end
                let see = u >= t{j};
                let pr = select(0.0, exp(sc - lse_u), see);
                let ds = select(0.0, pr * (dp - dsum_u), see);
#repeat i HD4
                dk{j}_{i} += ds * qt[{i}u];
                dv{j}_{i} += pr * dt[{i}u];
#end
            }
#end
        }
#end
    }
#repeat j KR
    if (live{j}) {
        let kb = (start + t{j}) * stride + (p.heads + g) * HD4;
        let vb = kb + p.kv_heads * HD4;
#repeat i HD4
        dqkv[kb + {i}u] = dk{j}_{i} * p.scale;
        dqkv[vb + {i}u] = dv{j}_{i};
#end
    }
#end
}
#endif
