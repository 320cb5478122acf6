//! Kernels: each file launches one WGSL file of shaders/ and holds its CPU reference; matmul/
//! holds the matmul family (dispatcher, the three kernel families, packing, the tuner).

pub mod attention;
pub mod ceiling;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod harness;
pub mod lora;
pub mod lora_merge;
pub mod matmul;
pub mod optimizer;
pub mod rmsnorm;
pub mod rope;
