// Matmul for CPU drivers (lavapipe): operands in textures, the activation shared across a
// subgroup with subgroupBroadcast. Layouts in src/gpu/texture.rs; design notes in
// src/kernels/matmul_texture.rs.
//
//   nt: Y[M,N] = alpha * (X[M,K] · W[N,K]ᵀ (+ T[M,E] · B[N,E]ᵀ))      X, W, B textures; T buffer
//   nn: Y[M,N] = alpha * (X[M,K] · W[K,N]  (+ T[M,E] · B[E,N]))       (dX = dY·W in training)
//   then, per option: Y *= coef[row, seg[col]] (ROW_COEF), Y += Y_old (ACCUMULATE).
//
// A workgroup is one subgroup of SG invocations. nt: invocation `lane` owns R rows × C columns
// (columns (wg.x*SG + lane)*C + c). nn: it owns R rows × C texel columns (4 or 8 outputs each).
// The inner dimension is walked in chunks of 4*SG values: every lane fetches one texel of X per
// row, and the subgroup shares them with subgroupBroadcast at constant lanes, so each X value is
// fetched once per subgroup rather than once per invocation.
//
// Weights are f32, f16 (W_F16: 8 halves a texel) or 4-bit (W_Q4): a texel
// of 32 nibbles per block of 32 values in GGUF Q4_1 order (byte b: value b in the low nibble,
// value b+16 in the high one), and beside it a texture of (scale d, offset m) pairs, two blocks a
// texel, value = d·q + m. A block's dot product is d·Σ q·x + m·Σ x. Or 8-bit (W_Q8, GGUF's
// Q8_0): two texels of 16 signed bytes a block, in order, and a texture of scales d, four blocks a
// texel, value = d·q.

struct Params {
    m: u32,
    n: u32,
    ldy: u32,
    chunks: u32,     // inner-dimension chunks of 4*SG
    x_rpl: u32,      // rows per layer of X
    w_rpl: u32,      // rows per layer of W
    e_chunks: u32,   // epilogue chunks of 4*SG
    e_ld4: u32,      // T row stride in vec4
    b_rpl: u32,      // rows per layer of B
    n_adapters: u32,
    w_width: u32,    // texels per row of W (nn: clamp for output texels past the edge)
    b_width: u32,
    alpha: f32,
    eps: f32,        // NORM: the RMSNorm epsilon
    k: u32,          // the inner dimension
}

@group(0) @binding(0) var<uniform> p: Params;
#if X_BUF
// One-row kernels: the activation straight from its buffer, [M, K/4] vec4s (x_rpl holds K/4),
// with a prologue applied as it is read: NORM, x = src·ρ·gain (ρ = 1/sqrt(mean(src²) + eps) of
// the row); SWIGLU, x = silu(g)·u of src = [g | u] [M, 2K].
@group(0) @binding(1) var<storage, read> xbuf: array<vec4<f32>>;
#if NORM
@group(0) @binding(9) var<storage, read> gain: array<vec4<f32>>;
#endif
#else
@group(0) @binding(1) var xt: texture_2d_array<f32>;
#endif
#if W_F16
@group(0) @binding(2) var wt: texture_2d_array<u32>;
#else
#if W_Q4
@group(0) @binding(2) var wt: texture_2d_array<u32>;
@group(0) @binding(8) var ws: texture_2d_array<f32>;
#else
#if W_Q8
@group(0) @binding(2) var wt: texture_2d_array<u32>;
@group(0) @binding(8) var ws: texture_2d_array<f32>;
#else
@group(0) @binding(2) var wt: texture_2d_array<f32>;
#endif
#endif
#endif
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if EPILOGUE
@group(0) @binding(4) var<storage, read> tb: array<vec4<f32>>;
@group(0) @binding(5) var bt: texture_2d_array<f32>;
#endif
#if ROW_COEF
@group(0) @binding(6) var<storage, read> coef: array<f32>;   // [M, n_adapters]
@group(0) @binding(7) var<storage, read> seg: array<u32>;    // adapter of each output column
#endif

