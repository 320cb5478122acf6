//! GGML tensor element types and their CPU dequantization (the reference every GPU path is
//! checked against). Block layouts follow llama.cpp's ggml-common.h; all multi-byte fields are
//! little-endian and f16 scales are IEEE binary16.
//!
//! | type | values/block | bytes/block | value                                                    |
//! |------|--------------|-------------|----------------------------------------------------------|
//! | Q8_0 | 32           | 34          | d·q, q int8                                              |
//! | Q4_0 | 32           | 18          | d·(q−8); low nibbles are elements 0..15, high 16..31      |
//! | Q4_1 | 32           | 20          | d·q + m; nibble order as Q4_0                             |
//! | Q4_K | 256          | 144         | 8 sub-blocks of 32: d·sc·q − dmin·mn, 6-bit sc/mn packed |
//! | Q6_K | 256          | 210         | 16 sub-blocks of 16: d·sc·(q−32), q 4 low + 2 high bits  |

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::gpu::q4::Q4Block;
use crate::gpu::q8::Q8Block;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
    /// A type this loader does not read (its GGML id).
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::BF16 => "BF16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Other(id) => format!("GGML type {id}"),
        }
    }

    /// (values per block, bytes per block); None for types this loader does not read.
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q6K => (256, 210),
            GgmlType::Other(_) => return None,
        })
    }

    /// Bytes of `n` values, or an error when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: u64) -> Result<u64> {
        let (per, bytes) =
            self.block().ok_or_else(|| Error::Invalid(format!("unsupported tensor type {}", self.name())))?;
        if !n.is_multiple_of(per as u64) {
            return Err(Error::Invalid(format!("{n} values is not a whole number of {} blocks of {per}", self.name())));
        }
        Ok(n / per as u64 * bytes as u64)
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `n` values of type `ty` from `bytes` (which must hold exactly that many).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let want = ty.bytes_for(n as u64)? as usize;
    if bytes.len() != want {
        return Err(Error::Invalid(format!("{} bytes for {n} {} values, expected {want}", bytes.len(), ty.name())));
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = half_at(b, 0);
                out.extend(b[2..].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = half_at(b, 0);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| d * ((q & 0xF) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0xF) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Q4K => {
            for b in bytes.chunks_exact(144) {
                dequantize_q4k_block(b, &mut out);
            }
        }
        GgmlType::Q6K => {
            for b in bytes.chunks_exact(210) {
                dequantize_q6k_block(b, &mut out);
            }
        }
        GgmlType::Other(_) => unreachable!("rejected by bytes_for"),
    }
    Ok(out)
}

/// Scale and min of sub-block `j` (0..8) from Q4_K's 12 packed bytes: sub-blocks 0..3 keep
/// 6 bits in bytes j and j+4; sub-blocks 4..7 keep their low 4 bits in byte j+4 (scale low
/// nibble, min high nibble) and their high 2 bits in the top bits of bytes j−4 and j.
pub fn q4k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
}

/// One Q4_K block: d, dmin (f16), 12 bytes of scales/mins, 128 bytes of nibbles. Each 32 bytes of
/// nibbles hold two sub-blocks: low nibbles the first 32 values, high nibbles the next 32.
fn dequantize_q4k_block(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for pair in 0..4 {
        let q = &qs[pair * 32..pair * 32 + 32];
        let (s0, m0) = q4k_scale_min(scales, 2 * pair);
        let (s1, m1) = q4k_scale_min(scales, 2 * pair + 1);
        let (d0, mn0) = (d * s0 as f32, dmin * m0 as f32);
        let (d1, mn1) = (d * s1 as f32, dmin * m1 as f32);
        out.extend(q.iter().map(|&v| d0 * (v & 0xF) as f32 - mn0));
        out.extend(q.iter().map(|&v| d1 * (v >> 4) as f32 - mn1));
    }
}

