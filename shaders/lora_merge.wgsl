// Merges LoRA adapters into a base weight (the "merged" baseline, and merge-into-base):
//   W'[N,K] = W[N,K] + Σ_j B[N,Rp][n, j] · c[j] · A[Rp,K][j, k]
// where c[j] = λ·s of the adapter that owns rank column j (A and B are the concatenations of
// every adapter's A rows and B columns; padding columns have c = 0 or zero factors).
// One invocation per output word: one f32 element, or (OUT_F16) two consecutive elements
// packed as halves. W is read as f32 or (W_F16) as packed halves, by flat element index.

struct Params {
    n: u32,
    k: u32,
    rp: u32,
    words: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if W_F16
@group(0) @binding(1) var<storage, read> w: array<u32>;
#else
@group(0) @binding(1) var<storage, read> w: array<f32>;
#endif
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> c: array<f32>;
#if OUT_F16
@group(0) @binding(5) var<storage, read_write> out: array<u32>;
#else
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
#endif

fn w_at(i: u32) -> f32 {
#if W_F16
    let pair = unpack2x16float(w[i / 2u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
#else
    return w[i];
#endif
}

fn merged(i: u32) -> f32 {
    if (i >= p.n * p.k) {
        return 0.0;
    }
    let row = i / p.k;
    let col = i % p.k;
    var acc = 0.0;
    for (var j = 0u; j < p.rp; j++) {
        acc += b[row * p.rp + j] * c[j] * a[j * p.k + col];
    }
    return w_at(i) + acc;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let word = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;
    if (word >= p.words) {
        return;
    }
#if OUT_F16
    out[word] = pack2x16float(vec2<f32>(merged(2u * word), merged(2u * word + 1u)));
#else
    out[word] = merged(word);
#endif
}
