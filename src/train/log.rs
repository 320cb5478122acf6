//! The step log of a run (train_log.jsonl: a line per optimizer step and per epoch, appended as
//! they happen) and its loss chart.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plot::{Chart, Series};

/// One line of the step log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StepRecord {
    pub(crate) step: usize,
    pub(crate) epoch: f64,
    pub(crate) lr: f32,
    pub(crate) loss: f64,
    pub(crate) grad_norm: f64,
    pub(crate) tokens: usize,
    pub(crate) labelled: usize,
    pub(crate) seconds: f64,
    pub(crate) tokens_per_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EpochRecord {
    pub(crate) epoch: usize,
    pub(crate) step: usize,
    pub(crate) train_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) holdout_loss: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub(crate) enum LogLine {
    Step(StepRecord),
    Epoch(EpochRecord),
}

pub(crate) fn read_log(path: &Path) -> Result<Vec<LogLine>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::file(path, e)),
    };
    // a line cut by a crash is dropped: the checkpoint decides what counts
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

pub(crate) fn write_log(path: &Path, log: &[LogLine]) -> Result<()> {
    let mut text = String::new();
    for l in log {
        text.push_str(&serde_json::to_string(l).map_err(|e| Error::Invalid(e.to_string()))?);
        text.push('\n');
    }
    crate::atomic::write_atomic(path, text)
}

pub(crate) fn append_log(path: &Path, line: &LogLine) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).map_err(|e| Error::file(path, e))?;
    let text = serde_json::to_string(line).map_err(|e| Error::Invalid(e.to_string()))?;
    writeln!(f, "{text}").map_err(|e| Error::file(path, e))
}

/// Train loss per step and per epoch, held-out loss per epoch, against epochs.
pub(crate) fn loss_chart(log: &[LogLine]) -> Chart {
    let mut steps = Vec::new();
    let mut epochs = Vec::new();
    let mut held = Vec::new();
    for l in log {
        match l {
            LogLine::Step(s) => steps.push((s.epoch, s.loss)),
            LogLine::Epoch(e) => {
                if e.train_loss.is_finite() {
                    epochs.push((e.epoch as f64, e.train_loss));
                }
                if let Some(h) = e.holdout_loss {
                    held.push((e.epoch as f64, h));
                }
            }
        }
    }
    let mut series = vec![Series::line("train (step)", steps, false), Series::line("train (epoch mean)", epochs, true)];
    if !held.is_empty() {
        series.push(Series::line("held out", held, true));
    }
    Chart {
        title: "LoRA training loss (per labelled token)".into(),
        x_label: "epoch".into(),
        y_label: "loss (nats)".into(),
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed run's epoch losses come from the log: they must read back bit for bit (serde_json's
    /// default float parser misses the last bit of this one; its float_roundtrip feature does not).
    #[test]
    fn logged_losses_read_back_exactly() {
        let dir = std::env::temp_dir().join(format!("lorafuse-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("train_log.jsonl");
        let losses = [11.093868423391271, 9.874828585871944, 0.1 + 0.2, f64::MIN_POSITIVE];
        let lines: Vec<LogLine> = (losses.iter().enumerate())
            .map(|(i, &l)| LogLine::Epoch(EpochRecord { epoch: i, step: i, train_loss: l, holdout_loss: Some(l) }))
            .collect();
        write_log(&path, &lines).unwrap();
        let back: Vec<f64> = (read_log(&path).unwrap().iter())
            .filter_map(|l| if let LogLine::Epoch(e) = l { Some(e.train_loss) } else { None })
            .collect();
        assert_eq!(back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), losses.map(f64::to_bits));
        std::fs::remove_dir_all(&dir).ok();
    }
}
