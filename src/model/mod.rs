//! Llama-family models: files (GGUF, Hugging Face directories), tokenizer and chat template, the
//! GPU forward pass and its f64 CPU reference.

pub mod chat;
pub mod config;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod quant;
pub mod reference;
pub mod sampling;
pub mod source;
pub mod tokenizer;
