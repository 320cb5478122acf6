//! Llama-family models: files (GGUF, Hugging Face directories), tokenizer and chat template.

pub mod chat;
pub mod config;
pub mod gguf;
pub mod quant;
pub mod tokenizer;
