//! Learning-rate schedules, as functions of the optimizer step (no state: a resumed run gets
//! the same rates as an uninterrupted one).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// PyTorch's StepLR stepped once an epoch: lr · γ^epoch (the paper's recipe, γ = 0.85).
    Step,
    /// Cosine decay from the base rate to zero over the run, after the warm-up.
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "step" => Ok(Schedule::Step),
            "cosine" => Ok(Schedule::Cosine),
            _ => Err(format!("unknown schedule '{s}' (constant, step or cosine)")),
        }
    }
}

/// The rate of optimizer step `step` (from 0) in epoch `epoch`, of `total` steps; the first
/// `warmup` steps ramp linearly up to the scheduled rate.
pub fn lr_at(schedule: Schedule, base: f32, gamma: f32, warmup: usize, step: usize, epoch: usize, total: usize) -> f32 {
    let scheduled = match schedule {
        Schedule::Constant => base,
        Schedule::Step => base * gamma.powi(epoch as i32),
        Schedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let t = (step.saturating_sub(warmup) as f64 / span).min(1.0);
            (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
        }
    };
    if step < warmup { scheduled * (step + 1) as f32 / warmup as f32 } else { scheduled }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(lr_at(Schedule::Constant, 1e-3, 0.85, 0, 7, 3, 10), 1e-3);
        assert!((lr_at(Schedule::Step, 1e-3, 0.85, 0, 7, 2, 10) - 1e-3 * 0.85 * 0.85).abs() < 1e-9);
        assert!((lr_at(Schedule::Cosine, 1.0, 0.0, 2, 2, 0, 12) - 1.0).abs() < 1e-6);
        assert!((lr_at(Schedule::Cosine, 1.0, 0.0, 2, 7, 0, 12) - 0.5).abs() < 1e-6);
        assert!(lr_at(Schedule::Cosine, 1.0, 0.0, 2, 12, 0, 12).abs() < 1e-6);
        assert!((lr_at(Schedule::Constant, 1.0, 0.0, 4, 1, 0, 12) - 0.5).abs() < 1e-6);
    }
}
