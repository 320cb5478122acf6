//! `lorafuse bench serve`: a bounded load test of the server on loopback. K clients send
//! streamed chat requests (a fixed number in all, within a time limit) whose adapter mixes take
//! 1, 2, 8 or K distinct values, against the fused engine (every mix in one batch) and the
//! split one (one mix a batch), interleaved in one run: throughput, time to first token and
//! latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::Progress;
use crate::error::{Error, Result};
use crate::model::chat::ChatTemplate;
use crate::model::llama::Llama;
use crate::model::tokenizer::Tokenizer;
use crate::plot::{Chart, Series};
use crate::serve::engine::{AdapterInfo, Engine, EngineOptions};
use crate::serve::http::App;

#[derive(Clone)]
pub struct Options {
    pub clients: usize,
    /// Requests of one measurement, over all clients.
    pub requests: usize,
    pub max_tokens: usize,
    /// Distinct mixes a measurement; 0 stands for one per client.
    pub mixes: Vec<usize>,
    /// A measurement stops issuing requests after this long.
    pub time_limit: Duration,
    pub max_seqs: usize,
    pub r: usize,
    pub targets: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub mixes: usize,
    pub mode: &'static str,
    pub requests: usize,
    pub tokens: usize,
    pub secs: f64,
    pub tokens_per_sec: f64,
    pub ttft_p50: f64,
    pub ttft_p99: f64,
    pub latency_p50: f64,
    pub latency_p99: f64,
    /// The time limit stopped it before every request was sent.
    pub cut_short: bool,
    /// Forward passes, their mean rows, and the share of the wall time the engine spent in them.
    pub steps: u64,
    pub rows_per_step: f64,
    pub busy: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub model: String,
    pub clients: usize,
    pub requests: usize,
    pub max_tokens: usize,
    pub max_seqs: usize,
    pub rows: Vec<Row>,
}

const QUESTIONS: [&str; 8] = [
    "Name a colour.",
    "What is the capital of France?",
    "Give me a word that rhymes with cat.",
    "How many legs does a spider have?",
    "Write a short greeting.",
    "What is two plus three?",
    "Name a fruit that is yellow.",
    "What do bees make?",
];

/// Positions a prompt may take: the chat template's and a question's tokens (under 64 here).
const PROMPT_ROOM: usize = 128;

/// The weight of the safety adapter for client `c` when there are `m` distinct mixes.
fn lambda(c: usize, m: usize) -> f64 {
    if m <= 1 { 0.5 } else { (c % m) as f64 / (m - 1) as f64 }
}

/// One finished request: seconds to its first text and to its end, and its tokens.
struct Sample {
    ttft: f64,
    latency: f64,
    tokens: usize,
}

/// Bytes of an HTTP/1.1 body as they arrive, chunked transfer decoded.
struct Body {
    chunked: bool,
    raw: Vec<u8>,
    out: Vec<u8>,
}

impl Body {
    fn feed(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        if !self.chunked {
            self.out.append(&mut self.raw);
            return;
        }
        while let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size =
                std::str::from_utf8(&self.raw[..eol]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
            let Some(size) = size else { return };
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.out.extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }
}

/// A streamed chat request on its own connection, timed.
async fn request(addr: std::net::SocketAddr, body: String) -> Result<Sample> {
    let err = |e: std::io::Error| Error::Invalid(format!("bench client: {e}"));
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(err)?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.map_err(err)?;
    s.write_all(body.as_bytes()).await.map_err(err)?;
    let (mut header, mut body, mut buf) = (Vec::new(), None::<Body>, vec![0u8; 16 << 10]);
    let (mut ttft, mut tokens, mut seen) = (None, None, 0);
    loop {
        let n = s.read(&mut buf).await.map_err(err)?;
        if n == 0 {
            break;
        }
        match &mut body {
            Some(b) => b.feed(&buf[..n]),
            None => {
                header.extend_from_slice(&buf[..n]);
                if let Some(end) = header.windows(4).position(|w| w == b"\r\n\r\n") {
                    let text = String::from_utf8_lossy(&header[..end]).to_ascii_lowercase();
                    if !text.starts_with("http/1.1 200") {
                        let rest = String::from_utf8_lossy(&header[end..]).into_owned();
                        return Err(Error::Invalid(format!(
                            "bench client: {} {rest}",
                            text.lines().next().unwrap_or("")
                        )));
                    }
                    let mut b =
                        Body { chunked: text.contains("transfer-encoding: chunked"), raw: Vec::new(), out: Vec::new() };
                    b.feed(&header[end + 4..]);
                    body = Some(b);
                }
            }
        }
        let Some(b) = &body else { continue };
        // server-sent events: "data: {...}\n\n"
        while let Some(end) = b.out[seen..].windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8_lossy(&b.out[seen..seen + end]).into_owned();
            seen += end + 2;
            let Some(data) = event.strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                let tokens = tokens.ok_or_else(|| Error::Invalid("bench client: no usage before [DONE]".into()))?;
                let latency = started.elapsed().as_secs_f64();
                return Ok(Sample { ttft: ttft.unwrap_or(latency), latency, tokens });
            }
            let v: serde_json::Value =
                serde_json::from_str(data).map_err(|e| Error::Invalid(format!("bench client: {e}: {data}")))?;
            if let Some(e) = v.get("error") {
                return Err(Error::Invalid(format!("bench client: the server failed a request: {e}")));
            }
            if ttft.is_none() && v["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()) {
                ttft = Some(started.elapsed().as_secs_f64());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = Some(n as usize);
            }
        }
    }
    Err(Error::Invalid("bench client: the stream ended before [DONE]".into()))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
}

