//! lorafuse: LoRA training, fusion and evaluation on any GPU wgpu reaches, with hand-written WGSL
//! kernels. See README.md for the pipeline and DESIGN notes in the repository.

pub mod atomic;
pub mod bench;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod kernels;
pub mod lora;
pub mod model;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod serve;
pub mod train;
pub mod validate;

pub use error::{Error, Result};
