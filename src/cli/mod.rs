//! Subcommands of the `lorafuse` binary that need more than a few lines.

pub mod bench;
pub mod eval;
pub mod export;
pub mod fuse;
pub mod generate;
pub mod logits;
pub mod model;
pub mod pipeline;
pub mod profile;
pub mod results;
pub mod serve;
pub mod sweep;
pub mod train;
