//! LoRA training: data, the run's config, learning-rate schedules, the optimizer, the step log,
//! checkpoints and the trainer loop that runs them. The forward and backward are the model's
//! (model/loss.rs); training calls the model, never a kernel.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod log;
pub mod optimizer;
pub mod schedule;
pub mod trainer;
