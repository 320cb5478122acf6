//! LoRA adapters: the PEFT format, how adapters attach to a model's linear layers, and how
//! several fuse into one.

pub mod attach;
pub mod combine;
pub mod fuse;
pub mod gguf;
pub mod peft;
pub mod svd;
