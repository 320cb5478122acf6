//! Llama-family models: files (GGUF, Hugging Face directories), tokenizer and chat template, the
//! one model definition on the GPU (forward, loss and backward, trainable parameters) and its f64
//! CPU reference, sampling and batched generation.

pub mod batch;
pub mod cache;
pub mod chat;
pub mod config;
pub mod export;
pub mod export_gguf;
pub mod generate;
pub mod gguf;
pub mod gguf_meta;
pub mod gguf_write;
pub mod layer;
pub mod llama;
pub mod loss;
pub mod params;
pub mod quant;
pub mod reference;
pub mod sampling;
pub mod score;
pub mod source;
pub mod tokenizer;

pub use crate::kernels::dropout::Dropout;