/// One measurement: `opts.clients` clients, `m` distinct mixes.
async fn measure(
    engine: &Engine,
    addr: std::net::SocketAddr,
    m: usize,
    mode: &'static str,
    opts: &Options,
) -> Result<Row> {
    let before = engine.shared().metrics.steps();
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..opts.clients {
        let (issued, requests, limit, max_tokens) = (issued.clone(), opts.requests, opts.time_limit, opts.max_tokens);
        clients.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= requests || started.elapsed() > limit {
                    return Ok::<_, Error>(samples);
                }
                let l = lambda(c, m);
                let body = serde_json::json!({
                    "messages": [{"role": "user", "content": QUESTIONS[i % QUESTIONS.len()]}],
                    "adapters": {"task": 1.0 - l, "safety": l},
                    "temperature": 0, "max_tokens": max_tokens, "stream": true,
                    "stream_options": {"include_usage": true},
                });
                samples.push(request(addr, body.to_string()).await?);
            }
        }));
    }
    let mut samples = Vec::new();
    for c in clients {
        samples.extend(c.await.map_err(|e| Error::Invalid(format!("bench client: {e}")))??);
    }
    let secs = started.elapsed().as_secs_f64();
    let after = engine.shared().metrics.steps();
    let steps = after.0 - before.0;
    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft).collect();
    let mut lat: Vec<f64> = samples.iter().map(|s| s.latency).collect();
    Ok(Row {
        mixes: m,
        mode,
        requests: samples.len(),
        tokens,
        secs,
        tokens_per_sec: tokens as f64 / secs,
        ttft_p50: percentile(&mut ttft, 0.5),
        ttft_p99: percentile(&mut ttft, 0.99),
        latency_p50: percentile(&mut lat, 0.5),
        latency_p99: percentile(&mut lat, 0.99),
        cut_short: samples.len() < opts.requests,
        steps,
        rows_per_step: (after.1 - before.1) as f64 / steps.max(1) as f64,
        busy: (after.2 - before.2) / secs,
    })
}

/// The model served with two random adapters ("task", "safety"), loaded on loopback; each mix
/// count measured fused and split, the two interleaved.
pub fn run(
    model: Llama,
    tok: Tokenizer,
    template: Option<ChatTemplate>,
    model_name: &str,
    opts: &Options,
    progress: &mut dyn Progress,
) -> Result<Report> {
    let device = model.gpu().describe();
    let cfg = model.cfg().clone();
    let mut adapters = Vec::new();
    for (i, name) in ["task", "safety"].iter().enumerate() {
        let a = crate::bench::fuse::random_adapter(&model, opts.r, &opts.targets, 11 + i as u64)?;
        adapters.push((AdapterInfo { name: name.to_string(), path: "random".into(), weight: 0.5 }, a));
    }
    let eopts = EngineOptions {
        max_seqs: opts.max_seqs,
        context: (PROMPT_ROOM + opts.max_tokens).min(cfg.max_positions),
        max_queue: opts.requests.max(opts.clients),
        prefill_chunk: 256,
        split_by_mix: false,
    };
    let tok = Arc::new(tok);
    let (engine, worker) = Engine::start(model, tok.clone(), adapters, eopts)?;
    let app = Arc::new(App {
        engine: engine.clone(),
        tok,
        template,
        cfg,
        base_id: "base".into(),
        api_key: None,
        max_tokens: opts.max_tokens,
        grace: Duration::ZERO,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("starting the runtime: {e}")))?;
    let mixes: Vec<usize> = opts.mixes.iter().map(|&m| if m == 0 { opts.clients } else { m }).collect();
    let rows = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Invalid(format!("binding loopback: {e}")))?;
        let addr = listener.local_addr().map_err(|e| Error::Invalid(e.to_string()))?;
        let server = tokio::spawn(axum::serve(listener, crate::serve::http::router(app)).into_future());
        // a round first, not counted: the kernels of the step shapes serving meets are compiled
        let warm = Options { requests: opts.clients, ..opts.clone() };
        measure(&engine, addr, opts.clients, "warm-up", &warm).await?;
        progress.start("bench serve", 2 * mixes.len());
        let mut rows = Vec::new();
        for &m in &mixes {
            for (mode, split) in [("fused", false), ("split", true)] {
                engine.set_split_by_mix(split);
                let row = measure(&engine, addr, m, mode, opts).await?;
                progress.row(&format!(
                    "{m:>2} mixes {mode:<5}: {:.1} tokens/s, TTFT p50 {:.2} s p99 {:.2} s, latency p50 {:.2} s p99 {:.2} s; {} steps of {:.1} rows, {:.0}% busy",
                    row.tokens_per_sec, row.ttft_p50, row.ttft_p99, row.latency_p50, row.latency_p99, row.steps, row.rows_per_step, 100.0 * row.busy
                ));
                rows.push(row);
            }
        }
        server.abort();
        Ok::<_, Error>(rows)
    })?;
    engine.shutdown(Duration::ZERO);
    worker.join().map_err(|_| Error::Invalid("the engine thread panicked".into()))?;
    Ok(Report {
        device,
        model: model_name.to_string(),
        clients: opts.clients,
        requests: opts.requests,
        max_tokens: opts.max_tokens,
        max_seqs: opts.max_seqs,
        rows,
    })
}

