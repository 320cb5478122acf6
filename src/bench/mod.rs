//! Benchmarks shared by `lorafuse bench` and `cargo bench`. Speed is reported as ratios taken
//! in one run (fused vs sequential vs merged, achieved vs the device's measured ceilings), never
//! asserted.

/// Where a benchmark reports what it is doing.
pub trait Progress {
    /// A phase of `total` rows begins.
    fn start(&mut self, phase: &str, total: usize);
    /// One row finished.
    fn row(&mut self, line: &str);
    /// A remark outside the rows.
    fn note(&mut self, line: &str);
}

/// Progress on stderr: a bar with the count and ETA, the finished rows printed above it (plain
/// lines where stderr is not a terminal).
#[derive(Default)]
pub struct BarProgress {
    bar: Option<crate::progress::Progress>,
}

impl BarProgress {
    pub fn new() -> BarProgress {
        BarProgress { bar: None }
    }
}

impl Progress for BarProgress {
    fn start(&mut self, phase: &str, total: usize) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        self.bar = Some(crate::progress::Progress::new(total, phase, "rows", false));
    }

    fn row(&mut self, line: &str) {
        match &self.bar {
            Some(b) => {
                b.println(line);
                b.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }

    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

/// Progress that keeps nothing (tests).
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: &str, _: usize) {}
    fn row(&mut self, _: &str) {}
    fn note(&mut self, _: &str) {}
}

pub mod fuse;
pub mod model;
pub mod ops;
pub mod serve;
pub mod train;
