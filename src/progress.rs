//! Progress of long work: an indicatif bar on a terminal; elsewhere (logs, CI, nohup), where a
//! bar draws nothing, a plain line every 30 seconds and at the end, so a long run is never
//! silent.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: indicatif::ProgressBar,
    /// Plain lines instead of a bar (stderr is not a terminal).
    plain: bool,
    quiet: bool,
    what: String,
    started: Instant,
    last: std::cell::Cell<Instant>,
    /// Units done before this run (a resumed one): not counted in the rate.
    first: u64,
}

const EVERY: Duration = Duration::from_secs(30);

impl Progress {
    /// `total` units of `unit` (steps, prompts, modules); nothing at all when `quiet`.
    pub fn new(total: usize, what: &str, unit: &str, quiet: bool) -> Progress {
        let plain = !std::io::stderr().is_terminal();
        let bar = if quiet || plain {
            indicatif::ProgressBar::hidden()
        } else {
            let b = indicatif::ProgressBar::new(total as u64);
            let style = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{elapsed}} elapsed, ETA {{eta}}");
            b.set_style(
                indicatif::ProgressStyle::with_template(&style)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        };
        bar.set_length(total as u64);
        bar.set_message(what.to_string());
        let now = Instant::now();
        Progress { bar, plain, quiet, what: what.to_string(), started: now, last: std::cell::Cell::new(now), first: 0 }
    }

    /// Starts at `done` units, done by an earlier run (the ETA counts this run's pace only).
    pub fn resume_at(&mut self, done: usize) {
        self.first = done as u64;
        self.bar.set_position(done as u64);
        self.bar.reset_eta();
    }

    pub fn set_position(&self, done: usize) {
        self.bar.set_position(done as u64);
        self.tick(false);
    }

    pub fn inc(&self, n: usize) {
        self.bar.inc(n as u64);
        self.tick(false);
    }

    pub fn set_length(&self, total: usize) {
        self.bar.set_length(total as u64);
    }

    /// The bar's message; also what plain lines start with.
    pub fn set_message(&mut self, msg: String) {
        self.what = msg.clone();
        self.bar.set_message(msg);
    }

    /// A line above the bar (or on its own).
    pub fn println(&self, line: &str) {
        if self.quiet {
            return;
        }
        if self.plain {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    fn tick(&self, last: bool) {
        if !self.plain || self.quiet {
            return;
        }
        let now = Instant::now();
        if !last && now.duration_since(self.last.get()) < EVERY {
            return;
        }
        self.last.set(now);
        let (pos, len) = (self.bar.position(), self.bar.length().unwrap_or(0));
        if len == 0 {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64();
        let eta = eta(secs, self.first, pos, len).map_or(String::new(), |e| format!(", ETA {e:.0} s"));
        eprintln!("{}: {pos}/{len}, {secs:.0} s elapsed{eta}", self.what);
    }

    pub fn finish(&self) {
        self.tick(true);
        self.bar.finish_and_clear();
    }
}

/// Seconds left at this run's pace: `secs` spent on the units after `first` (a resumed run's
/// earlier units took no time here); None before the first unit of this run or at the end.
fn eta(secs: f64, first: u64, pos: u64, len: u64) -> Option<f64> {
    let done = pos.saturating_sub(first);
    (done > 0 && len > pos).then(|| secs / done as f64 * (len - pos) as f64)
}

#[cfg(test)]
mod tests {
    use super::eta;

    #[test]
    fn eta_counts_this_runs_units_only() {
        // 4 steps in 320 s after resuming at 55 of 110: 51 left at 80 s each
        assert_eq!(eta(320.0, 55, 59, 110), Some(4080.0));
        assert_eq!(eta(100.0, 0, 10, 20), Some(100.0));
        assert_eq!(eta(5.0, 55, 55, 110), None);
        assert_eq!(eta(5.0, 0, 20, 20), None);
    }
}
