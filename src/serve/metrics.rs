//! The server's counters, written out in Prometheus's text format for GET /metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counts {
    /// Responses by HTTP status.
    responses: BTreeMap<u16, u64>,
    /// Requests admitted by mix label.
    mixes: BTreeMap<String, u64>,
    prompt_tokens: u64,
    generated_tokens: u64,
    cancelled: u64,
    steps: u64,
    step_rows: u64,
    step_secs: f64,
    last_rows: usize,
    ttft_secs: f64,
    ttft_count: u64,
    queue: usize,
    running: usize,
    /// (when, tokens generated then) over the last seconds, for the tokens/s gauge.
    recent: Vec<(Instant, u64)>,
}

#[derive(Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
}

/// The window of the tokens/s gauge.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().expect("metrics"))
    }

    pub fn response(&self, status: u16) {
        self.with(|c| *c.responses.entry(status).or_default() += 1)
    }

    pub(crate) fn admitted(&self, mix: &str, prompt_tokens: usize) {
        self.with(|c| {
            *c.mixes.entry(mix.to_string()).or_default() += 1;
            c.prompt_tokens += prompt_tokens as u64;
        })
    }

    pub(crate) fn first_token(&self, after: Duration) {
        self.with(|c| {
            c.ttft_secs += after.as_secs_f64();
            c.ttft_count += 1;
        })
    }

    pub(crate) fn cancelled(&self, n: usize) {
        self.with(|c| c.cancelled += n as u64)
    }

    /// A step ran `rows` rows, `sampled` of which produced a token.
    pub(crate) fn stepped(&self, rows: usize, sampled: usize, took: Duration) {
        self.with(|c| {
            c.steps += 1;
            c.step_rows += rows as u64;
            c.step_secs += took.as_secs_f64();
            c.last_rows = rows;
            c.generated_tokens += sampled as u64;
            let now = Instant::now();
            c.recent.retain(|(t, _)| now.duration_since(*t) <= RATE_WINDOW);
            c.recent.push((now, sampled as u64));
        })
    }

    pub(crate) fn set_queue(&self, n: usize) {
        self.with(|c| c.queue = n)
    }

    pub(crate) fn set_running(&self, n: usize) {
        self.with(|c| c.running = n)
    }

    /// Steps run, their rows and their seconds, so far.
    pub fn steps(&self) -> (u64, u64, f64) {
        let c = self.counts.lock().expect("metrics");
        (c.steps, c.step_rows, c.step_secs)
    }

    /// Tokens generated over the last RATE_WINDOW, per second.
    fn rate(c: &Counts) -> f64 {
        let now = Instant::now();
        let tokens: u64 = c.recent.iter().filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW).map(|r| r.1).sum();
        tokens as f64 / RATE_WINDOW.as_secs_f64()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let c = self.counts.lock().expect("metrics");
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
            let _ = writeln!(s, "# HELP lorafuse_{name} {help}\n# TYPE lorafuse_{name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(s, "lorafuse_{name}{labels} {v}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        let responses = c.responses.iter().map(|(k, v)| (format!("{{code=\"{k}\"}}"), v.to_string())).collect();
        metric("responses_total", "counter", "HTTP responses by status code.", responses);
        let mixes = c.mixes.iter().map(|(k, v)| (format!("{{mix=\"{}\"}}", escape(k)), v.to_string())).collect();
        metric("requests_by_mix_total", "counter", "Generation requests admitted, by adapter mix.", mixes);
        metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", one(c.prompt_tokens.to_string()));
        metric("generated_tokens_total", "counter", "Tokens generated.", one(c.generated_tokens.to_string()));
        metric(
            "cancelled_total",
            "counter",
            "Requests whose client left before the end.",
            one(c.cancelled.to_string()),
        );
        let rate = format!("{:.3}", Self::rate(&c));
        metric("tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.", one(rate));
        metric("queue_depth", "gauge", "Requests waiting for a slot.", one(c.queue.to_string()));
        metric("running_sequences", "gauge", "Requests holding a slot.", one(c.running.to_string()));
        metric("batch_rows", "gauge", "Rows of the last step's forward pass.", one(c.last_rows.to_string()));
        metric("steps_total", "counter", "Forward passes run.", one(c.steps.to_string()));
        metric("step_rows_total", "counter", "Rows over all forward passes.", one(c.step_rows.to_string()));
        metric("step_seconds_total", "counter", "Seconds in forward passes.", one(format!("{:.6}", c.step_secs)));
        let ttft =
            vec![("_sum".to_string(), format!("{:.6}", c.ttft_secs)), ("_count".to_string(), c.ttft_count.to_string())];
        metric("time_to_first_token_seconds", "summary", "Arrival of a request to its first token.", ttft);
        s
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
