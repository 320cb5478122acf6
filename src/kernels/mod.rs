//! Kernels: each file launches one WGSL file of shaders/ and holds its CPU reference.

pub mod attention;
pub mod ceiling;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod lora;
pub mod lora_merge;
pub mod matmul;
pub mod matmul_blocked;
pub mod matmul_texture;
pub mod matmul_tiled;
pub mod optimizer;
pub mod pack;
pub mod rmsnorm;
pub mod rope;
