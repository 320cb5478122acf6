//! `lorafuse serve` end to end over loopback on SmolLM2, with a plain HTTP/1.1 client: requests
//! with different adapter mixes running at once return what `lorafuse generate` returns for
//! each mix; the error cases answer OpenAI-style 4xx bodies; the queue refuses with 429; a
//! client that leaves frees its row; adapters load and unload at run time; SIGTERM exits 0.
//! (scripts/serve_check.py runs the official `openai` client against the same server.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const KEY: &str = "test-key";

/// A server started by the test, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    log: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let model = common::default_model();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
            .args(["serve", "--port", "0", "--max-tokens", "24", "--context", "256"])
            .args(args)
            .env("LORAFUSE_MODEL", model)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut seen = Vec::new();
        loop {
            let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            let Ok(line) = line else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not start:\n{}", seen.join("\n"))
            };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                return Server { child, addr, log: std::sync::Mutex::new(rx) };
            }
            seen.push(line);
        }
    }

    /// One request on its own connection: (status, headers, body).
    fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> (u16, String, String) {
        let raw = body.map(Value::to_string);
        self.raw(method, path, key, raw.as_deref())
    }

    fn raw(&self, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> (u16, String, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        write!(s, "{}", request(method, path, key, body)).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        parse_response(&buf)
    }

    /// A JSON response's status and body.
    fn json(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, _, text) = self.call(method, path, Some(KEY), body);
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")))
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, _, text) = self.call("GET", "/metrics", Some(KEY), None);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("lorafuse_{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request(method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(k) = key {
        r += &format!("Authorization: Bearer {k}\r\n");
    }
    if let Some(b) = body {
        r += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len());
    } else {
        r += "\r\n";
    }
    r
}