#if X_BUF
// Texel i of activation row r, its prologue applied (`rho` is the row's row_scale); zero past
// the row (the buffer is not padded).
fn x_at(r: u32, i: u32, rho: f32) -> vec4<f32> {
    let j = min(i, p.x_rpl - 1u);
#if SWIGLU
    let g = xbuf[r * 2u * p.x_rpl + j];
    let v = g / (vec4<f32>(1.0) + exp(-g)) * xbuf[r * 2u * p.x_rpl + p.x_rpl + j];
#else
#if NORM
    let v = xbuf[r * p.x_rpl + j] * rho * gain[j];
#else
    let v = xbuf[r * p.x_rpl + j];
#endif
#endif
    return select(vec4<f32>(0.0), v, i < p.x_rpl);
}

// ρ of row r for NORM (the subgroup sums the squares side by side), else 1.
fn row_scale(r: u32, lane: u32) -> f32 {
#if NORM
    var ss = 0.0;
    for (var i = lane; i < p.x_rpl; i += SG) {
        let v = xbuf[r * p.x_rpl + i];
        ss += dot(v, v);
    }
    return inverseSqrt(subgroupAdd(ss) / f32(4u * p.x_rpl) + p.eps);
#else
    return 1.0;
#endif
}
#endif

#if W_Q4
// The four nibbles of word w at bits s, s+8, s+16, s+24.
fn nib(w: u32, s: u32) -> vec4<f32> {
    return vec4<f32>(f32((w >> s) & 15u), f32((w >> (s + 8u)) & 15u), f32((w >> (s + 16u)) & 15u), f32((w >> (s + 24u)) & 15u));
}

// (d, m) of block b of weight row (y, layer).
fn q4_scale(b: u32, y: i32, l: i32) -> vec2<f32> {
    let s = textureLoad(ws, vec2<i32>(i32(b / 2u), y), l, 0);
    return select(s.xy, s.zw, (b & 1u) == 1u);
}
#endif

#if W_Q8
// The four signed bytes of word w, low byte first.
fn i8x4(w: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xI8(w));
}

// d of block b of weight row (y, layer).
fn q8_scale(b: u32, y: i32, l: i32) -> f32 {
    return textureLoad(ws, vec2<i32>(i32(b / 4u), y), l, 0)[b % 4u];
}
#endif

fn finish(row: u32, col: u32, acc: f32) {
    if (row < p.m && col < p.n) {
        var v = p.alpha * acc;
#if ROW_COEF
        v *= coef[row * p.n_adapters + seg[col]];
#endif
        let i = row * p.ldy + col;
#if ACCUMULATE
        v += y[i];
#endif
        y[i] = v;
    }
}

// Four neighbouring outputs of a row.
fn finish4(row: u32, col: u32, v: vec4<f32>) {
    finish(row, col, v.x);
    finish(row, col + 1u, v.y);
    finish(row, col + 2u, v.z);
    finish(row, col + 3u, v.w);
}

