//! Atomic file writes: results, caches and checkpoints are written to a temporary file beside
//! their destination, flushed to disk, then renamed over it, so a crash or a full disk leaves
//! either the old file or the new one, never a torn one. Only regular files are replaced (the
//! rename would put a file where a symbolic link or a device was), and the temporary files of
//! writers that were killed are removed by the next write in their folder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// A temporary file of a killed writer, on systems without /proc to ask whether it still runs,
/// is taken as abandoned after this long (a checkpoint is written in seconds).
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Writes `contents` to `path` atomically (creating its folder).
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    check_replaceable(path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    remove_stale_temps(dir);
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
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, e)
    })
}

/// `path` is absent or a regular file: anything else (a symbolic link, a folder, a device, a
/// pipe) is refused rather than replaced by a file.
pub fn check_replaceable(path: &Path) -> Result<()> {
    let ft = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::file(path, e)),
        Ok(m) => m.file_type(),
    };
    let what = if ft.is_file() {
        return Ok(());
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a folder"
    } else {
        "a device, pipe or socket"
    };
    Err(Error::file(
        path,
        format!("is {what}, not a regular file: lorafuse writes only over files; choose another path"),
    ))
}

/// Whether process `pid` runs, where /proc can tell.
fn running(pid: u32) -> Option<bool> {
    Path::new("/proc/self").exists().then(|| Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes the temporary files `write_atomic` left in `dir` when its process was killed mid-write
/// (`.NAME.tmpPID` of a process no longer running). Best effort: what cannot be read or removed
/// stays.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp")).and_then(|(_, p)| p.parse().ok())
        else {
            continue;
        };
        let abandoned = match running(pid) {
            Some(alive) => !alive,
            None => {
                e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|a| a > ABANDONED_AFTER))
            }
        };
        if abandoned && pid != std::process::id() && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `p` with symbolic links and `..` resolved as far as it exists (outputs often do not yet).
fn resolved(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut rest = Vec::new();
    let mut base = abs.as_path();
    loop {
        if let Ok(c) = base.canonicalize() {
            return rest.iter().rev().fold(c, |acc, part| acc.join(part));
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                base = parent;
            }
            _ => return abs,
        }
    }
}

/// An output `out` that is, holds or lies inside one of `inputs` is refused before anything is
/// written: a fusion written over its own input adapter would destroy it.
pub fn refuse_overlap(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let o = resolved(out);
    for i in inputs {
        let r = resolved(i);
        let how = if o == r {
            "is"
        } else if r.starts_with(&o) {
            "holds"
        } else if o.starts_with(&r) {
            "lies inside"
        } else {
            continue;
        };
        return Err(Error::file(
            out,
            format!("{how} an input of this command, {}: write the output somewhere else", i.display()),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lorafuse-atomic-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn only_regular_files_are_replaced() {
        let dir = temp("replace");
        let target = dir.join("target.json");
        write_atomic(&target, "old").unwrap();
        write_atomic(&target, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        #[cfg(unix)]
        {
            let link = dir.join("link.json");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let e = write_atomic(&link, "x").unwrap_err().to_string();
            assert!(e.contains("link.json") && e.contains("symbolic link"), "{e}");
            assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
            let e = write_atomic(Path::new("/dev/null"), "x").unwrap_err().to_string();
            assert!(e.contains("/dev/null") && e.contains("device"), "{e}");
        }
        let e = write_atomic(&dir, "x").unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temps_of_killed_writers_are_removed_by_the_next_write() {
        let dir = temp("stale");
        // a pid above Linux's limit (2^22) runs nowhere; our own pid's file is a live write
        let stale = dir.join(".checkpoint.safetensors.tmp4194305");
        let live = dir.join(format!(".other.json.tmp{}", std::process::id()));
        let unrelated = dir.join(".notes.tmp");
        for f in [&stale, &live, &unrelated] {
            std::fs::write(f, "x").unwrap();
        }
        write_atomic(&dir.join("a.json"), "{}").unwrap();
        if running(1).is_some() {
            assert!(!stale.exists(), "a killed writer's temp file stays");
        }
        assert!(live.exists() && unrelated.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_over_inputs_are_refused() {
        let dir = temp("overlap");
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        let inputs = [a.clone(), b.clone()];
        assert!(refuse_overlap(&dir.join("c"), &inputs).is_ok());
        for (out, how) in [(a.clone(), "is an input"), (dir.clone(), "holds"), (a.join("x/y"), "lies inside")] {
            let e = refuse_overlap(&out, &inputs).unwrap_err().to_string();
            assert!(e.contains(how), "{}: {e}", out.display());
        }
        // the same folder by another spelling
        let e = refuse_overlap(&dir.join("a/../a/"), &inputs).unwrap_err().to_string();
        assert!(e.contains("is an input"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
