//! 8-bit weights as the texture kernels read them: GGUF's Q8_0, blocks of 32 signed bytes q with
//! one scale d, value = d·q. A Q8_0 tensor (SmolLM2's tied embedding / LM head among them) stays
//! 8-bit and exact on the GPU: 36 bytes a block against 64 for f16, which could not even hold
//! every d·q exactly (an f16 scale times an 8-bit integer needs 19 significant bits).
//!
//! Texture layout (see src/gpu/texture.rs): rgba32uint texels of 16 bytes, texel t of a row
//! holding values 16t..16t+15 in order (word w: values 4w..4w+3, value 4w in the low byte), two
//! texels a block; beside it a rgba32float texture of scales, four blocks a texel.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q8Block {
    pub q: [i8; 32],
    pub d: f32,
}

impl Q8Block {
    pub fn value(&self, i: usize) -> f32 {
        self.d * self.q[i] as f32
    }
}

/// Values of `blocks` (rows × cols/32 blocks, row-major).
pub fn dequantize(blocks: &[Q8Block]) -> Vec<f32> {
    blocks.iter().flat_map(|b| (0..32).map(move |i| b.value(i))).collect()
}

/// Absmax 8-bit quantization of `data` (a multiple of 32 values), ggml's Q8_0 rule (d = amax/127,
/// q = round(x/d)) with d kept in f32: for tests and tuning operands.
pub fn quantize(data: &[f32]) -> Vec<Q8Block> {
    data.chunks(32)
        .map(|c| {
            let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let mut q = [0i8; 32];
            if d > 0.0 {
                for (q, &v) in q.iter_mut().zip(c) {
                    *q = (v / d).round().clamp(-127.0, 127.0) as i8;
                }
            }
            Q8Block { q, d }
        })
        .collect()
}

/// Texel bytes of the two textures for `rows` rows of `blocks_per_row` blocks, each row padded to
/// `width` quant texels (zero blocks: q = d = 0), over `padded_rows` rows.
pub fn texels(
    blocks: &[Q8Block],
    rows: usize,
    blocks_per_row: usize,
    width: usize,
    padded_rows: usize,
) -> (Vec<u8>, Vec<u8>) {
    let scale_width = scale_width(width);
    let mut q = vec![0u8; width * 16 * padded_rows];
    let mut s = vec![0u8; scale_width * 16 * padded_rows];
    for r in 0..rows {
        for b in 0..blocks_per_row {
            let blk = &blocks[r * blocks_per_row + b];
            q[(r * width + 2 * b) * 16..][..32].copy_from_slice(&blk.q.map(|v| v as u8));
            let at = (r * scale_width * 4 + b) * 4;
            s[at..at + 4].copy_from_slice(&blk.d.to_le_bytes());
        }
    }
    (q, s)
}

/// Scale texels a row for `width` quant texels (two a block, four blocks a scale texel).
pub fn scale_width(width: usize) -> usize {
    width.div_ceil(8)
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
        assert!(quantize(&[0.0; 32])[0].q.iter().all(|&q| q == 0));
    }

    #[test]
    fn texels_place_blocks_and_scales() {
        let mut blocks = quantize(&(0..64).map(|i| i as f32 - 31.0).collect::<Vec<_>>());
        blocks[1].d = 0.5;
        let (q, s) = texels(&blocks, 1, 2, 6, 1);
        assert_eq!(q.len(), 6 * 16);
        assert_eq!(s.len(), 16);
        assert_eq!(q[32] as i8, blocks[1].q[0]);
        assert_eq!(q[63] as i8, blocks[1].q[31]);
        assert!(q[64..].iter().all(|&b| b == 0));
        assert_eq!(f32::from_le_bytes(s[4..8].try_into().unwrap()), 0.5);
    }
}