@compute @workgroup_size(SG)
fn nt(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(subgroup_invocation_id) lane: u32) {
    let col0 = (wg.x * SG + lane) * C;
    let row0 = (wg.y + wg.z * nwg.y) * R;
#repeat r R
    let xr{r} = min(row0 + {r}u, p.m - 1u);
    let xy{r} = i32(xr{r} % p.x_rpl);
    let xl{r} = i32(xr{r} / p.x_rpl);
#if X_BUF
    let sc{r} = row_scale(xr{r}, lane);
#endif
#repeat c C
    var acc{r}_{c} = 0.0;
#end
#end
#repeat c C
    let wr{c} = min(col0 + {c}u, p.n - 1u);
    let wy{c} = i32(wr{c} % p.w_rpl);
    let wl{c} = i32(wr{c} / p.w_rpl);
#end
    for (var q = 0u; q < p.chunks; q++) {
#if W_BLOCKS
        // Quantized weights: an iteration takes two blocks, QP chunks of 4·SG values. 4-bit: the
        // pair whose (d, m) share one scale texel, so a lane fetches three texels a column for 64
        // values instead of four (the fetches bound this loop on lavapipe); 8-bit: four quant
        // texels and the half of a scale texel holding the pair's d. Chunks past K read as zero,
        // and a zero activation makes any block's sum zero.
#repeat h QP
        let kx{h} = (q * QP + {h}u) * SG + lane;
#end
#repeat r R
        var xq{r}: array<vec4<f32>, QP>;
#repeat h QP
#if X_BUF
        xq{r}[{h}] = x_at(xr{r}, kx{h}, sc{r});
#else
        xq{r}[{h}] = select(vec4<f32>(0.0), textureLoad(xt, vec2<i32>(i32(kx{h}), xy{r}), xl{r}, 0), 4u * kx{h} < p.k);
#endif
#end
#end
#if W_Q4
#repeat c C
        let sp{c} = textureLoad(ws, vec2<i32>(i32(q), wy{c}), wl{c}, 0);
#end
#repeat i 2
#repeat c C
        let wq{i}_{c} = textureLoad(wt, vec2<i32>(i32(min(2u * q + {i}u, p.w_width - 1u)), wy{c}), wl{c}, 0);
#repeat u 8
        let nv{i}_{u}_{c} = nib(wq{i}_{c}[{u}u % 4u], 4u * ({u}u / 4u));
#end
#end
#repeat r R
        var xs{i}_{r} = 0.0;
#repeat c C
        var dq{i}_{r}_{c} = 0.0;
#end
#repeat u 8
        let x{i}_{u}_{r} = subgroupBroadcast(xq{r}[{i}u / QB], ({i}u % QB) * 8u + {u}u);
        xs{i}_{r} += dot(x{i}_{u}_{r}, vec4<f32>(1.0));
#repeat c C
        dq{i}_{r}_{c} += dot(x{i}_{u}_{r}, nv{i}_{u}_{c});
#end
#end
#repeat c C
        acc{r}_{c} += sp{c}[2u * {i}u] * dq{i}_{r}_{c} + sp{c}[2u * {i}u + 1u] * xs{i}_{r};
#end
#end
#end
#else
#repeat c C
        let sq{c} = textureLoad(ws, vec2<i32>(i32(q / 2u), wy{c}), wl{c}, 0);
        let sp{c} = select(sq{c}.xy, sq{c}.zw, (q & 1u) == 1u);
#end
#repeat i 2
#repeat c C
        let wq{i}_{c} = array<vec4<u32>, 2>(
            textureLoad(wt, vec2<i32>(i32(min(4u * q + 2u * {i}u, p.w_width - 1u)), wy{c}), wl{c}, 0),
            textureLoad(wt, vec2<i32>(i32(min(4u * q + 2u * {i}u + 1u, p.w_width - 1u)), wy{c}), wl{c}, 0));
#end
#repeat r R
#repeat c C
        var dq{i}_{r}_{c} = 0.0;
#end
#repeat u 8
        let x{i}_{u}_{r} = subgroupBroadcast(xq{r}[(8u * {i}u + {u}u) / SG], (8u * {i}u + {u}u) % SG);
#repeat c C
        dq{i}_{r}_{c} += dot(x{i}_{u}_{r}, i8x4(wq{i}_{c}[{u}u / 4u][{u}u % 4u]));
#end
#end
#repeat c C
        acc{r}_{c} += sp{c}[{i}u] * dq{i}_{r}_{c};
#end
#end
#end
#endif
#else
        let kx = i32(q * SG + lane);
#repeat r R
#if X_BUF
        let xv{r} = x_at(xr{r}, u32(kx), sc{r});
#else
        let xv{r} = textureLoad(xt, vec2<i32>(kx, xy{r}), xl{r}, 0);
#endif
#end
#if W_F16
        let kw = i32(q * (SG / 2u));
#repeat h HSG
#repeat c C
        let wp{h}_{c} = textureLoad(wt, vec2<i32>(kw + {h}, wy{c}), wl{c}, 0);
        let wa{h}_{c} = vec4<f32>(unpack2x16float(wp{h}_{c}.x), unpack2x16float(wp{h}_{c}.y));
        let wb{h}_{c} = vec4<f32>(unpack2x16float(wp{h}_{c}.z), unpack2x16float(wp{h}_{c}.w));
#end
#repeat r R
        let xa{h}_{r} = subgroupBroadcast(xv{r}, 2u * {h}u);
        let xb{h}_{r} = subgroupBroadcast(xv{r}, 2u * {h}u + 1u);
#repeat c C
        acc{r}_{c} += dot(xa{h}_{r}, wa{h}_{c}) + dot(xb{h}_{r}, wb{h}_{c});
#end
#end
#end
#else
        let kw = i32(q * SG);
#repeat t SG
#repeat c C
        let w{t}_{c} = textureLoad(wt, vec2<i32>(kw + {t}, wy{c}), wl{c}, 0);
#end
#repeat r R
        let x{t}_{r} = subgroupBroadcast(xv{r}, {t}u);
#repeat c C
        acc{r}_{c} += dot(x{t}_{r}, w{t}_{c});
#end
#end
#end
#endif
#endif
    }
#if EPILOGUE
#repeat c C
    let by{c} = i32(wr{c} % p.b_rpl);
    let bl{c} = i32(wr{c} / p.b_rpl);
#end
    for (var q = 0u; q < p.e_chunks; q++) {
        let i4 = q * SG + lane;
        let inside = i4 < p.e_ld4;
        let ti = min(i4, p.e_ld4 - 1u);
#repeat r R
        let tv{r} = select(vec4<f32>(0.0), tb[xr{r} * p.e_ld4 + ti], inside);
#end
        let kb = i32(q * SG);
#repeat t SG
#repeat c C
        let b{t}_{c} = textureLoad(bt, vec2<i32>(kb + {t}, by{c}), bl{c}, 0);
#end
#repeat r R
        let s{t}_{r} = subgroupBroadcast(tv{r}, {t}u);
#repeat c C
        acc{r}_{c} += dot(s{t}_{r}, b{t}_{c});
#end
#end
#end
    }
#endif
#repeat r R
#repeat c C
    finish(row0 + {r}u, col0 + {c}u, acc{r}_{c});
#end
#end
}

