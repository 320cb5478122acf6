//! One error type for the library: every variant says what was wrong and where (file, tensor,
//! shape, limit), so the command line can print it as it is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no GPU adapter found for backend '{backend}'{hint}")]
    NoAdapter { backend: String, hint: String },

    #[error("adapter index {index} out of range: {count} adapter(s) for backend '{backend}' (see `lorafuse devices`)")]
    AdapterIndex { index: usize, count: usize, backend: String },

    #[error("unknown backend '{0}' (expected vulkan, metal, dx12, gl or auto)")]
    UnknownBackend(String),

    #[error("could not open the GPU device on '{adapter}': {message}")]
    Device { adapter: String, message: String },

    #[error("{what}: {requested} bytes exceeds the device limit {limit_name} = {limit} bytes")]
    OverLimit { what: String, requested: u64, limit_name: &'static str, limit: u64 },

    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: String, detail: String },

    #[error("dtype mismatch in {op}: {detail}")]
    DType { op: String, detail: String },

    #[error("kernel '{kernel}' variant '{variant}' is not available on this device: {reason}")]
    Unsupported { kernel: String, variant: String, reason: String },

    #[error("shader '{name}' failed to compile: {message}")]
    Shader { name: String, message: String },

    #[error("GPU error during {during}: {message}")]
    Gpu { during: String, message: String },

    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn shape(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Shape { op: op.into(), detail: detail.into() }
    }

    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File { path: path.into(), message: message.to_string() }
    }
}
