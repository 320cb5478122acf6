//! LoRA training: data, the forward and backward of a step with the base frozen, the learning
//! rate schedules, checkpoints and the trainer that runs them.

pub mod checkpoint;
pub mod data;
pub mod schedule;
pub mod step;
pub mod trainer;
