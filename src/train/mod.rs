//! LoRA training: the forward and backward of a step with the base frozen.

pub mod data;
pub mod step;