#if !X_BUF
// nn: W is [K, N] as a texture of K rows; lane column j covers PER outputs: f32 W, texel j and
// outputs 4j..4j+3; f16 W (W8), texel j and outputs 8j..8j+7; 4-bit W (W8, W_Q4), word j%4 of
// block texel j/4, its low nibbles outputs 32(j/4) + 4(j%4) + 0..3 and its high nibbles the
// same + 16. A 4-bit value is d·q + m, so Σ_k x_k(d_k q_k + m_k) = Σ_k (x_k d_k) q_k + Σ_k x_k m_k,
// the second sum shared by the lane's 8 outputs; 8-bit W (W8, W_Q8), quant texel j, outputs
// 16j..16j+15 (word w: 16j + 4w + 0..3), scaled by the d of block j/2. The inner index k of a chunk is
// (q*SG + t)*4 + e: lane t's X texel, component e.
@compute @workgroup_size(SG)
fn nn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(subgroup_invocation_id) lane: u32) {
    let j0 = (wg.x * SG + lane) * C;
    let row0 = (wg.y + wg.z * nwg.y) * R;
#repeat c C
    let jc{c} = min(j0 + {c}u, p.w_width - 1u);
    let wj{c} = i32(jc{c});
#if W_Q4
    let qb{c} = jc{c} / 4u;
    let qw{c} = jc{c} % 4u;
#endif
#if W_Q8
    let sx{c} = i32(jc{c} / 8u);
    let sw{c} = (jc{c} / 2u) % 4u;
#endif
#end
#repeat r R
    let xr{r} = min(row0 + {r}u, p.m - 1u);
    let xy{r} = i32(xr{r} % p.x_rpl);
    let xl{r} = i32(xr{r} / p.x_rpl);
#repeat c C
    var acc{r}_{c} = vec4<f32>(0.0);
#if W8
    var hi{r}_{c} = vec4<f32>(0.0);
#endif
#if W_Q4
    var ms{r}_{c} = 0.0;
#endif
#if W_Q8
    var a2{r}_{c} = vec4<f32>(0.0);
    var a3{r}_{c} = vec4<f32>(0.0);
#endif
#end
#end
    for (var q = 0u; q < p.chunks; q++) {
        let k0 = q * 4u * SG;
        let wl = i32(k0 / p.w_rpl);
        let wy = i32(k0 % p.w_rpl);
        let kx = i32(q * SG + lane);
#repeat r R
        let xv{r} = textureLoad(xt, vec2<i32>(kx, xy{r}), xl{r}, 0);
#end
#repeat t SG
#repeat r R
        let x{t}_{r} = subgroupBroadcast(xv{r}, {t}u);
#end
        for (var e = 0; e < 4; e++) {
#repeat c C
#if W_Q4
            let wq{t}_{c} = textureLoad(wt, vec2<i32>(i32(qb{c}), wy + {t} * 4 + e), wl, 0)[qw{c}];
            let dm{t}_{c} = q4_scale(qb{c}, wy + {t} * 4 + e, wl);
            let w{t}_{c} = nib(wq{t}_{c}, 0u);
            let v{t}_{c} = nib(wq{t}_{c}, 4u);
#else
#if W_Q8
            let wq{t}_{c} = textureLoad(wt, vec2<i32>(wj{c}, wy + {t} * 4 + e), wl, 0);
            let d{t}_{c} = textureLoad(ws, vec2<i32>(sx{c}, wy + {t} * 4 + e), wl, 0)[sw{c}];
#else
#if W_F16
            let wp{t}_{c} = textureLoad(wt, vec2<i32>(wj{c}, wy + {t} * 4 + e), wl, 0);
            let w{t}_{c} = vec4<f32>(unpack2x16float(wp{t}_{c}.x), unpack2x16float(wp{t}_{c}.y));
            let v{t}_{c} = vec4<f32>(unpack2x16float(wp{t}_{c}.z), unpack2x16float(wp{t}_{c}.w));
#else
            let w{t}_{c} = textureLoad(wt, vec2<i32>(wj{c}, wy + {t} * 4 + e), wl, 0);
#endif
#endif
#endif
#end
#repeat r R
            let xe{t}_{r} = x{t}_{r}[e];
#repeat c C
#if W_Q4
            let xd{t}_{r}_{c} = xe{t}_{r} * dm{t}_{c}.x;
            acc{r}_{c} += xd{t}_{r}_{c} * w{t}_{c};
            hi{r}_{c} += xd{t}_{r}_{c} * v{t}_{c};
            ms{r}_{c} += xe{t}_{r} * dm{t}_{c}.y;
#else
#if W_Q8
            let xd{t}_{r}_{c} = xe{t}_{r} * d{t}_{c};
            acc{r}_{c} += xd{t}_{r}_{c} * i8x4(wq{t}_{c}.x);
            hi{r}_{c} += xd{t}_{r}_{c} * i8x4(wq{t}_{c}.y);
            a2{r}_{c} += xd{t}_{r}_{c} * i8x4(wq{t}_{c}.z);
            a3{r}_{c} += xd{t}_{r}_{c} * i8x4(wq{t}_{c}.w);
#else
            acc{r}_{c} += xe{t}_{r} * w{t}_{c};
#if W_F16
            hi{r}_{c} += xe{t}_{r} * v{t}_{c};
#endif
#endif
#endif
#end
#end
        }
#end
    }
#if EPILOGUE
    // B is f32 [E, N]: a lane column of f16 or 4-bit W spans two f32 texels of B, of 8-bit W four.
#repeat c C
#if W_Q8
    let bj{c} = i32(min(4u * (j0 + {c}u), p.b_width - 1u));
    let bk{c} = i32(min(4u * (j0 + {c}u) + 1u, p.b_width - 1u));
    let b2j{c} = i32(min(4u * (j0 + {c}u) + 2u, p.b_width - 1u));
    let b3j{c} = i32(min(4u * (j0 + {c}u) + 3u, p.b_width - 1u));
#else
#if W_Q4
    let bj{c} = i32(min(8u * qb{c} + qw{c}, p.b_width - 1u));
    let bk{c} = i32(min(8u * qb{c} + 4u + qw{c}, p.b_width - 1u));
#else
#if W_F16
    let bj{c} = i32(min(2u * (j0 + {c}u), p.b_width - 1u));
    let bk{c} = i32(min(2u * (j0 + {c}u) + 1u, p.b_width - 1u));
#else
    let bj{c} = i32(min(j0 + {c}u, p.b_width - 1u));
#endif
#endif
#endif
#end
    for (var q = 0u; q < p.e_chunks; q++) {
        let k0 = q * 4u * SG;
        let bl = i32(k0 / p.b_rpl);
        let by = i32(k0 % p.b_rpl);
        let i4 = q * SG + lane;
        let inside = i4 < p.e_ld4;
        let ti = min(i4, p.e_ld4 - 1u);
#repeat r R
        let tv{r} = select(vec4<f32>(0.0), tb[xr{r} * p.e_ld4 + ti], inside);
#end
#repeat t SG
#repeat r R
        let s{t}_{r} = subgroupBroadcast(tv{r}, {t}u);
#end
#repeat e 4
#repeat c C
        let b{t}_{e}_{c} = textureLoad(bt, vec2<i32>(bj{c}, by + {t} * 4 + {e}), bl, 0);
#if W8
        let g{t}_{e}_{c} = textureLoad(bt, vec2<i32>(bk{c}, by + {t} * 4 + {e}), bl, 0);
#endif
#if W_Q8
        let g2{t}_{e}_{c} = textureLoad(bt, vec2<i32>(b2j{c}, by + {t} * 4 + {e}), bl, 0);
        let g3{t}_{e}_{c} = textureLoad(bt, vec2<i32>(b3j{c}, by + {t} * 4 + {e}), bl, 0);
#endif
#end
#repeat r R
#repeat c C
        acc{r}_{c} += s{t}_{r}[{e}] * b{t}_{e}_{c};
#if W8
        hi{r}_{c} += s{t}_{r}[{e}] * g{t}_{e}_{c};
#endif
#if W_Q8
        a2{r}_{c} += s{t}_{r}[{e}] * g2{t}_{e}_{c};
        a3{r}_{c} += s{t}_{r}[{e}] * g3{t}_{e}_{c};
#endif
#end
#end
#end
#end
    }
#endif
#repeat r R
#repeat c C
#if W_Q4
    let o{r}_{c} = (j0 + {c}u) / 4u * 32u + (j0 + {c}u) % 4u * 4u;
    let lo{r}_{c} = acc{r}_{c} + vec4<f32>(ms{r}_{c});
    let up{r}_{c} = hi{r}_{c} + vec4<f32>(ms{r}_{c});
    finish(row0 + {r}u, o{r}_{c}, lo{r}_{c}.x);
    finish(row0 + {r}u, o{r}_{c} + 1u, lo{r}_{c}.y);
    finish(row0 + {r}u, o{r}_{c} + 2u, lo{r}_{c}.z);
    finish(row0 + {r}u, o{r}_{c} + 3u, lo{r}_{c}.w);
    finish(row0 + {r}u, o{r}_{c} + 16u, up{r}_{c}.x);
    finish(row0 + {r}u, o{r}_{c} + 17u, up{r}_{c}.y);
    finish(row0 + {r}u, o{r}_{c} + 18u, up{r}_{c}.z);
    finish(row0 + {r}u, o{r}_{c} + 19u, up{r}_{c}.w);
#else
#if W_Q8
    let o{r}_{c} = (j0 + {c}u) * 16u;
    finish4(row0 + {r}u, o{r}_{c}, acc{r}_{c});
    finish4(row0 + {r}u, o{r}_{c} + 4u, hi{r}_{c});
    finish4(row0 + {r}u, o{r}_{c} + 8u, a2{r}_{c});
    finish4(row0 + {r}u, o{r}_{c} + 12u, a3{r}_{c});
#else
#if W_F16
    let o{r}_{c} = (j0 + {c}u) * 8u;
#else
    let o{r}_{c} = (j0 + {c}u) * 4u;
#endif
    finish(row0 + {r}u, o{r}_{c}, acc{r}_{c}.x);
    finish(row0 + {r}u, o{r}_{c} + 1u, acc{r}_{c}.y);
    finish(row0 + {r}u, o{r}_{c} + 2u, acc{r}_{c}.z);
    finish(row0 + {r}u, o{r}_{c} + 3u, acc{r}_{c}.w);
#if W_F16
    finish(row0 + {r}u, o{r}_{c} + 4u, hi{r}_{c}.x);
    finish(row0 + {r}u, o{r}_{c} + 5u, hi{r}_{c}.y);
    finish(row0 + {r}u, o{r}_{c} + 6u, hi{r}_{c}.z);
    finish(row0 + {r}u, o{r}_{c} + 7u, hi{r}_{c}.w);
#endif
#endif
#endif
#end
#end
}
#endif

