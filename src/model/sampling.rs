//! Next-token choice: greedy, or seeded temperature / top-k / top-p sampling. Each sequence
//! owns its random stream (seeded from the run's seed and the prompt itself), so a prompt
//! samples the same tokens alone or inside any batch.

pub use crate::rng::Rng;

#[derive(Clone, Copy, Debug)]
pub struct SamplingOptions {
    /// 0 is greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

/// The index of the largest logit (the first of equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws the next token from `logits` under `opts`.
pub fn sample(logits: &[f32], opts: &SamplingOptions, rng: &mut Rng) -> u32 {
    if opts.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b)));
    if opts.top_k > 0 {
        idx.truncate(opts.top_k);
    }
    let t = opts.temperature as f64;
    let m = logits[idx[0] as usize] as f64;
    let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i as usize] as f64 - m) / t).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if opts.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                acc += p;
                acc >= opts.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
    }
    let r = rng.uniform();
    let mut acc = 0.0;
    for (p, &i) in probs.iter().zip(&idx) {
        acc += p;
        if r < acc {
            return i;
        }
    }
    idx[probs.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(sample(&[0.1, 3.0, 3.0], &SamplingOptions::default(), &mut Rng::new(0, 0)), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_draw() {
        let logits = [5.0, 4.0, 0.0, -1.0, 3.9];
        let k2 = SamplingOptions { temperature: 1.0, top_k: 2, ..Default::default() };
        let p = SamplingOptions { temperature: 1.0, top_p: 0.5, ..Default::default() };
        let mut rng = Rng::new(7, 0);
        for _ in 0..200 {
            assert!([0, 1].contains(&sample(&logits, &k2, &mut rng)));
            assert_eq!(sample(&logits, &p, &mut rng), 0, "token 0 alone holds over half the mass");
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [1.0f32, 0.0, (0.5f32).ln() + 0.0];
        let opts = SamplingOptions { temperature: 1.0, ..Default::default() };
        let mut rng = Rng::new(3, 1);
        let mut counts = [0usize; 3];
        let n = 20_000;
        for _ in 0..n {
            counts[sample(&logits, &opts, &mut rng) as usize] += 1;
        }
        let z = 1f64.exp() + 1.0 + 0.5;
        for (i, want) in [1f64.exp() / z, 1.0 / z, 0.5 / z].iter().enumerate() {
            let got = counts[i] as f64 / n as f64;
            assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(5, 2).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::new(5, 2).next_u64(), Rng::new(5, 3).next_u64());
    }
}
