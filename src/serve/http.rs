//! The HTTP side of `lorafuse serve` (axum on tokio): routes, the API key, streaming as
//! server-sent events, and the shutdown on SIGTERM or Ctrl-C.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::model::chat::ChatTemplate;
use crate::model::config::LlamaConfig;
use crate::model::tokenizer::Tokenizer;
use crate::serve::api::{self, ApiError, Context, Endpoint, Reply};
use crate::serve::engine::{AdapterInfo, Engine, Event, Job, Refused};

/// What the handlers share.
pub struct App {
    pub engine: Engine,
    pub tok: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    /// The config adapters loaded at run time must fit.
    pub cfg: LlamaConfig,
    pub base_id: String,
    pub api_key: Option<String>,
    pub max_tokens: usize,
    pub grace: Duration,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A request id, and the seed of a request that gives none: distinct per request.
fn fresh() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (t ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 1
}

impl App {
    fn error(&self, e: ApiError) -> Response {
        self.engine.shared().metrics.response(e.status);
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(e.body())).into_response();
        if matches!(e.status, 429 | 503) {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }

    fn ok(&self, body: Value) -> Response {
        self.engine.shared().metrics.response(200);
        axum::Json(body).into_response()
    }

    /// Every endpoint but /health wants `Authorization: Bearer KEY` when a key is set.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else { return Ok(()) };
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let want = format!("Bearer {key}");
        // compared in time independent of where they differ
        let same =
            given.len() == want.len() && given.bytes().zip(want.bytes()).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same {
            Ok(())
        } else {
            Err(ApiError::new(401, "a valid API key is needed: send 'Authorization: Bearer KEY'")
                .with_code("invalid_api_key"))
        }
    }

    fn adapter_names(&self) -> Vec<(String, f32)> {
        self.engine.adapters().into_iter().map(|a| (a.name, a.weight)).collect()
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/adapters", get(adapters).post(load_adapter))
        .route("/v1/adapters/{name}", delete(unload_adapter))
        .fallback(not_found)
        .layer(axum::middleware::map_response(openai_errors))
        .with_state(app)
}

/// axum's own refusals (405 for a wrong method, 413 for a body over its 2 MiB limit, 400 for a
/// body it cannot read) come as plain text: OpenAI clients get its JSON error shape instead.
async fn openai_errors(r: Response) -> Response {
    let status = r.status();
    let plain = r.headers().get(header::CONTENT_TYPE).is_none_or(|v| v.as_bytes().starts_with(b"text/plain; charset"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return r;
    }
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed on this endpoint".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is over the limit of 2 MiB".to_string(),
        s => s.canonical_reason().unwrap_or("error").to_string(),
    };
    (status, axum::Json(ApiError::new(status.as_u16(), message).body())).into_response()
}

async fn not_found(State(app): State<Arc<App>>) -> Response {
    app.error(ApiError::new(404, "no such endpoint"))
}

async fn health(State(app): State<Arc<App>>) -> Response {
    if app.engine.draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "shutting_down"}))).into_response();
    }
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = app.authorize(&headers) {
        return app.error(e);
    }
    let body = app.engine.shared().metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = app.authorize(&headers) {
        return app.error(e);
    }
    let created = now_secs();
    let model = |id: &str, extra: Value| {
        let mut m = json!({"id": id, "object": "model", "created": created, "owned_by": "lorafuse"});
        if let (Value::Object(m), Value::Object(e)) = (&mut m, extra) {
            m.extend(e);
        }
        m
    };
    let mut data = vec![model(&app.base_id, json!({}))];
    for a in app.engine.adapters() {
        data.push(model(&a.name, json!({"parent": app.base_id, "path": a.path, "default_weight": a.weight})));
    }
    app.ok(json!({"object": "list", "data": data}))
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(app, Endpoint::Chat, headers, body).await
}

async fn completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(app, Endpoint::Completions, headers, body).await
}

async fn generate(app: Arc<App>, endpoint: Endpoint, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = app.authorize(&headers) {
        return app.error(e);
    }
    let names = app.adapter_names();
    let cx = Context {
        tok: &app.tok,
        template: app.template.as_ref(),
        base_id: &app.base_id,
        adapters: &names,
        context: app.engine.shared().opts.context,
        max_tokens: app.max_tokens,
    };
    let req = match api::parse(endpoint, &body, &cx, fresh()) {
        Ok(r) => r,
        Err(e) => return app.error(e),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let prompt_tokens = req.prompt.len();
    let job = Job { prompt: req.prompt, opts: req.opts, mix: req.mix, events: tx, arrived: std::time::Instant::now() };
    match app.engine.submit(job) {
        Err(Refused::Full) => {
            let max = app.engine.shared().opts.max_queue;
            return app.error(ApiError::new(429, format!("the queue is full ({max} requests wait): retry later")));
        }
        Err(Refused::ShuttingDown) => return app.error(ApiError::new(503, "the server is shutting down")),
        Ok(()) => {}
    }
    let kind = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    let id = format!("{kind}-{:016x}", fresh());
    if req.stream {
        app.engine.shared().metrics.response(200);
        let s = stream(endpoint, id, req.model, req.include_usage, rx);
        return Sse::new(s).keep_alive(KeepAlive::default()).into_response();
    }
    let mut rx = rx;
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done { finish, completion_tokens, .. } => {
                let reply = Reply { endpoint, id: &id, created: now_secs(), model: &req.model };
                return app.ok(reply.response(&text, finish, api::usage(prompt_tokens, completion_tokens)));
            }
            Event::Failed { status, message } => return app.error(ApiError::new(status, message)),
        }
    }
    app.error(ApiError::new(500, "the engine dropped the request"))
}

