//! The GPU layer: device and adapter choice, tensors and texture matrices, the shader
//! preprocessor and pipeline cache, launch recording and the profiler.

pub mod device;
pub mod pipeline;
pub mod profiler;
pub mod q4;
pub mod q8;
pub mod recorder;
pub mod shader;
pub mod tensor;
pub mod texture;

pub use device::{AdapterSummary, BackendChoice, Caps, Disabled, Gpu, GpuOptions, list_adapters};
pub use pipeline::PipelineKey;
pub use profiler::{
    Clock, KernelSummary, KernelTiming, Op, OpTiming, Profile, group_ms, time_op, time_ops, time_ops_with_work,
};
pub use recorder::{Recorder, Resource, Work, flat_grid, fold_grid};
pub use tensor::{DType, MemoryMeter, Tensor};
pub use texture::{Layout, Matrix, TexMatrix};
