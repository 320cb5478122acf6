// Inverted dropout with a counter-based mask, one invocation per element (folded over y, z):
//   out[i] (+)= a[i] · keep(seed, i) / (1 − p)
// keep(seed, i) = hash(seed, i) ≥ threshold, threshold = p · 2³². The mask is a pure function of
// (seed, i): the backward regenerates the forward's mask instead of storing it, and a resumed
// run draws the same masks as an uninterrupted one. The hash (murmur3's finalizer, twice, keyed
// by the two halves of a 64-bit seed) is reproduced bit for bit by the CPU reference.
//   a, out: [n] f32

struct Params {
    n: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn fmix(h0: u32) -> u32 {
    var h = h0;
    h ^= h >> 16u;
    h *= 0x85ebca6bu;
    h ^= h >> 13u;
    h *= 0xc2b2ae35u;
    h ^= h >> 16u;
    return h;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;
    if (i >= p.n) {
        return;
    }
    let h = fmix(fmix(i ^ p.seed_lo) ^ p.seed_hi);
    let v = select(0.0, a[i] * p.scale, h >= p.threshold);
#if ACCUMULATE
    out[i] += v;
#else
    out[i] = v;
#endif
}
