// Register-blocked matmul on storage buffers: no workgroup memory, no subgroups, no textures, so
// it runs on every adapter (the GL backend included). Each invocation owns R rows × C columns and
// walks the inner dimension once; each output is summed by one invocation in a fixed order
// (deterministic, no atomics).
//
//   Y[M,N] = alpha * (op(A)[M,K] · op(B)[K,N] (+ op(A2)[M,E] · op(B2)[E,N]))
//   A_T = 0: A is [M,K] (A[m*lda + k]);  A_T = 1: A is [K,M] (A[k*lda + m])
//   B_T = 1: B is [N,K] (B[n*ldb + k]);  B_T = 0: B is [K,N] (B[k*ldb + n])
//   nt = (A_T 0, B_T 1), nn = (0, 0), tn = (1, 0). A2/B2 have the orientation of A/B.
//   then Y *= coef[row, seg[col]] (ROW_COEF), Y += Y_old (ACCUMULATE).
// B may be f16 (B_F16: two halves per word, element i at word i/2). VEC4 (nt with K and lda,
// ldb multiples of 4, f32 B) reads A and B four values at a time.

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
#if VEC4
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
#else
@group(0) @binding(1) var<storage, read> a: array<f32>;
#if B_F16
@group(0) @binding(2) var<storage, read> b: array<u32>;
#else
@group(0) @binding(2) var<storage, read> b: array<f32>;
#endif
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

#if !VEC4
fn b_at(k: u32, n: u32) -> f32 {
    let i = b_index(k, n, p.ldb);
#if B_F16
    let pair = unpack2x16float(b[i / 2u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
#else
    return b[i];
#endif
}
#endif

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // gid.x walks column blocks; rows blocks are folded over (y, z).
    let col0 = gid.x * C;
    let row0 = (gid.y + gid.z * nwg.y) * R;
    if (col0 >= p.n || row0 >= p.m) {
        return;
    }
#repeat r R
    let ar{r} = min(row0 + {r}u, p.m - 1u);
#repeat c C
    var acc{r}_{c} = 0.0;
#end
#end
#repeat c C
    let bc{c} = min(col0 + {c}u, p.n - 1u);
#end
#if VEC4
    let k4 = p.k / 4u;
    for (var k = 0u; k < k4; k++) {
#repeat r R
        let av{r} = a[ar{r} * (p.lda / 4u) + k];
#end
#repeat c C
        let bv{c} = b[bc{c} * (p.ldb / 4u) + k];
#end
#repeat r R
#repeat c C
        acc{r}_{c} += dot(av{r}, bv{c});
#end
#end
    }
#else
    for (var k = 0u; k < p.k; k++) {
#repeat r R
        let av{r} = a[a_index(ar{r}, k, p.lda)];
#end
#repeat c C
        let bv{c} = b_at(k, bc{c});
#end
#repeat r R
#repeat c C
        acc{r}_{c} += av{r} * bv{c};
#end
#end
    }
#endif
#if EPILOGUE
    for (var k = 0u; k < p.e; k++) {
#repeat r R
        let ev{r} = a2[a_index(ar{r}, k, p.lda2)];
#end
#repeat c C
        let fv{c} = b2[b_index(k, bc{c}, p.ldb2)];
#end
#repeat r R
#repeat c C
        acc{r}_{c} += ev{r} * fv{c};
#end
#end
    }
#endif
#repeat r R
#repeat c C
    if (row0 + {r}u < p.m && col0 + {c}u < p.n) {
        var v{r}_{c} = p.alpha * acc{r}_{c};
#if ROW_COEF
        v{r}_{c} *= coef[(row0 + {r}u) * p.n_adapters + seg[col0 + {c}u]];
#endif
        let i{r}_{c} = (row0 + {r}u) * p.ldy + col0 + {c}u;
#if ACCUMULATE
        v{r}_{c} += y[i{r}_{c}];
#endif
        y[i{r}_{c}] = v{r}_{c};
    }
#end
#end
}
