//! Proportions with their 95% intervals: every rate in a report comes with its count, so a
//! reader sees what 20 prompts can and cannot support.

use serde::Serialize;

/// k of n, with the Wilson score interval at 95% (sensible at 0, n and small n, unlike the
/// normal approximation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Proportion {
    pub k: usize,
    pub n: usize,
    pub rate: f64,
    pub lo: f64,
    pub hi: f64,
}

const Z95: f64 = 1.959_963_984_540_054;

impl Proportion {
    pub fn new(k: usize, n: usize) -> Proportion {
        if n == 0 {
            return Proportion { k, n, rate: f64::NAN, lo: f64::NAN, hi: f64::NAN };
        }
        let (kf, nf) = (k as f64, n as f64);
        let p = kf / nf;
        let z2 = Z95 * Z95;
        let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
        let half = Z95 / (1.0 + z2 / nf) * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
        Proportion { k, n, rate: p, lo: (centre - half).max(0.0), hi: (centre + half).min(1.0) }
    }

    /// "0.420 [0.330, 0.515] (42/100)".
    pub fn show(&self) -> String {
        if self.n == 0 {
            return "– (0 prompts)".into();
        }
        format!("{:.3} [{:.3}, {:.3}] ({}/{})", self.rate, self.lo, self.hi, self.k, self.n)
    }
}

/// The mean of values with a 95% normal interval (mean ± 1.96 s/√n).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Mean {
    pub n: usize,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Mean {
    pub fn of(values: &[f64]) -> Mean {
        let n = values.len();
        if n == 0 {
            return Mean { n, mean: f64::NAN, lo: f64::NAN, hi: f64::NAN };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        let half = Z95 * (var / n as f64).sqrt();
        Mean { n, mean, lo: mean - half, hi: mean + half }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_intervals() {
        // the textbook case: 42 of 100
        let p = Proportion::new(42, 100);
        assert!((p.lo - 0.3280).abs() < 5e-4 && (p.hi - 0.5178).abs() < 5e-4, "{p:?}");
        let zero = Proportion::new(0, 20);
        assert_eq!(zero.lo, 0.0);
        assert!((zero.hi - 0.1611).abs() < 5e-4, "{zero:?}");
        let all = Proportion::new(20, 20);
        assert!(all.hi == 1.0 && (all.lo - 0.8389).abs() < 5e-4, "{all:?}");
        assert!(Proportion::new(0, 0).rate.is_nan());
        assert_eq!(Proportion::new(1, 4).show(), "0.250 [0.046, 0.699] (1/4)");
    }

    #[test]
    fn means() {
        let m = Mean::of(&[1.0, 2.0, 3.0]);
        assert_eq!(m.mean, 2.0);
        assert!((m.hi - m.mean - 1.96 / 3f64.sqrt()).abs() < 1e-3);
    }
}
