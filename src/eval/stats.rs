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

/// The exact two-sided McNemar test on paired binary outcomes: `b` pairs where only the first
/// arm has the outcome, `c` where only the second does. Under no difference each discordant pair
/// goes either way with probability 1/2, so p = min(1, 2·P[X ≤ min(b, c)]) for X ~ Bin(b + c, 1/2)
/// (summed in log space: b + c may be in the hundreds).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    let mut log_pk = -(n as f64) * std::f64::consts::LN_2; // P[X = 0]
    let mut logs = Vec::with_capacity(k + 1);
    for i in 0..=k {
        logs.push(log_pk);
        log_pk += ((n - i) as f64 / (i + 1) as f64).ln();
    }
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = top.exp() * logs.iter().map(|l| (l - top).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// Two arms on the same items: how often each had the outcome where the other did not, the
/// difference of their rates, and the exact McNemar p of that difference.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Paired {
    /// Items both arms were scored on.
    pub n: usize,
    pub only_a: usize,
    pub only_b: usize,
    /// rate(a) − rate(b) over the n items.
    pub diff: f64,
    pub p: f64,
}

impl Paired {
    /// Over the items (by id) that `a` and `b` both hold.
    pub fn of(a: &std::collections::BTreeMap<String, bool>, b: &std::collections::BTreeMap<String, bool>) -> Paired {
        let (mut n, mut only_a, mut only_b) = (0, 0, 0);
        for (id, &x) in a {
            if let Some(&y) = b.get(id) {
                n += 1;
                only_a += (x && !y) as usize;
                only_b += (y && !x) as usize;
            }
        }
        let diff = if n == 0 { f64::NAN } else { (only_a as f64 - only_b as f64) / n as f64 };
        Paired { n, only_a, only_b, diff, p: mcnemar_exact(only_a, only_b) }
    }

    /// "+0.120 (15 vs 3 of 100, p 0.0075)".
    pub fn show(&self) -> String {
        if self.n == 0 {
            return "–".into();
        }
        format!("{:+.3} ({} vs {} of {}, p {})", self.diff, self.only_a, self.only_b, self.n, show_p(self.p))
    }
}

fn show_p(p: f64) -> String {
    if p < 1e-4 { format!("{p:.1e}") } else { format!("{p:.4}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_mcnemar_on_known_tables() {
        // 1 against 6 discordant: 2·(C(7,0) + C(7,1)) / 2^7
        assert!((mcnemar_exact(1, 6) - 0.125).abs() < 1e-12);
        assert!((mcnemar_exact(6, 1) - 0.125).abs() < 1e-12);
        // 2 against 12: 2·(1 + 14 + 91) / 2^14
        assert!((mcnemar_exact(2, 12) - 212.0 / 16384.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        // 0 against 10: 2 / 2^10
        assert!((mcnemar_exact(0, 10) - 2.0 / 1024.0).abs() < 1e-15);
        // hundreds of pairs neither underflow nor exceed 1
        let p = mcnemar_exact(200, 300);
        assert!(p > 0.0 && p < 1e-5, "{p}");
        assert_eq!(mcnemar_exact(400, 400), 1.0);
    }

    #[test]
    fn paired_counts_only_shared_items() {
        let m = |v: &[(&str, bool)]| v.iter().map(|(k, b)| (k.to_string(), *b)).collect();
        let a = m(&[("1", true), ("2", true), ("3", false), ("4", true)]);
        let b = m(&[("1", false), ("2", true), ("3", true), ("5", true)]);
        let p = Paired::of(&a, &b);
        assert_eq!((p.n, p.only_a, p.only_b), (3, 1, 1));
        assert_eq!(p.diff, 0.0);
        assert_eq!(p.p, 1.0);
    }

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
