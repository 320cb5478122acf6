//! Launcher for shaders/attention.wgsl (causal grouped-query attention over a KV cache) and its
//! CPU reference.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, Gpu, PipelineKey, Recorder, Tensor, Work, flat_grid, fold_grid};
use crate::kernels::rope::{Cache, RopeTable, Rows, rope_kv};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    max_len: u32,
    scale: f32,
    slots: u32,
}

/// What attention reads: qkv [R, (H + 2G)·d] (the fused projection's output, its q block
/// rotated), the number H of query heads, the cache ([slots, G, max_len, d]) that holds the rows'
/// rotated keys and values (rope_kv stored them), and the rows' slots and positions.
pub struct Attention<'a> {
    pub qkv: &'a Tensor,
    pub heads: usize,
    pub cache: &'a Cache<'a>,
    pub rows: &'a Rows<'a>,
    /// Shared prefixes ([slots, 2] u32: the slot holding slot s's first keys, and how many):
    /// forward only; None, every slot reads its own.
    pub prefix: Option<&'a Tensor>,
    /// Decode rows (each row its slot's only row in the batch, the slot's earlier keys cached):
    /// the rotation and the cache store of rope_kv, done by the attention launch itself where the
    /// variant can (groups, d a multiple of 8), else by a rope_kv launch first. q's block of qkv
    /// may be left rotated or not: nothing may read it after. None: rope_kv ran before.
    pub rope: Option<&'a RopeTable>,
    /// The kernel; None: the launcher's choice (`AttentionVariant::choose`).
    pub variant: Option<AttentionVariant>,
}

/// How the forward kernel spreads the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionVariant {
    /// One invocation per (row, query head), walking that row's keys alone.
    Heads,
    /// One subgroup per (row, KV group): the lanes split the keys, each key read once for the
    /// group's query heads (needs subgroups of a known size).
    Groups,
    /// One subgroup per (block of rows, KV group), flash attention: each key read once for the
    /// block's rows and the group's heads and passed round the lanes (needs subgroups of a known
    /// size; rows in runs of one sequence share, other blocks read their own keys).
    Flash,
}

/// Rows (forward, dQ) and keys (dK, dV) a lane of the flash kernels holds: each shared key or
/// query costs a load and a broadcast round, so more of them a lane means fewer rounds per
/// multiply-add, against more registers and (on lavapipe) minutes of shader compilation: at
/// SmolLM2's sizes, 1 row and 2 keys ran as fast as 2 and 4 and compile in seconds.
const FLASH_ROWS: usize = 1;
const FLASH_KEYS: usize = 2;

impl AttentionVariant {
    pub fn name(self) -> &'static str {
        match self {
            AttentionVariant::Heads => "heads",
            AttentionVariant::Groups => "groups",
            AttentionVariant::Flash => "flash",
        }
    }

    /// The variants this device can run for `heads` over `kv_heads` of `hd`.
    pub fn available(gpu: &Gpu, heads: usize, kv_heads: usize, hd: usize) -> Vec<AttentionVariant> {
        let mut v = vec![AttentionVariant::Heads];
        // the group's queries and accumulators live in registers: (H/G)·d/4 vec4s of each, for
        // each row a lane holds
        if gpu.caps().subgroups && gpu.caps().fixed_subgroup_size.is_some() {
            let group = (heads / kv_heads) * hd;
            if group <= 512 {
                v.push(AttentionVariant::Groups);
            }
            if group * FLASH_ROWS <= 1024 {
                v.push(AttentionVariant::Flash);
            }
        }
        v
    }

    /// For decode rows (each its sequence's only row), Groups: it keeps a SIMD group busy
    /// however few the rows are. For a prefill or a training batch, Flash: a key read once for a
    /// block of rows. Heads where the device has no subgroups.
    pub fn choose(gpu: &Gpu, heads: usize, kv_heads: usize, hd: usize, decode: bool) -> AttentionVariant {
        let have = Self::available(gpu, heads, kv_heads, hd);
        let want = if decode { AttentionVariant::Groups } else { AttentionVariant::Flash };
        if have.contains(&want) { want } else { AttentionVariant::Heads }
    }
}

/// Head counts and size, for the CPU references.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub hd: usize,
}

