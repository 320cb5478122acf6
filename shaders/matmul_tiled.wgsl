// Shared-memory tiled matmul for discrete and integrated GPUs: a 16×16 workgroup computes a
// 64×64 block of Y, staging 64×16 slices of A and B in workgroup memory so each global value is
// loaded once per block; each invocation keeps a 4×4 block of accumulators. Same operand
// conventions and options as matmul_blocked.wgsl:
//
//   Y[M,N] = alpha * (op(A)[M,K] · op(B)[K,N] (+ op(A2)[M,E] · op(B2)[E,N]))
//   A_T = 0: A[m*lda + k], 1: A[k*lda + m];   B_T = 1: B[n*ldb + k], 0: B[k*ldb + n]
//   then Y *= coef[row, seg[col]] (ROW_COEF), Y += Y_old (ACCUMULATE); B may be f16 (B_F16).
// Each output is summed by one invocation in a fixed order: deterministic, no atomics.

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldy: u32,
    e: u32,
    lda2: u32,
    ldb2: u32,
    n_adapters: u32,
    alpha: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
#if B_F16
@group(0) @binding(2) var<storage, read> b: array<u32>;
#else
@group(0) @binding(2) var<storage, read> b: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if EPILOGUE
@group(0) @binding(4) var<storage, read> a2: array<f32>;
@group(0) @binding(5) var<storage, read> b2: array<f32>;
#endif
#if ROW_COEF
@group(0) @binding(6) var<storage, read> coef: array<f32>;
@group(0) @binding(7) var<storage, read> seg: array<u32>;
#endif

var<workgroup> as_: array<array<f32, BM>, BK>;   // [k][m]
var<workgroup> bs: array<array<f32, BN>, BK>;    // [k][n]

fn a_index(m: u32, k: u32, ld: u32) -> u32 {
#if A_T
    return k * ld + m;
#else
    return m * ld + k;
#endif
}

fn b_index(k: u32, n: u32, ld: u32) -> u32 {
#if B_T
    return n * ld + k;
#else
    return k * ld + n;
#endif
}

// Operand loads for phase 0 (A·B) and phase 1 (A2·B2), zero outside the matrix.
fn load_a(phase: u32, m: u32, k: u32, kmax: u32) -> f32 {
    if (m >= p.m || k >= kmax) {
        return 0.0;
    }
#if EPILOGUE
    if (phase == 1u) {
        return a2[a_index(m, k, p.lda2)];
    }
#endif
    return a[a_index(m, k, p.lda)];
}

fn load_b(phase: u32, k: u32, n: u32, kmax: u32) -> f32 {
    if (n >= p.n || k >= kmax) {
        return 0.0;
    }
#if EPILOGUE
    if (phase == 1u) {
        return b2[b_index(k, n, p.ldb2)];
    }
#endif
    let i = b_index(k, n, p.ldb);
#if B_F16
    let pair = unpack2x16float(b[i / 2u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
#else
    return b[i];
#endif
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m0 = (wg.y + wg.z * nwg.y) * BM;
    let n0 = wg.x * BN;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }
#if EPILOGUE
    let phases = 2u;
#else
    let phases = 1u;
#endif
    for (var phase = 0u; phase < phases; phase++) {
        let kmax = select(p.k, p.e, phase == 1u);
        for (var kt = 0u; kt < kmax; kt += BK) {
            // 256 invocations stage 64×16 values of each operand, 4 each. Which index varies
            // fastest across invocations follows the operand's contiguous axis (coalescing).
            for (var s = 0u; s < 4u; s++) {
                let flat = li + s * 256u;
#if A_T
                let am = flat % BM;
                let ak = flat / BM;
#else
                let ak = flat % BK;
                let am = flat / BK;
#endif
                as_[ak][am] = load_a(phase, m0 + am, kt + ak, kmax);
#if B_T
                let bk = flat % BK;
                let bn = flat / BK;
#else
                let bn = flat % BN;
                let bk = flat / BN;
#endif
                bs[bk][bn] = load_b(phase, kt + bk, n0 + bn, kmax);
            }
            workgroupBarrier();
            for (var k = 0u; k < BK; k++) {
                var av: array<f32, 4>;
                var bv: array<f32, 4>;
                for (var i = 0u; i < 4u; i++) {
                    av[i] = as_[k][lid.y + 16u * i];
                    bv[i] = bs[k][lid.x + 16u * i];
                }
                for (var i = 0u; i < 4u; i++) {
                    for (var j = 0u; j < 4u; j++) {
                        acc[i][j] += av[i] * bv[j];
                    }
                }
            }
            workgroupBarrier();
        }
    }
    // Invocation (x, y) owns rows y + 16i and columns x + 16j: adjacent invocations write
    // adjacent columns.
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + lid.x + 16u * j;
            if (row < p.m && col < p.n) {
                var v = p.alpha * acc[i][j];
#if ROW_COEF
                v *= coef[row * p.n_adapters + seg[col]];
#endif
                let idx = row * p.ldy + col;
#if ACCUMULATE
                v += y[idx];
#endif
                y[idx] = v;
            }
        }
    }
}
