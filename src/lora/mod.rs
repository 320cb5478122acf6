//! LoRA adapters: the PEFT format (and llama.cpp's LoRA GGUF), how adapters attach to a model's
//! linear layers, and how several fuse into one.

pub mod attach;
pub mod combine;
pub mod fuse;
pub mod gguf;
pub mod peft;
pub mod svd;

use std::path::Path;

/// An adapter from a PEFT directory or a llama.cpp LoRA GGUF file (whose q/k rows need the
/// model's `cfg` to come back to Hugging Face order).
pub fn open(path: &Path, cfg: &crate::model::config::LlamaConfig) -> crate::Result<peft::Adapter> {
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        gguf::load_gguf_lora(path, cfg)
    } else {
        peft::Adapter::load(path)
    }
}