/// out [R, H·d] = attention of each row's query over the keys 0..=pos of its slot. With `lse`
/// ([R, H]) the log-sum-exp of each softmax is written too.
pub fn attention(rec: &mut Recorder, a: &Attention, out: &Tensor, lse: Option<&Tensor>) -> Result<()> {
    let (qkv, heads, cache, rows) = (a.qkv, a.heads, a.cache, a.rows);
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
    if let Some(pt) = a.prefix {
        let slots = cache.k.shape()[0];
        if pt.shape() != [slots, 2] || pt.dtype() != DType::U32 {
            return Err(Error::shape(op, format!("prefix table {:?}, expected [{slots}, 2] u32", pt.shape())));
        }
        defines.insert("PREFIX", 1);
        binds.push((8, pt.into()));
    }
    let variant = a.variant.unwrap_or_else(|| AttentionVariant::choose(rec.gpu(), heads, g, hd, a.rope.is_some()));
    if !AttentionVariant::available(rec.gpu(), heads, g, hd).contains(&variant) {
        return Err(Error::Unsupported {
            kernel: op.into(),
            variant: variant.name().into(),
            reason: format!(
                "needs subgroups of a known size and at most 512 query values a KV group ({heads} heads over {g} of {hd})"
            ),
        });
    }
    let fuse_rope = a.rope.is_some() && variant == AttentionVariant::Groups && hd.is_multiple_of(8);
    if let Some(table) = a.rope {
        if 2 * table.half != hd {
            return Err(Error::shape(op, format!("a rope table of {} pairs for heads of {hd}", table.half)));
        }
        if fuse_rope {
            defines.insert("ROPE", 1);
            defines.insert("HD4H", hd as u32 / 8);
            binds.push((9, (&table.cos).into()));
            binds.push((10, (&table.sin).into()));
        } else {
            rope_kv(rec, qkv, heads, rows, table, cache)?;
        }
    }
    let sg = rec.gpu().caps().fixed_subgroup_size.unwrap_or(1);
    let (shader, entry, grid) = match variant {
        AttentionVariant::Heads => ("attention", "attention", flat_grid(rec.gpu(), r * heads)),
        AttentionVariant::Groups => {
            defines.insert("GROUPS", 1);
            defines.insert("SG", sg);
            defines.insert("GH", (heads / g) as u32);
            ("attention", "attention_groups", fold_grid(rec.gpu(), 1, (r * g) as u32))
        }
        AttentionVariant::Flash => {
            defines.extend(flash_defines(sg, heads / g, hd));
            defines.insert("FORWARD", 1);
            defines.insert("QR", FLASH_ROWS as u32);
            let blocks = r.div_ceil(sg as usize * FLASH_ROWS);
            ("attention_flash", "attention_flash", fold_grid(rec.gpu(), 1, (blocks * g) as u32))
        }
    };
    let pipeline = rec.gpu().pipeline(&PipelineKey::new(shader, entry, &defines))?;
    let params = Params {
        rows: r as u32,
        heads: heads as u32,
        kv_heads: g as u32,
        max_len: max_len as u32,
        scale: 1.0 / (hd as f32).sqrt(),
        slots: 0,
    };
    // Work depends on the positions (not known here): count a full max_len window per row.
    let work = Work { flops: 4 * (r * heads * hd * max_len) as u64, bytes: 2 * out.bytes() };
    rec.dispatch(pipeline, &params, binds, grid, entry, work)
}

/// The flash kernels' shapes: subgroup size, heads a KV group, d/4 and the vec4s of a d-vector
/// each lane loads before the broadcasts.
fn flash_defines(sg: u32, group: usize, hd: usize) -> Defines {
    let hd4 = hd as u32 / 4;
    [("SG", sg), ("GH", group as u32), ("HD4", hd4), ("KPL", hd4.div_ceil(sg))].into_iter().collect()
}

/// Where each sequence of a training batch sits: its rows are seq_start[s] .. seq_start[s] +
/// seq_len[s], at positions 0 .. seq_len[s] (both [slots] u32).
pub struct Spans<'a> {
    pub start: &'a Tensor,
    pub len: &'a Tensor,
}

/// The forward pass's saved results the backward reads.
pub struct Saved<'a> {
    /// The forward's output O [R, H·d].
    pub out: &'a Tensor,
    /// Its log-sum-exp [R, H].
    pub lse: &'a Tensor,
}

