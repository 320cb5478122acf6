//! `lorafuse serve`: an OpenAI-compatible HTTP server in which every request carries its own
//! adapter mix and requests with different mixes share one batch.
//!
//! engine.rs runs the model (continuous batching over a slotted KV cache); api.rs checks OpenAI
//! request bodies and writes response bodies; http.rs is the axum side; metrics.rs the counters
//! behind GET /metrics.

pub mod api;
pub mod engine;
pub mod http;
pub mod metrics;