/// Status, headers and the body (chunked transfer decoded).
fn parse_response(buf: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out += &after[..n];
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

fn chat(content: &str, extra: Value) -> Value {
    let mut b = json!({"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 12});
    if let (Value::Object(b), Value::Object(e)) = (&mut b, extra) {
        b.extend(e);
    }
    b
}

fn text_of(v: &Value) -> String {
    v["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no content in {v}")).to_string()
}

/// The texts `lorafuse generate` gives `question` at each mix of the two adapters.
fn generate_texts(dirs: [&Path; 2], question: &str, mixes: &[[f32; 2]]) -> Vec<String> {
    let file = dirs[0].parent().unwrap().join("prompts.jsonl");
    let lines: Vec<String> =
        mixes.iter().map(|m| json!({"prompt": question, "adapter_weights": m}).to_string()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (a, b) = (dirs[0].display().to_string(), dirs[1].display().to_string());
    let f = file.display().to_string();
    let out = common::run_cli(&[
        "generate",
        "--json",
        "--max-new-tokens",
        "12",
        "--prompts",
        &f,
        "--adapter",
        &a,
        "--adapter",
        &b,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn serve_batches_mixes_answers_errors_and_stops_cleanly() {
    let dir = common::tiny::temp_dir("serve");
    let (da, db) = (dir.join("task"), dir.join("safety"));
    common::smollm_adapter(0.05).save(&da).unwrap();
    common::smollm_adapter(0.05).save(&db).unwrap();
    let spec = |n: &str, d: &Path| format!("{n}={}", d.display());
    let server = Server::start(&[
        "--adapter",
        &spec("task", &da),
        "--adapter",
        &format!("{}:0.5", spec("safety", &db)),
        "--max-seqs",
        "4",
        "--max-queue",
        "2",
        "--api-key",
        KEY,
    ]);

    // three mixes at once, one batch: each what `generate` gives it
    let q = "Name a colour.";
    let mixes = [[0.6f32, 0.4], [1.5, 0.0], [0.0, 0.0]];
    let bodies = [
        chat(q, json!({"adapters": {"task": 0.6, "safety": 0.4}})),
        chat(q, json!({"model": "task:1.5"})),
        chat(q, json!({"adapters": {}})),
    ];
    let got: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| {
                let server = &server;
                s.spawn(move || server.json("POST", "/v1/chat/completions", Some(b)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, v) = h.join().unwrap();
                assert_eq!(status, 200, "{v}");
                text_of(&v)
            })
            .collect()
    });
    let want = generate_texts([&da, &db], q, &mixes);
    assert_eq!(got, want, "served mixes against generate's");
    assert_ne!(want[1], want[2], "the adapter changes nothing: the test cannot tell mixes apart");
    let rows = server.metric("step_rows_total");
    let steps = server.metric("steps_total");
    assert!(rows > steps, "no step held more than one row ({rows} rows in {steps} steps): nothing was batched");

    // the default mix (task at 1, safety at its --adapter weight 0.5) and the stream of it
    let (status, v) = server.json("POST", "/v1/chat/completions", Some(&chat(q, json!({}))));
    assert_eq!(status, 200, "{v}");
    assert_eq!(text_of(&v), generate_texts([&da, &db], q, &[[1.0, 0.5]])[0]);
    let (status, _, sse) =
        server.call("POST", "/v1/chat/completions", Some(KEY), Some(&chat(q, json!({"stream": true}))));
    assert_eq!(status, 200);
    let events: Vec<&str> = sse.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{sse}");
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(streamed, text_of(&v), "the stream's text against the whole response's");

    // completions: raw text, a stop string cuts before it
    let body =
        json!({"prompt": "The capital of France is", "temperature": 0, "max_tokens": 8, "stop": ".", "adapters": {}});
    let (status, v) = server.json("POST", "/v1/completions", Some(&body));
    assert_eq!((status, v["choices"][0]["finish_reason"].as_str()), (200, Some("stop")), "{v}");
    assert!(!v["choices"][0]["text"].as_str().unwrap().contains('.'), "{v}");

    // errors: OpenAI-shaped bodies with 4xx codes
    let user = |extra: Value| chat("hi", extra);
    let long = "word ".repeat(300);
    let cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (Some(KEY), "{not json".to_string(), 400, "not valid JSON"),
        (Some(KEY), user(json!({"temperature": "hot"})).to_string(), 400, "temperature"),
        (Some(KEY), user(json!({"max_tokens": 25})).to_string(), 400, "--max-tokens"),
        (Some(KEY), user(json!({"adapters": {"nope": 1}})).to_string(), 400, "nope"),
        (Some(KEY), user(json!({"model": "task:0.5+nope:0.5"})).to_string(), 400, "nope"),
        (Some(KEY), user(json!({"model": "gpt-4"})).to_string(), 404, "gpt-4"),
        (Some(KEY), user(json!({"adapters": {"task": f64::MAX}})).to_string(), 400, "finite"),
        (Some(KEY), chat(&long, json!({})).to_string(), 400, "context"),
        (Some(KEY), user(json!({"n": 2})).to_string(), 400, "'n'"),
        (None, user(json!({})).to_string(), 401, "API key"),
        (Some("wrong"), user(json!({})).to_string(), 401, "API key"),
    ];
    for (key, body, want_status, says) in cases {
        let (status, _, text) = server.raw("POST", "/v1/chat/completions", key, Some(&body));
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(status == want_status && msg.contains(says), "{body:.80}: {status} {text}");
        assert!(v["error"]["type"].is_string(), "{text}");
    }
    // axum's own refusals in OpenAI's shape too (a wrong method here; a body over 2 MiB is
    // refused the same way, but a server closing with the body unread may reset the connection)
    let (status, _, text) = server.raw("GET", "/v1/completions", Some(KEY), None);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(status == 405 && v["error"]["message"].as_str().unwrap().contains("method"), "{status} {text}");
    assert_eq!(server.call("GET", "/health", None, None).0, 200, "/health needs no key");
    assert_eq!(server.call("GET", "/v1/models", None, None).0, 401);

    // a full queue: 4 slots and 2 places; 9 requests at once leave some refused with 429
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..9)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    let b = chat(&format!("Tell me a story about the number {i}."), json!({"max_tokens": 24}));
                    let (st, head, _) = server.call("POST", "/v1/chat/completions", Some(KEY), Some(&b));
                    (st, head)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<&(u16, String)> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!refused.is_empty() && statuses.iter().all(|(s, _)| *s == 200 || *s == 429), "{statuses:?}");
    assert!(refused.iter().all(|(_, h)| h.to_ascii_lowercase().contains("retry-after")), "{refused:?}");

    // a client that leaves, streaming or not, frees its row
    for stream in [true, false] {
        let cancelled = server.metric("cancelled_total");
        {
            let mut s = TcpStream::connect(&server.addr).unwrap();
            let b = chat("Tell me a long story.", json!({"stream": stream, "max_tokens": 24})).to_string();
            write!(s, "{}", request("POST", "/v1/chat/completions", Some(KEY), Some(&b))).unwrap();
            if stream {
                let mut first = [0u8; 64];
                s.read_exact(&mut first).unwrap();
            } else {
                // gone once its first token is out
                let deadline = Instant::now() + Duration::from_secs(60);
                while server.metric("running_sequences") == 0.0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let freed = || server.metric("cancelled_total") > cancelled && server.metric("running_sequences") == 0.0;
        while !freed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(freed(), "the row of a client that left (stream: {stream}) was not freed");
    }

    // adapters at run time: loaded, served, refused a second time, unloaded
    let load = json!({"name": "again", "path": da.display().to_string(), "weight": 1.5});
    let (status, v) = server.json("POST", "/v1/adapters", Some(&load));
    assert_eq!(status, 200, "{v}");
    assert_eq!(server.json("POST", "/v1/adapters", Some(&load)).0, 409);
    let (_, models) = server.json("GET", "/v1/models", None);
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["SmolLM2-135M-Instruct.Q4_1", "task", "safety", "again"]);
    let (_, v) = server.json("POST", "/v1/chat/completions", Some(&chat(q, json!({"model": "again"}))));
    assert_eq!(text_of(&v), want[1], "the adapter loaded at run time at 1.5 against task at 1.5");
    let bad = json!({"name": "broken", "path": dir.join("missing").display().to_string()});
    let (status, v) = server.json("POST", "/v1/adapters", Some(&bad));
    assert!(status == 400 && v["error"]["message"].as_str().unwrap().contains("missing"), "{v}");
    assert_eq!(server.json("DELETE", "/v1/adapters/again", None).0, 200);
    assert_eq!(server.json("DELETE", "/v1/adapters/again", None).0, 404);
    let (status, _) = server.json("POST", "/v1/chat/completions", Some(&chat(q, json!({"model": "again"}))));
    assert_eq!(status, 404);

    // SIGTERM: a stream in flight finishes, then the server exits 0
    let mut server = server;
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let b = chat("Tell me a long story.", json!({"stream": true, "max_tokens": 24})).to_string();
    write!(s, "{}", request("POST", "/v1/chat/completions", Some(KEY), Some(&b))).unwrap();
    // its first text out: admitted, not only queued
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let mut byte = [0u8; 256];
        let n = s.read(&mut byte).unwrap();
        assert!(n > 0, "the stream ended before its first event");
        seen.extend_from_slice(&byte[..n]);
    }
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"), "the stream in flight did not finish");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let log: Vec<String> = server.log.lock().unwrap().try_iter().collect();
    assert!(log.iter().any(|l| l.contains("serve: stopped")), "{log:?}");
    std::fs::remove_dir_all(&dir).ok();
}