/// Gradients of attention: from dout [R, H·d], writes dq into the q block and dk, dv into the k
/// and v blocks of dqkv [R, (H + 2G)·d] (q, k gradients after RoPE; rope_backward follows).
/// `a` is the forward's input; `dsum` is [R, H] scratch.
pub fn attention_backward(
    rec: &mut Recorder,
    a: &Attention,
    spans: &Spans,
    saved: &Saved,
    dout: &Tensor,
    dqkv: &Tensor,
    dsum: &Tensor,
) -> Result<()> {
    let (qkv, heads, cache, rows) = (a.qkv, a.heads, a.cache, a.rows);
    let op = "attention backward";
    if a.prefix.is_some() {
        return Err(Error::Invalid(format!("{op}: a batch over shared prefixes has no backward")));
    }
    let (g, max_len, hd) = cache.dims(op)?;
    let (r, width) = qkv.dims2(op)?;
    let slots = cache.k.shape()[0];
    if !hd.is_multiple_of(4)
        || !heads.is_multiple_of(g)
        || width != (heads + 2 * g) * hd
        || dqkv.shape() != qkv.shape()
        || saved.out.shape() != [r, heads * hd]
        || dout.shape() != saved.out.shape()
        || saved.lse.shape() != [r, heads]
        || dsum.shape() != [r, heads]
        || spans.start.numel() != slots
        || spans.len.numel() != slots
    {
        return Err(Error::shape(
            op,
            format!(
                "qkv {:?}, dqkv {:?}, out {:?}, dout {:?}, lse {:?}, dsum {:?}, spans of {} slots, for {heads} heads",
                qkv.shape(),
                dqkv.shape(),
                saved.out.shape(),
                dout.shape(),
                saved.lse.shape(),
                dsum.shape(),
                slots
            ),
        ));
    }
    rows.check(op, r)?;
    let params = Params {
        rows: r as u32,
        heads: heads as u32,
        kv_heads: g as u32,
        max_len: max_len as u32,
        scale: 1.0 / (hd as f32).sqrt(),
        slots: slots as u32,
    };
    let work = Work { flops: 6 * (r * heads * hd * max_len) as u64, bytes: 2 * dout.bytes() };
    let variant = a.variant.unwrap_or_else(|| AttentionVariant::choose(rec.gpu(), heads, g, hd, false));
    let dq_binds = vec![
        (1, qkv.into()),
        (2, cache.k.into()),
        (3, cache.v.into()),
        (4, rows.pos.into()),
        (5, rows.slot.into()),
        (6, saved.out.into()),
        (7, saved.lse.into()),
        (8, dout.into()),
        (9, dqkv.into()),
        (10, dsum.into()),
        (11, spans.start.into()),
        (12, spans.len.into()),
    ];
    let dkv_binds = vec![
        (1, qkv.into()),
        (2, cache.k.into()),
        (3, cache.v.into()),
        (7, saved.lse.into()),
        (8, dout.into()),
        (9, dqkv.into()),
        (10, dsum.into()),
        (11, spans.start.into()),
        (12, spans.len.into()),
    ];
    let gpu = rec.gpu().clone();
    if variant == AttentionVariant::Flash {
        if !AttentionVariant::available(&gpu, heads, g, hd).contains(&variant) {
            return Err(Error::Unsupported {
                kernel: op.into(),
                variant: variant.name().into(),
                reason: "needs subgroups of a known size".into(),
            });
        }
        let sg = gpu.caps().fixed_subgroup_size.unwrap_or(1);
        let base = flash_defines(sg, heads / g, hd);
        let per = |lanes: usize| fold_grid(&gpu, 1, (slots * max_len.div_ceil(sg as usize * lanes) * g) as u32);
        // the flash kernels find their rows from the spans, not pos and slot
        let dq_binds: Vec<_> = dq_binds.into_iter().filter(|b| b.0 != 4 && b.0 != 5).collect();
        let mut defines = base.clone();
        defines.extend([("DQ", 1), ("QR", FLASH_ROWS as u32)]);
        let pipeline = gpu.pipeline(&PipelineKey::new("attention_flash", "attention_flash_dq", &defines))?;
        rec.dispatch(pipeline, &params, dq_binds, per(FLASH_ROWS), "attention_flash_dq", work)?;
        let mut defines = base;
        defines.extend([("DKV", 1), ("KR", FLASH_KEYS as u32)]);
        let pipeline = gpu.pipeline(&PipelineKey::new("attention_flash", "attention_flash_dkv", &defines))?;
        return rec.dispatch(pipeline, &params, dkv_binds, per(FLASH_KEYS), "attention_flash_dkv", work);
    }
    let base: Defines = [("HD", hd as u32), ("HD4", hd as u32 / 4)].into_iter().collect();
    let mut defines = base.clone();
    defines.insert("BACKWARD_DQ", 1);
    let pipeline = gpu.pipeline(&PipelineKey::new("attention", "attention_dq", &defines))?;
    let dq_binds: Vec<_> = dq_binds.into_iter().filter(|b| b.0 <= 10).collect();
    rec.dispatch(pipeline, &params, dq_binds, flat_grid(&gpu, r * heads), "attention_dq", work)?;
    let mut defines = base;
    defines.insert("BACKWARD_DKV", 1);
    let pipeline = gpu.pipeline(&PipelineKey::new("attention", "attention_dkv", &defines))?;
    rec.dispatch(pipeline, &params, dkv_binds, flat_grid(&gpu, slots * g * max_len), "attention_dkv", work)
}