// nt for few rows (decode): lanes walk the inner dimension side by side (lane l takes texel
// q*SG + l of every operand row), so a subgroup reads SG neighbouring texels of one weight row
// per fetch instead of one texel from each of SG rows; the R×C partial dots are summed across the
// subgroup at the end. C weight rows (output columns) per subgroup, R activation rows.
// f16 weights: a texel holds 8 values, so a lane takes two activation texels per weight texel
// and a chunk spans 8*SG values (K is padded to 4*SG only: the last half chunk is masked).
@compute @workgroup_size(SG)
fn nt_dot(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(subgroup_invocation_id) lane: u32) {
    let col0 = wg.x * C;
    let row0 = (wg.y + wg.z * nwg.y) * R;
#repeat r R
    let xr{r} = min(row0 + {r}u, p.m - 1u);
    let xy{r} = i32(xr{r} % p.x_rpl);
    let xl{r} = i32(xr{r} / p.x_rpl);
#if X_BUF
    let sc{r} = row_scale(xr{r}, lane);
#endif
#repeat c C
    var acc{r}_{c} = 0.0;
#end
#end
#repeat c C
    let wr{c} = min(col0 + {c}u, p.n - 1u);
    let wy{c} = i32(wr{c} % p.w_rpl);
    let wl{c} = i32(wr{c} / p.w_rpl);
#end
    for (var q = 0u; q < p.chunks; q++) {
        let tx = q * SG + lane;
#if W_Q4
        // lane takes block tx whole: one quant texel per weight row, eight activation texels
        let inside = tx < p.w_width;
        let bx = min(tx, p.w_width - 1u);
#repeat c C
        let wq{c} = textureLoad(wt, vec2<i32>(i32(bx), wy{c}), wl{c}, 0);
        let dm{c} = q4_scale(bx, wy{c}, wl{c});
#end
#repeat r R
        var xs{r} = 0.0;
#repeat c C
        var dq{r}_{c} = 0.0;
#end
#repeat u 8
#if X_BUF
        let x{u}_{r} = x_at(xr{r}, 8u * bx + {u}u, sc{r});
#else
        let x{u}_{r} = textureLoad(xt, vec2<i32>(i32(8u * bx + {u}u), xy{r}), xl{r}, 0);
#endif
        xs{r} += dot(x{u}_{r}, vec4<f32>(1.0));
#repeat c C
        dq{r}_{c} += dot(x{u}_{r}, nib(wq{c}[{u}u % 4u], 4u * ({u}u / 4u)));
#end
#end
#repeat c C
        acc{r}_{c} += select(0.0, dm{c}.x * dq{r}_{c} + dm{c}.y * xs{r}, inside);
#end
#end
#else
#if W_Q8
        // lane takes block tx whole: two quant texels per weight row, eight activation texels
        let inside = 2u * tx < p.w_width;
        let bx = min(tx, p.w_width / 2u - 1u);
#repeat c C
        let wq{c} = array<vec4<u32>, 2>(textureLoad(wt, vec2<i32>(i32(2u * bx), wy{c}), wl{c}, 0),
                                        textureLoad(wt, vec2<i32>(i32(2u * bx + 1u), wy{c}), wl{c}, 0));
        let d{c} = q8_scale(bx, wy{c}, wl{c});
#end
#repeat r R
#repeat c C
        var dq{r}_{c} = 0.0;
#end
#repeat u 8
#if X_BUF
        let x{u}_{r} = x_at(xr{r}, 8u * bx + {u}u, sc{r});
#else
        let x{u}_{r} = textureLoad(xt, vec2<i32>(i32(8u * bx + {u}u), xy{r}), xl{r}, 0);
#endif
#repeat c C
        dq{r}_{c} += dot(x{u}_{r}, i8x4(wq{c}[{u}u / 4u][{u}u % 4u]));
#end
#end
#repeat c C
        acc{r}_{c} += select(0.0, d{c} * dq{r}_{c}, inside);
#end
#end
#else
#if W_F16
        let inside = tx < p.w_width;
        let wx = i32(min(tx, p.w_width - 1u));
#repeat c C
        let wp{c} = textureLoad(wt, vec2<i32>(wx, wy{c}), wl{c}, 0);
        let wa{c} = select(vec4<f32>(0.0), vec4<f32>(unpack2x16float(wp{c}.x), unpack2x16float(wp{c}.y)), inside);
        let wb{c} = select(vec4<f32>(0.0), vec4<f32>(unpack2x16float(wp{c}.z), unpack2x16float(wp{c}.w)), inside);
#end
#repeat r R
#if X_BUF
        let xa{r} = x_at(xr{r}, 2u * u32(wx), sc{r});
        let xb{r} = x_at(xr{r}, 2u * u32(wx) + 1u, sc{r});
#else
        let xa{r} = textureLoad(xt, vec2<i32>(2 * wx, xy{r}), xl{r}, 0);
        let xb{r} = textureLoad(xt, vec2<i32>(2 * wx + 1, xy{r}), xl{r}, 0);
#endif
#repeat c C
        acc{r}_{c} += dot(xa{r}, wa{c}) + dot(xb{r}, wb{c});
#end
#end
#else
#repeat c C
        let w{c} = textureLoad(wt, vec2<i32>(i32(tx), wy{c}), wl{c}, 0);
#end
#repeat r R
#if X_BUF
        let x{r} = x_at(xr{r}, tx, sc{r});
#else
        let x{r} = textureLoad(xt, vec2<i32>(i32(tx), xy{r}), xl{r}, 0);
#endif
#repeat c C
        acc{r}_{c} += dot(x{r}, w{c});
#end
#end
#endif
#endif
#endif
    }
#if EPILOGUE
#repeat c C
    let by{c} = i32(wr{c} % p.b_rpl);
    let bl{c} = i32(wr{c} / p.b_rpl);
#end
    for (var q = 0u; q < p.e_chunks; q++) {
        let i4 = q * SG + lane;
        let inside = i4 < p.e_ld4;
        let ti = min(i4, p.e_ld4 - 1u);
#repeat c C
        let b{c} = textureLoad(bt, vec2<i32>(i32(i4), by{c}), bl{c}, 0);
#end
#repeat r R
        let tv{r} = select(vec4<f32>(0.0), tb[xr{r} * p.e_ld4 + ti], inside);
#repeat c C
        acc{r}_{c} += dot(tv{r}, b{c});
#end
#end
    }
#endif
#repeat r R
#repeat c C
    let s{r}_{c} = subgroupAdd(acc{r}_{c});
#end
#end
    if (lane == 0u) {
#repeat r R
#repeat c C
        finish(row0 + {r}u, col0 + {c}u, s{r}_{c});
#end
#end
    }
}
