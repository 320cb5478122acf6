//! Launcher for shaders/attention.wgsl (causal grouped-query attention over a KV cache) and its
//! CPU reference.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, PipelineKey, Recorder, Tensor, Work, fold_grid};
use crate::kernels::rope::{Cache, Rows};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    max_len: u32,
    scale: f32,
}

/// out [R, H·d] = attention of the q block of qkv ([R, (H + 2G)·d], the fused projection's
/// output) over the cache ([slots, G, max_len, d]) for the rows' slots and positions (keys
/// 0..=pos). With `lse` ([R, H]) the log-sum-exp of each softmax is written too. Rows must have
/// been stored in the cache (rope_kv) first.
pub fn attention(
    rec: &mut Recorder,
    qkv: &Tensor,
    heads: usize,
    cache: &Cache,
    rows: &Rows,
    out: &Tensor,
    lse: Option<&Tensor>,
) -> Result<()> {
    let op = "attention";
    let (kc, vc) = (cache.k, cache.v);
    let (g, max_len, hd) = cache.dims(op)?;
    let (r, width) = qkv.dims2(op)?;
    if !hd.is_multiple_of(4)
        || !heads.is_multiple_of(g)
        || width != (heads + 2 * g) * hd
        || out.shape() != [r, heads * hd]
    {
        return Err(Error::shape(
            op,
            format!(
                "qkv {:?}, out {:?}: {heads} heads over {g} KV heads of {hd} (a multiple of 4)",
                qkv.shape(),
                out.shape()
            ),
        ));
    }
    rows.check(op, r)?;
    for t in [qkv, out] {
        t.expect_dtype(op, "tensors", &[DType::F32])?;
    }
    let mut defines: Defines = [("HD", hd as u32), ("HD4", hd as u32 / 4)].into_iter().collect();
    let mut binds = vec![
        (1, qkv.into()),
        (2, kc.into()),
        (3, vc.into()),
        (4, rows.pos.into()),
        (5, rows.slot.into()),
        (6, out.into()),
    ];
    if let Some(l) = lse {
        if l.shape() != [r, heads] {
            return Err(Error::shape(op, format!("lse {:?}, expected [{r}, {heads}]", l.shape())));
        }
        defines.insert("LSE", 1);
        binds.push((7, l.into()));
    }
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("attention", "attention", &defines))?;
    let units = (r * heads) as u32;
    let groups = units.div_ceil(64);
    let x = groups.min(1024);
    let grid = fold_grid(rec.gpu(), x, groups.div_ceil(x));
    let params = Params {
        rows: r as u32,
        heads: heads as u32,
        kv_heads: g as u32,
        max_len: max_len as u32,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    // Work depends on the positions (not known here): count a full max_len window per row.
    let work = Work { flops: 4 * (r * heads * hd * max_len) as u64, bytes: 2 * out.bytes() };
    rec.dispatch(pipeline, &params, binds, grid, "attention", work)
}

/// CPU reference for rows (slot, pos) against host caches [slots, G, max_len, d] (f64).
/// Returns (out [R, H·d], lse [R, H]).
#[allow(clippy::too_many_arguments)]
pub fn attention_ref(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    pos: &[u32],
    slot: &[u32],
    heads: usize,
    kv_heads: usize,
    max_len: usize,
    hd: usize,
) -> (Vec<f64>, Vec<f64>) {
    let r = pos.len();
    let mut out = vec![0.0f64; r * heads * hd];
    let mut lse = vec![0.0f64; r * heads];
    let scale = 1.0 / (hd as f64).sqrt();
    for row in 0..r {
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            let qv = &q[(row * heads + h) * hd..][..hd];
            let base = (slot[row] as usize * kv_heads + g) * max_len;
            let n = pos[row] as usize + 1;
            let scores: Vec<f64> = (0..n)
                .map(|t| {
                    let k = &kc[(base + t) * hd..][..hd];
                    qv.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
            lse[row * heads + h] = m + z.ln();
            for (t, s) in scores.iter().enumerate() {
                let p = (s - m).exp() / z;
                let v = &vc[(base + t) * hd..][..hd];
                for i in 0..hd {
                    out[(row * heads + h) * hd + i] += p * v[i] as f64;
                }
            }
        }
    }
    (out, lse)
}
