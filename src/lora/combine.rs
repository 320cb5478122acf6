//! The task-vector combinations of Hugging Face PEFT's merge utilities (`peft.utils.merge_utils`),
//! over flat f64 tensors of one shape: weighted sums (task arithmetic), magnitude pruning,
//! TIES (prune, elect a sign per element, average the agreeing values), DARE (random pruning
//! with rescaling) and their mixes. `fuse` applies them to LoRA factors or to whole deltas.

use crate::error::{Error, Result};
use crate::rng::Rng;

/// How TIES elects the sign of an element across the task tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignMethod {
    /// The sign of the sum of the values.
    Total,
    /// The sign held by more tensors.
    Frequency,
}

impl std::str::FromStr for SignMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "total" => Ok(SignMethod::Total),
            "frequency" => Ok(SignMethod::Frequency),
            _ => Err(Error::Invalid(format!("unknown majority-sign method '{s}' (total or frequency)"))),
        }
    }
}

/// A combination of task tensors, as PEFT names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combination {
    /// Σ wᵢ tᵢ.
    Linear,
    /// Σ wᵢ top-k(tᵢ): each tensor keeps its `density` share of largest magnitudes.
    MagnitudePrune,
    /// Magnitude pruning, a sign elected per element, the weighted values of that sign averaged.
    Ties,
    /// Σ wᵢ mᵢ ⊙ tᵢ / density with Bernoulli(density) masks mᵢ.
    DareLinear,
    /// DARE's random pruning, then TIES' sign election and disjoint mean.
    DareTies,
}

impl Combination {
    pub fn needs_density(self) -> bool {
        self != Combination::Linear
    }
}

/// Keeps the ⌊density·n⌋ entries of largest magnitude (the first of equal ones), zeroes the rest.
fn prune_magnitude(t: &[f64], density: f64) -> Vec<f64> {
    let k = (density * t.len() as f64) as usize;
    let mut order: Vec<usize> = (0..t.len()).collect();
    order.sort_by(|&i, &j| t[j].abs().total_cmp(&t[i].abs()).then(i.cmp(&j)));
    let mut out = vec![0.0; t.len()];
    for &i in &order[..k.min(t.len())] {
        out[i] = t[i];
    }
    out
}

/// Keeps each entry with probability `density`, scaled by 1/density.
fn prune_random(t: &[f64], density: f64, rng: &mut Rng) -> Vec<f64> {
    t.iter().map(|&x| if rng.uniform() < density { x / density } else { 0.0 }).collect()
}

/// PEFT's `prune`: no pruning from density 1 up; below 0 an error.
fn prune(t: &[f64], density: f64, random: Option<&mut Rng>) -> Result<Vec<f64>> {
    if density < 0.0 || density.is_nan() {
        return Err(Error::Invalid(format!("density {density} is below 0")));
    }
    if density >= 1.0 {
        return Ok(t.to_vec());
    }
    Ok(match random {
        Some(rng) => prune_random(t, density, rng),
        None => prune_magnitude(t, density),
    })
}

fn weighted_sum(ts: &[Vec<f64>], w: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; ts[0].len()];
    for (t, &wi) in ts.iter().zip(w) {
        for (o, &x) in out.iter_mut().zip(t) {
            *o += wi * x;
        }
    }
    out
}

/// TIES' election over the (pruned, unweighted) tensors, then the mean of the weighted values
/// that carry the elected sign (zeros carry none), per element.
fn disjoint_merge(ts: &[Vec<f64>], w: &[f64], method: SignMethod) -> Vec<f64> {
    (0..ts[0].len())
        .map(|e| {
            let votes: f64 = ts
                .iter()
                .map(|t| match method {
                    SignMethod::Total => t[e],
                    SignMethod::Frequency => sign(t[e]),
                })
                .sum();
            let elected = if votes >= 0.0 { 1.0 } else { -1.0 };
            let (mut sum, mut count) = (0.0, 0usize);
            for (t, &wi) in ts.iter().zip(w) {
                if sign(t[e]) == elected {
                    sum += wi * t[e];
                    count += 1;
                }
            }
            sum / count.max(1) as f64
        })
        .collect()
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Combines task tensors of one shape with weights `w`. `density` (the share each tensor keeps)
/// is needed by every method but Linear; `rng` draws DARE's masks.
pub fn combine(
    how: Combination,
    ts: &[Vec<f64>],
    w: &[f64],
    density: Option<f64>,
    sign_method: SignMethod,
    rng: &mut Rng,
) -> Result<Vec<f64>> {
    if ts.is_empty() || ts.len() != w.len() || ts.iter().any(|t| t.len() != ts[0].len()) {
        return Err(Error::Invalid("task tensors of different shapes, or weights that do not match them".into()));
    }
    let density = match (how.needs_density(), density) {
        (false, _) => 1.0,
        (true, Some(d)) => d,
        (true, None) => return Err(Error::Invalid(format!("{how:?} needs a density (--density)"))),
    };
    Ok(match how {
        Combination::Linear => weighted_sum(ts, w),
        Combination::MagnitudePrune => {
            weighted_sum(&ts.iter().map(|t| prune(t, density, None)).collect::<Result<Vec<_>>>()?, w)
        }
        Combination::Ties => {
            disjoint_merge(&ts.iter().map(|t| prune(t, density, None)).collect::<Result<Vec<_>>>()?, w, sign_method)
        }
        Combination::DareLinear => {
            weighted_sum(&ts.iter().map(|t| prune(t, density, Some(rng))).collect::<Result<Vec<_>>>()?, w)
        }
        Combination::DareTies => disjoint_merge(
            &ts.iter().map(|t| prune(t, density, Some(rng))).collect::<Result<Vec<_>>>()?,
            w,
            sign_method,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magnitude_keeps_the_largest() {
        assert_eq!(prune_magnitude(&[0.1, -3.0, 2.0, 0.5], 0.5), vec![0.0, -3.0, 2.0, 0.0]);
        assert_eq!(prune_magnitude(&[1.0, 2.0, 3.0], 0.4), vec![0.0, 0.0, 3.0]);
        assert_eq!(prune(&[1.0, 2.0], 1.5, None).unwrap(), vec![1.0, 2.0]);
        assert!(prune(&[1.0], -0.1, None).is_err());
    }

    #[test]
    fn ties_elects_and_averages() {
        // element 0: +2 and -1 by total → +, mean of the positive weighted values
        // element 1: +1, -1, -1 by frequency → -, by total → -
        let ts = vec![vec![2.0, 1.0], vec![-1.0, -1.0], vec![0.0, -1.0]];
        let w = [0.5, 1.0, 2.0];
        let mut rng = Rng::new(0, 0);
        let got = combine(Combination::Ties, &ts, &w, Some(1.0), SignMethod::Total, &mut rng).unwrap();
        assert_eq!(got, vec![1.0, (-1.0 - 2.0) / 2.0]);
        let got = combine(Combination::Ties, &ts, &w, Some(1.0), SignMethod::Frequency, &mut rng).unwrap();
        assert_eq!(got, vec![1.0, -1.5]);
        assert!(combine(Combination::Ties, &ts, &w, None, SignMethod::Total, &mut rng).is_err());
    }
}