/// CPU reference of the backward for sequences laid out as in `Spans` (positions 0..len), with
/// q [R, H·d] (rotated), per-row keys and values k, v [R, G·d] (rotated k), dout [R, H·d]:
/// returns (dq [R, H·d], dk [R, G·d], dv [R, G·d]) in f64.
pub fn attention_backward_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    spans: &[(usize, usize)],
    shape: Heads,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let Heads { heads, kv_heads, hd } = shape;
    let group = heads / kv_heads;
    let scale = 1.0 / (hd as f64).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let at = |x: &[f32], row: usize, head: usize, width: usize| -> Vec<f64> {
        x[(row * width + head) * hd..][..hd].iter().map(|&a| a as f64).collect()
    };
    for &(start, len) in spans {
        for i in 0..len {
            let row = start + i;
            for h in 0..heads {
                let g = h / group;
                let qv = at(q, row, h, heads);
                let dov = at(dout, row, h, heads);
                let s: Vec<f64> = (0..=i)
                    .map(|t| qv.iter().zip(at(k, start + t, g, kv_heads)).map(|(a, b)| a * b).sum::<f64>() * scale)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
                let dp: Vec<f64> =
                    (0..=i).map(|t| dov.iter().zip(at(v, start + t, g, kv_heads)).map(|(a, b)| a * b).sum()).collect();
                let dsum: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for t in 0..=i {
                    let ds = p[t] * (dp[t] - dsum);
                    let kt = at(k, start + t, g, kv_heads);
                    for e in 0..hd {
                        dq[(row * heads + h) * hd + e] += ds * kt[e] * scale;
                        dk[((start + t) * kv_heads + g) * hd + e] += ds * qv[e] * scale;
                        dv[((start + t) * kv_heads + g) * hd + e] += p[t] * dov[e];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// CPU reference of causal attention over whole sequences laid out as in `Spans` (positions
/// 0..len), with per-row q [R, H·d] (rotated), k, v [R, G·d] (rotated k): out [R, H·d] in f64.
pub fn attention_causal_ref(q: &[f32], k: &[f32], v: &[f32], spans: &[(usize, usize)], shape: Heads) -> Vec<f64> {
    let max_len = spans.iter().map(|s| s.1).max().unwrap_or(1);
    let (kv, hd) = (shape.kv_heads, shape.hd);
    let mut kc = vec![0f32; spans.len() * kv * max_len * hd];
    let mut vc = kc.clone();
    let (mut pos, mut slot) = (Vec::new(), Vec::new());
    for (s, &(start, len)) in spans.iter().enumerate() {
        for t in 0..len {
            for g in 0..kv {
                let dst = ((s * kv + g) * max_len + t) * hd;
                let src = ((start + t) * kv + g) * hd;
                kc[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                vc[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
            }
            pos.push(t as u32);
            slot.push(s as u32);
        }
    }
    attention_ref(q, &kc, &vc, (&pos, &slot), shape, max_len).0
}

/// CPU reference for rows (pos, slot) against host caches [slots, G, max_len, d] (f64).
/// Returns (out [R, H·d], lse [R, H]).
pub fn attention_ref(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    rows: (&[u32], &[u32]),
    shape: Heads,
    max_len: usize,
) -> (Vec<f64>, Vec<f64>) {
    let ((pos, slot), Heads { heads, kv_heads, hd }) = (rows, shape);
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