/// One Q6_K block: 128 bytes of low nibbles (ql), 64 bytes of 2-bit highs (qh), 16 int8 scales,
/// d (f16). Each half of 128 values uses 64 bytes of ql and 32 of qh: value l + 32·k (k = 0..3)
/// takes ql[l] or ql[l + 32] (low or high nibble) and bits 2k..2k+1 of qh[l].
fn dequantize_q6k_block(b: &[u8], out: &mut Vec<f32>) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let sc = &b[192..208];
    let d = half_at(b, 208);
    for half in 0..2 {
        let ql = &ql[half * 64..half * 64 + 64];
        let qh = &qh[half * 32..half * 32 + 32];
        let sc = &sc[half * 8..half * 8 + 8];
        let mut vals = [0.0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            vals[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            vals[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            vals[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            vals[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
        out.extend_from_slice(&vals);
    }
}

/// The 4-bit GPU blocks (src/gpu/q4.rs) of a Q4_0, Q4_1 or Q4_K tensor of `n` values; None for
/// other types. Exact: every value dequantizes to what `dequantize` gives.
pub fn to_q4_blocks(ty: GgmlType, bytes: &[u8], n: usize) -> Option<Result<Vec<Q4Block>>> {
    if !matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K) {
        return None;
    }
    if let Err(e) = check_len(ty, bytes, n) {
        return Some(Err(e));
    }
    let nib16 = |q: &[u8]| -> [u8; 16] { q.try_into().expect("16 bytes of nibbles") };
    Some(Ok(match ty {
        GgmlType::Q4_0 => bytes
            .chunks_exact(18)
            .map(|b| {
                let d = half_at(b, 0);
                Q4Block { nibbles: nib16(&b[2..18]), d, m: -8.0 * d }
            })
            .collect(),
        GgmlType::Q4_1 => bytes
            .chunks_exact(20)
            .map(|b| Q4Block { nibbles: nib16(&b[4..20]), d: half_at(b, 0), m: half_at(b, 2) })
            .collect(),
        _ => bytes
            .chunks_exact(144)
            .flat_map(|b| {
                let (d, dmin) = (half_at(b, 0), half_at(b, 2));
                let (scales, qs) = (&b[4..16], &b[16..144]);
                (0..8).map(move |j| {
                    // sub-block j: low (even j) or high (odd j) nibbles of 32 bytes, re-packed in
                    // Q4_1 order (byte i: value i low, value i+16 high)
                    let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                    let v = |i: usize| if j % 2 == 0 { bytes[i] & 0xF } else { bytes[i] >> 4 };
                    let mut nibbles = [0u8; 16];
                    for (i, x) in nibbles.iter_mut().enumerate() {
                        *x = v(i) | (v(i + 16) << 4);
                    }
                    let (sc, mn) = q4k_scale_min(scales, j);
                    Q4Block { nibbles, d: d * sc as f32, m: -(dmin * mn as f32) }
                })
            })
            .collect(),
    }))
}

/// The 8-bit GPU blocks (src/gpu/q8.rs) of a Q8_0 tensor of `n` values; None for other types.
/// Exact: the f16 scale widens to f32, every d·q as `dequantize` gives it.
pub fn to_q8_blocks(ty: GgmlType, bytes: &[u8], n: usize) -> Option<Result<Vec<Q8Block>>> {
    if ty != GgmlType::Q8_0 {
        return None;
    }
    if let Err(e) = check_len(ty, bytes, n) {
        return Some(Err(e));
    }
    Some(Ok(bytes
        .chunks_exact(34)
        .map(|b| Q8Block { q: std::array::from_fn(|i| b[2 + i] as i8), d: half_at(b, 0) })
        .collect()))
}

/// `values` (a whole number of blocks) as GGML type `ty`, by ggml's reference rules
/// (ggml-quants.c `quantize_row_*_ref`; f16 round to nearest even): F32, F16, Q8_0 (d = amax/127,
/// q = round(x/d)), Q4_0 (d = the largest-magnitude value / −8, q = min(15, trunc(x/d + 8.5))),
/// Q4_1 (d = (max − min)/15, m = min, q = min(15, trunc((x − m)/d + 0.5))). The inverse of
/// `dequantize` up to the rounding. Non-finite values are an error (a block would be all NaN).
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!("value {i} is {}, which {} cannot hold", values[i], ty.name())));
    }
    ty.bytes_for(values.len() as u64)?;
    let inv = |d: f32| if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = Vec::with_capacity(ty.bytes_for(values.len() as u64)? as usize);
    match ty {
        GgmlType::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        GgmlType::F16 => out.extend(values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for c in values.chunks_exact(32) {
                let d = c.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                let id = inv(d);
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(c.iter().map(|&x| (x * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for c in values.chunks_exact(32) {
                // the first value of the largest magnitude, sign kept
                let max = c.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = inv(d);
                let q = |x: f32| ((x * id + 8.5) as i8).min(15) as u8;
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend((0..16).map(|j| q(c[j]) | (q(c[j + 16]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for c in values.chunks_exact(32) {
                let min = c.iter().cloned().fold(f32::INFINITY, f32::min);
                let max = c.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = inv(d);
                let q = |x: f32| (((x - min) * id + 0.5) as i8).min(15) as u8;
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(min).to_le_bytes());
                out.extend((0..16).map(|j| q(c[j]) | (q(c[j + 16]) << 4)));
            }
        }
        _ => return Err(Error::Invalid(format!("lorafuse writes f32, f16, q8_0, q4_0 and q4_1, not {}", ty.name()))),
    }
    Ok(out)
}

fn check_len(ty: GgmlType, bytes: &[u8], n: usize) -> Result<()> {
    let want = ty.bytes_for(n as u64)? as usize;
    if bytes.len() != want {
        return Err(Error::Invalid(format!("{} bytes for {n} {} values, expected {want}", bytes.len(), ty.name())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q8_0_and_q4_blocks() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(v[0], -8.0);
        assert_eq!(v[31], 7.5);

        let mut b = h(2.0).to_vec();
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let v = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(&v[..3], &[-16.0, -14.0, -12.0]); // low nibbles 0,1,2 → (q-8)·2
        assert_eq!(v[16], 14.0); // high nibble of byte 0 is 15

        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|i| i | (3 << 4)));
        let v = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(v[5], 0.25 * 5.0 - 1.0);
        assert_eq!(v[20], 0.25 * 3.0 - 1.0);
    }

    /// A Q4_K block whose sub-block j has scale j+1 and min 2j (6-bit packing of both halves),
    /// every nibble equal to its sub-block index.
    #[test]
    fn q4k_packing_and_order() {
        let sc: Vec<u8> = (0..8).map(|j| j as u8 + 1 + 40).collect(); // > 15 exercises the high bits
        let mn: Vec<u8> = (0..8).map(|j| 2 * j as u8 + 33).collect();
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            packed[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            packed[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
        for j in 0..8 {
            assert_eq!(q4k_scale_min(&packed, j), (sc[j], mn[j]), "sub-block {j}");
        }
        let mut b = h(0.5).to_vec();
        b.extend(h(0.125));
        b.extend(packed);
        for pair in 0..4u8 {
            b.extend(std::iter::repeat_n((2 * pair) | ((2 * pair + 1) << 4), 32));
        }
        let v = dequantize(GgmlType::Q4K, &b, 256).unwrap();
        for (i, x) in v.iter().enumerate() {
            let j = i / 32;
            let want = 0.5 * sc[j] as f32 * j as f32 - 0.125 * mn[j] as f32;
            assert_eq!(*x, want, "value {i}");
        }
    }

    /// A Q6_K block whose value i is (i mod 64) − 32 before scaling, with scale s of its
    /// 16-value sub-block equal to s+1: checks the ql/qh bit layout and the value order.
    #[test]
    fn q6k_packing_and_order() {
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for i in 0..256 {
            let q = (i % 64) as u8; // 6-bit value
            let (half, r) = (i / 128, i % 128);
            let (k, l) = (r / 32, r % 32);
            let ql_i = half * 64 + l + if k % 2 == 1 { 32 } else { 0 };
            if k < 2 {
                ql[ql_i] |= q & 0xF;
            } else {
                ql[ql_i] |= (q & 0xF) << 4;
            }
            qh[half * 32 + l] |= (q >> 4) << (2 * k);
        }
        let mut b = ql.to_vec();
        b.extend(qh);
        b.extend((0..16).map(|s| (s + 1) as u8));
        b.extend(h(0.5));
        let v = dequantize(GgmlType::Q6K, &b, 256).unwrap();
        for (i, x) in v.iter().enumerate() {
            let want = 0.5 * (i / 16 + 1) as f32 * ((i % 64) as f32 - 32.0);
            assert_eq!(*x, want, "value {i}");
        }
    }

    /// Random blocks of every 4-bit type convert to GPU blocks that dequantize to the same values.
    #[test]
    fn four_bit_types_convert_exactly() {
        let mut s = 7u64;
        let mut byte = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        };
        for (ty, per, size) in [(GgmlType::Q4_0, 32, 18), (GgmlType::Q4_1, 32, 20), (GgmlType::Q4K, 256, 144)] {
            let blocks = 3;
            let mut b: Vec<u8> = (0..blocks * size).map(|_| byte()).collect();
            // finite f16 scales: clear the exponent's top bit of every f16 field
            for blk in b.chunks_mut(size) {
                for off in [0usize, 2] {
                    if off < 4 && (ty != GgmlType::Q4_0 || off == 0) {
                        blk[off + 1] &= 0x3B;
                    }
                }
            }
            let n = blocks * per;
            let want = dequantize(ty, &b, n).unwrap();
            let got = crate::gpu::q4::dequantize(&to_q4_blocks(ty, &b, n).unwrap().unwrap());
            assert_eq!(got, want, "{}", ty.name());
        }
        assert!(to_q4_blocks(GgmlType::Q8_0, &[0; 34], 32).is_none());
    }

    #[test]
    fn q8_blocks_are_exact() {
        let mut b = Vec::new();
        for blk in 0..3u8 {
            b.extend(h(0.013 * (blk as f32 + 1.0)));
            b.extend((0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(blk)));
        }
        let want = dequantize(GgmlType::Q8_0, &b, 96).unwrap();
        let got = crate::gpu::q8::dequantize(&to_q8_blocks(GgmlType::Q8_0, &b, 96).unwrap().unwrap());
        assert_eq!(got, want);
        assert!(to_q8_blocks(GgmlType::Q8_0, &b[..100], 96).unwrap().is_err());
        assert!(to_q8_blocks(GgmlType::Q4_1, &[0; 20], 32).is_none());
    }

    #[test]
    fn quantize_is_the_inverse_of_dequantize_up_to_rounding() {
        let mut x = 0x9E3779B9u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as f32 / u32::MAX as f32 * 2.0 - 1.0
        };
        let mut v: Vec<f32> = (0..32 * 7).map(|_| next() * 3.0).collect();
        v[64..96].fill(0.0); // an all-zero block
        v[100] = -9.5; // a block whose largest magnitude is negative
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let bytes = quantize(ty, &v).unwrap();
            let back = dequantize(ty, &bytes, v.len()).unwrap();
            for (b, (c, d)) in v.chunks(32).zip(back.chunks(32)).enumerate() {
                let amax = c.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let range = c.iter().cloned().fold(f32::MIN, f32::max) - c.iter().cloned().fold(f32::MAX, f32::min);
                // half a step, and the f16 rounding of the scale (and offset) on top
                let step = match ty {
                    GgmlType::F32 => 0.0,
                    GgmlType::F16 => amax / 2048.0,
                    GgmlType::Q8_0 => amax / 127.0 * 0.5 + amax / 1024.0,
                    GgmlType::Q4_0 => amax / 8.0 + amax / 512.0,
                    _ => range / 15.0 * 0.5 + amax / 512.0,
                };
                for (i, (x, y)) in c.iter().zip(d).enumerate() {
                    assert!((x - y).abs() <= step, "{} block {b} value {i}: {x} -> {y} (step {step})", ty.name());
                }
            }
            assert!(back[64..96].iter().all(|&y| y == 0.0), "{}: zeros stay zero", ty.name());
        }
        // Q4_0's largest-magnitude value maps to q = 0: −8·d, exact up to d's f16 rounding
        let b = quantize(GgmlType::Q4_0, &v[96..128]).unwrap();
        assert_eq!(dequantize(GgmlType::Q4_0, &b, 32).unwrap()[4], f16::from_f32(-9.5 / -8.0).to_f32() * -8.0);
        assert!(quantize(GgmlType::Q8_0, &[f32::NAN; 32]).is_err());
        assert!(quantize(GgmlType::Q4_1, &[0.0; 31]).is_err());
        assert!(quantize(GgmlType::Q4K, &[0.0; 256]).is_err());
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(dequantize(GgmlType::Q4_1, &[0; 19], 32).is_err());
        assert!(dequantize(GgmlType::Q4_1, &[0; 20], 31).is_err());
        assert!(dequantize(GgmlType::Other(23), &[0; 20], 32).is_err());
    }
}