pub fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Model {} on {}; {} concurrent streaming clients, {} requests a row, {} tokens each at most, {} slots; two r-8 adapters, client c's mix [1 − λ_c, λ_c].\n",
        r.model, r.device, r.clients, r.requests, r.max_tokens, r.max_seqs
    );
    let _ = writeln!(
        s,
        "| distinct mixes | mode | requests | tokens/s | vs fused at 1 mix | vs fused, same mixes | TTFT p50 / p99 (s) | latency p50 / p99 (s) | steps | rows a step | engine busy |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|");
    let base = r.rows.iter().find(|x| x.mode == "fused" && x.mixes == 1).map_or(f64::NAN, |x| x.tokens_per_sec);
    for row in &r.rows {
        let fused =
            r.rows.iter().find(|x| x.mode == "fused" && x.mixes == row.mixes).map_or(f64::NAN, |x| x.tokens_per_sec);
        let _ = writeln!(
            s,
            "| {} | {} | {}{} | {:.1} | {:.2}× | {:.2}× | {:.2} / {:.2} | {:.2} / {:.2} | {} | {:.1} | {:.0}% |",
            row.mixes,
            row.mode,
            row.requests,
            if row.cut_short { " (time limit)" } else { "" },
            row.tokens_per_sec,
            row.tokens_per_sec / base,
            row.tokens_per_sec / fused,
            row.ttft_p50,
            row.ttft_p99,
            row.latency_p50,
            row.latency_p99,
            row.steps,
            row.rows_per_step,
            100.0 * row.busy
        );
    }
    s
}

/// Throughput against the number of distinct mixes, fused and split.
pub fn chart(r: &Report) -> String {
    let series = |mode: &str, name: &str| {
        let pts = r.rows.iter().filter(|x| x.mode == mode).map(|x| (x.mixes as f64, x.tokens_per_sec)).collect();
        Series::line(name, pts, true)
    };
    Chart {
        title: format!("lorafuse serve, {} clients: throughput against distinct adapter mixes", r.clients),
        x_label: "distinct mixes among the requests".into(),
        y_label: "tokens/s".into(),
        series: vec![series("fused", "fused: every mix in one batch"), series("split", "split: one mix a batch")],
    }
    .svg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_across_reads() {
        let mut b = Body { chunked: true, raw: Vec::new(), out: Vec::new() };
        let wire = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        for piece in wire.chunks(3) {
            b.feed(piece);
        }
        assert_eq!(b.out, b"hello, world");
    }

    #[test]
    fn mixes_spread_lambda_over_zero_to_one() {
        assert_eq!((0..4).map(|c| lambda(c, 1)).collect::<Vec<_>>(), vec![0.5; 4]);
        assert_eq!((0..4).map(|c| lambda(c, 2)).collect::<Vec<_>>(), vec![0.0, 1.0, 0.0, 1.0]);
        let l: Vec<f64> = (0..16).map(|c| lambda(c, 8)).collect();
        assert_eq!((l[0], l[7], l[8]), (0.0, 1.0, 0.0));
        let mut p = [3.0, 1.0, 2.0];
        assert_eq!(percentile(&mut p, 0.5), 2.0);
    }
}
