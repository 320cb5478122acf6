//! Atomic file writes: results, caches and checkpoints are written to a temporary file beside
//! their destination, flushed to disk, then renamed over it, so a crash or a full disk leaves
//! either the old file or the new one, never a torn one.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `contents` to `path` atomically (creating its folder).
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(contents.as_ref())?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// Writes a safetensors file atomically: (name, shape, little-endian bytes) in one `dtype`, with
/// `metadata` in its header.
pub fn write_safetensors(
    path: &Path,
    dtype: safetensors::Dtype,
    tensors: &[(String, Vec<usize>, &[u8])],
    metadata: std::collections::HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(n, shape, b)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::file(path, format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let data =
        safetensors::serialize(views, Some(metadata)).map_err(|e| Error::file(path, format!("serializing: {e}")))?;
    write_atomic(path, data)
}

/// The metadata PyTorch's safetensors loaders expect.
pub fn pt_metadata() -> std::collections::HashMap<String, String> {
    [("format".to_string(), "pt".to_string())].into()
}
