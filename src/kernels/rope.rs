//! Launcher for shaders/rope.wgsl (RoPE fused with the KV-cache store) and its CPU reference.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, Gpu, PipelineKey, Recorder, Tensor, Work, fold_grid};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    hd: u32,
    max_len: u32,
}

/// cos(p·θᵢ) and sin(p·θᵢ) for positions 0..positions, computed in f64 and stored f32
/// ([positions, d/2] each): exact angles at any position, no GPU trigonometry.
pub struct RopeTable {
    pub cos: Tensor,
    pub sin: Tensor,
    pub positions: usize,
    pub half: usize,
}

impl RopeTable {
    pub fn new(gpu: &Gpu, inv_freq: &[f64], positions: usize) -> Result<RopeTable> {
        let (cos, sin) = rope_angles(inv_freq, positions);
        let half = inv_freq.len();
        Ok(RopeTable {
            cos: Tensor::from_f32(gpu, &[positions, half], &cos, "rope cos")?,
            sin: Tensor::from_f32(gpu, &[positions, half], &sin, "rope sin")?,
            positions,
            half,
        })
    }
}

/// The host tables: (cos, sin), each [positions, d/2] row-major.
pub fn rope_angles(inv_freq: &[f64], positions: usize) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(positions * inv_freq.len());
    let mut sin = Vec::with_capacity(positions * inv_freq.len());
    for p in 0..positions {
        for &f in inv_freq {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

/// Where a batch's rows belong: `pos[r]` and `slot[r]` ([R] u32 each).
pub struct Rows<'a> {
    pub pos: &'a Tensor,
    pub slot: &'a Tensor,
}

/// One layer's KV cache: k and v, each [slots, kv_heads, max_len, head_dim] f32.
pub struct Cache<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
}

impl Cache<'_> {
    /// (kv_heads, max_len, head_dim), checked.
    pub(crate) fn dims(&self, op: &str) -> Result<(usize, usize, usize)> {
        match *self.k.shape() {
            [_, g, max_len, hd] if self.v.shape() == self.k.shape() => {
                for t in [self.k, self.v] {
                    t.expect_dtype(op, "cache", &[DType::F32])?;
                }
                Ok((g, max_len, hd))
            }
            _ => Err(Error::shape(
                op,
                format!(
                    "caches {:?}/{:?} are not [slots, kv_heads, max_len, head_dim]",
                    self.k.shape(),
                    self.v.shape()
                ),
            )),
        }
    }
}

impl Rows<'_> {
    /// Checks that there is a position and a slot for each of `r` rows.
    pub(crate) fn check(&self, op: &str, r: usize) -> Result<()> {
        if self.pos.numel() != r || self.slot.numel() != r {
            return Err(Error::shape(
                op,
                format!("{r} rows but {} positions and {} slots", self.pos.numel(), self.slot.numel()),
            ));
        }
        Ok(())
    }
}

/// qkv [R, (H + 2G)·d] holds q, k and v side by side (the fused projection's output). Rotates q
/// in place; rotates k and stores it with v into the cache at (slot[r], ·, pos[r]). Positions
/// must be < table.positions and < max_len (checked by the caller).
pub fn rope_kv(
    rec: &mut Recorder,
    qkv: &Tensor,
    heads: usize,
    rows: &Rows,
    table: &RopeTable,
    cache: &Cache,
) -> Result<()> {
    let op = "rope_kv";
    let (kc, vc) = (cache.k, cache.v);
    let hd = 2 * table.half;
    let (r, width) = qkv.dims2(op)?;
    let (g, max_len, d) = cache.dims(op)?;
    if width != (heads + 2 * g) * hd || d != hd {
        return Err(Error::shape(op, format!("qkv {:?} for {heads} heads and {g} KV heads of {hd}", qkv.shape())));
    }
    rows.check(op, r)?;
    qkv.expect_dtype(op, "qkv", &[DType::F32])?;
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("rope", "rope_kv", &Defines::new()))?;
    let units = (heads + g) as u32;
    let grid = fold_grid(rec.gpu(), units.div_ceil(64), r as u32);
    let params =
        Params { rows: r as u32, heads: heads as u32, kv_heads: g as u32, hd: hd as u32, max_len: max_len as u32 };
    let work = Work { flops: 3 * (r * (heads + g) * hd) as u64, bytes: 2 * qkv.bytes() };
    let binds = vec![
        (1, qkv.into()),
        (4, rows.pos.into()),
        (5, rows.slot.into()),
        (6, (&table.cos).into()),
        (7, (&table.sin).into()),
        (8, kc.into()),
        (9, vc.into()),
    ];
    rec.dispatch(pipeline, &params, binds, grid, "rope_kv", work)
}

/// In place in dqkv [R, (H + 2G)·d]: the gradients of q and k after rotation become those before
/// it (v's block is left alone).
pub fn rope_backward(
    rec: &mut Recorder,
    dqkv: &Tensor,
    heads: usize,
    kv_heads: usize,
    pos: &Tensor,
    table: &RopeTable,
) -> Result<()> {
    let op = "rope backward";
    let hd = 2 * table.half;
    let (r, width) = dqkv.dims2(op)?;
    if width != (heads + 2 * kv_heads) * hd || pos.numel() != r {
        return Err(Error::shape(
            op,
            format!("dqkv {:?} for {heads}+2·{kv_heads} heads of {hd}, {} positions", dqkv.shape(), pos.numel()),
        ));
    }
    dqkv.expect_dtype(op, "dqkv", &[DType::F32])?;
    let defines: Defines = [("BACKWARD", 1)].into_iter().collect();
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("rope", "rope_backward", &defines))?;
    let units = (heads + kv_heads) as u32;
    let grid = fold_grid(rec.gpu(), units.div_ceil(64), r as u32);
    let params = Params { rows: r as u32, heads: heads as u32, kv_heads: kv_heads as u32, hd: hd as u32, max_len: 0 };
    let work = Work { flops: 3 * (r * (heads + kv_heads) * hd) as u64, bytes: 2 * dqkv.bytes() };
    let binds = vec![(1, dqkv.into()), (4, pos.into()), (6, (&table.cos).into()), (7, (&table.sin).into())];
    rec.dispatch(pipeline, &params, binds, grid, "rope_backward", work)
}

/// CPU reference: x [R, heads·d] rotated at positions `pos` (f64).
pub fn rope_ref(x: &[f32], heads: usize, hd: usize, pos: &[u32], inv_freq: &[f64]) -> Vec<f64> {
    let half = hd / 2;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (r, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let b = (r * heads + h) * hd;
            for i in 0..half {
                let a = p as f64 * inv_freq[i];
                let (s, c) = a.sin_cos();
                let (x1, x2) = (x[b + i] as f64, x[b + i + half] as f64);
                out[b + i] = x1 * c - x2 * s;
                out[b + i + half] = x2 * c + x1 * s;
            }
        }
    }
    out
}
