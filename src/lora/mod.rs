//! LoRA adapters: the PEFT format, and how adapters attach to a model's linear layers.

pub mod attach;
pub mod peft;