/// A request's events as server-sent events: text chunks, the finish, the usage when asked for,
/// then "[DONE]"; a failure mid-stream is an error event, as OpenAI's servers send one.
fn stream(
    endpoint: Endpoint,
    id: String,
    model: String,
    include_usage: bool,
    rx: mpsc::UnboundedReceiver<Event>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct S {
        rx: mpsc::UnboundedReceiver<Event>,
        first: bool,
        pending: Vec<String>,
        ended: bool,
    }
    let created = now_secs();
    let state = S { rx, first: true, pending: Vec::new(), ended: false };
    futures::stream::unfold(state, move |mut s| {
        let (id, model) = (id.clone(), model.clone());
        async move {
            let reply = Reply { endpoint, id: &id, created, model: &model };
            loop {
                if !s.pending.is_empty() {
                    let data = s.pending.remove(0);
                    return Some((Ok(SseEvent::default().data(data)), s));
                }
                if s.ended {
                    return None;
                }
                match s.rx.recv().await {
                    Some(Event::Text(t)) => {
                        s.pending.push(reply.chunk(Some(&t), s.first, None).to_string());
                        s.first = false;
                    }
                    Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                        s.pending.push(reply.chunk(None, s.first, Some(finish)).to_string());
                        if include_usage {
                            s.pending.push(reply.usage_chunk(api::usage(prompt_tokens, completion_tokens)).to_string());
                        }
                        s.pending.push("[DONE]".into());
                        s.ended = true;
                    }
                    Some(Event::Failed { status, message }) => {
                        s.pending.push(ApiError::new(status, message).body().to_string());
                        s.ended = true;
                    }
                    None => {
                        s.pending.push(ApiError::new(500, "the engine dropped the request").body().to_string());
                        s.ended = true;
                    }
                }
            }
        }
    })
}

async fn adapters(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = app.authorize(&headers) {
        return app.error(e);
    }
    app.ok(json!({"object": "list", "data": app.engine.adapters()}))
}

/// An adapter name that the model field can carry: no separators of a mix.
pub fn check_name(name: &str, base_id: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(format!("the adapter name '{name}' must be letters, digits, '-', '_' or '.' (no ':' or '+')"));
    }
    if name == base_id {
        return Err(format!("the adapter name '{name}' is the base model's id"));
    }
    Ok(())
}

async fn load_adapter(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = app.authorize(&headers) {
        return app.error(e);
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return app.error(ApiError::new(400, format!("the request body is not valid JSON: {e}"))),
    };
    let (Some(name), Some(path)) = (body.get("name").and_then(Value::as_str), body.get("path").and_then(Value::as_str))
    else {
        return app.error(ApiError::new(400, "give {\"name\": ..., \"path\": ...} (and optionally \"weight\")"));
    };
    if let Err(e) = check_name(name, &app.base_id) {
        return app.error(ApiError::param("name", e));
    }
    let weight = match body.get("weight") {
        None | Some(Value::Null) => 1.0,
        Some(w) => {
            match w.as_f64().ok_or_else(|| format!("not a number: {w}")).and_then(crate::validate::adapter_weight) {
                Ok(w) => w,
                Err(e) => return app.error(ApiError::param("weight", e)),
            }
        }
    };
    let path = PathBuf::from(path);
    let (cfg, p) = (app.cfg.clone(), path.clone());
    let adapter = match tokio::task::spawn_blocking(move || crate::lora::open(&p, &cfg)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return app.error(ApiError::param("path", e.to_string())),
        Err(e) => return app.error(ApiError::new(500, format!("loading the adapter: {e}"))),
    };
    let info = AdapterInfo { name: name.to_string(), path, weight };
    match app.engine.load(info.clone(), adapter).await {
        Ok(()) => {
            eprintln!("serve: adapter '{}' loaded from {} (default weight {weight})", info.name, info.path.display());
            app.ok(json!(info))
        }
        Err(e) if e.to_string().contains("loaded already") => app.error(ApiError::new(409, e.to_string())),
        Err(e) => app.error(ApiError::param("path", e.to_string())),
    }
}

async fn unload_adapter(State(app): State<Arc<App>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(e) = app.authorize(&headers) {
        return app.error(e);
    }
    match app.engine.unload(name.clone()).await {
        Ok(()) => {
            eprintln!("serve: adapter '{name}' unloaded");
            app.ok(json!({"name": name, "object": "adapter", "deleted": true}))
        }
        Err((status, message)) => app.error(ApiError::new(status, message)),
    }
}

/// Serves until SIGTERM or Ctrl-C, then stops taking requests, lets what runs finish (cancelling
/// what is left after the grace period) and returns.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let engine = app.engine.clone();
    let grace = app.grace;
    let stop = async move {
        shutdown_signal().await;
        eprintln!("serve: stopping: no new requests; {} s for those running", grace.as_secs_f64());
        engine.shutdown(grace);
    };
    axum::serve(listener, router(app)).with_graceful_shutdown(stop).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
