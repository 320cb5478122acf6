// Causal grouped-query attention over a KV cache, with online softmax over tiles of keys:
//   out[r, h, :] = Σ_{t ≤ pos[r]} softmax_t(q[r,h,:]·Kc[slot[r], g, t, :] / √d) · Vc[slot[r], g, t, :]
// with g = h / (H / G). Rows are any mix of sequences and positions (a prefill's prompt tokens,
// a decode step's one token per sequence): each row sees the keys of its own slot up to its own
// position, which the rope_kv launch before this one has stored. Also writes the log-sum-exp of
// each (row, head) (LSE), which a backward pass uses to recompute the probabilities.
// q is read from the fused q/k/v tensor [R, (H + 2G)·d] (its first H·d columns).
// One invocation per (row, head); d = HD (a multiple of 4) is compiled in.

const TILE: u32 = 8u;
const NEG: f32 = -3.0e38;

struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    max_len: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kc: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> vc: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> pos: array<u32>;
@group(0) @binding(5) var<storage, read> slot: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
#if LSE
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;
#endif

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
    var m = NEG;
    var l = 0.0;
    for (var t0 = 0u; t0 < n; t0 += TILE) {
        var s: array<f32, TILE>;
        var tile_max = NEG;
        for (var j = 0u; j < TILE; j++) {
            s[j] = NEG;
            if (t0 + j < n) {
                let kr = kb + (t0 + j) * d4;
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
                let vr = kb + (t0 + j) * d4;
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
