//! 4-bit weights as the texture kernels read them: blocks of 32 values, value = d·q + m with q a
//! nibble and (d, m) in f32. Q4_0, Q4_1 and Q4_K weights convert into it exactly (Q4_K's per-
//! sub-block scale d·sc and offset −dmin·mn are exact products in f32), so a GGUF file's 4-bit
//! tensors stay 4-bit on the GPU: 24 bytes a block against 64 for f16.
//!
//! Texture layout (see src/gpu/texture.rs): a rgba32uint texel per block holding its 16 bytes of
//! nibbles in GGUF order (byte b: value b low, value b+16 high), and a rgba32float texture of
//! (d, m) pairs, two blocks a texel.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q4Block {
    pub nibbles: [u8; 16],
    pub d: f32,
    pub m: f32,
}

impl Q4Block {
    pub fn value(&self, i: usize) -> f32 {
        let q = if i < 16 { self.nibbles[i] & 0xF } else { self.nibbles[i - 16] >> 4 };
        self.d * q as f32 + self.m
    }
}

/// Values of `blocks` (rows × cols/32 blocks, row-major).
pub fn dequantize(blocks: &[Q4Block]) -> Vec<f32> {
    blocks.iter().flat_map(|b| (0..32).map(move |i| b.value(i))).collect()
}

/// Min/max 4-bit quantization of `data` ([rows, cols], cols a multiple of 32), for tests and
/// tuning operands (models bring their own quantization).
pub fn quantize(data: &[f32]) -> Vec<Q4Block> {
    data.chunks(32)
        .map(|c| {
            let lo = c.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = c.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let d = if hi > lo { (hi - lo) / 15.0 } else { 0.0 };
            let q = |v: f32| if d > 0.0 { ((v - lo) / d).round().clamp(0.0, 15.0) as u8 } else { 0 };
            let mut nibbles = [0u8; 16];
            for (b, n) in nibbles.iter_mut().enumerate() {
                *n = q(c[b]) | (q(c[b + 16]) << 4);
            }
            Q4Block { nibbles, d, m: lo }
        })
        .collect()
}

/// Texel bytes of the two textures for `rows` rows of `blocks_per_row` blocks, each row padded
/// to `width` quant texels (zero blocks: d = m = 0), over `padded_rows` rows.
pub fn texels(
    blocks: &[Q4Block],
    rows: usize,
    blocks_per_row: usize,
    width: usize,
    padded_rows: usize,
) -> (Vec<u8>, Vec<u8>) {
    let scale_width = width.div_ceil(2);
    let mut q = vec![0u8; width * 16 * padded_rows];
    let mut s = vec![0u8; scale_width * 16 * padded_rows];
    for r in 0..rows {
        for b in 0..blocks_per_row {
            let blk = &blocks[r * blocks_per_row + b];
            q[(r * width + b) * 16..][..16].copy_from_slice(&blk.nibbles);
            let at = (r * scale_width * 2 + b) * 8;
            s[at..at + 4].copy_from_slice(&blk.d.to_le_bytes());
            s[at + 4..at + 8].copy_from_slice(&blk.m.to_le_bytes());
        }
    }
    (q, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_round_trips_within_half_a_step() {
        let data: Vec<f32> = (0..64).map(|i| ((i * 37) % 23) as f32 * 0.1 - 1.0).collect();
        let blocks = quantize(&data);
        for (i, (&x, y)) in data.iter().zip(dequantize(&blocks)).enumerate() {
            let step = blocks[i / 32].d;
            assert!((x - y).abs() <= step / 2.0 + 1e-6, "value {i}: {x} vs {y}");
        }
    }
}
