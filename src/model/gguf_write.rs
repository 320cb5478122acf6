//! GGUF files out (version 3, as llama.cpp's ggml/src/gguf.cpp reads them): the header, the
//! metadata pairs, the tensor infos, then each tensor's bytes at 32-byte-aligned offsets laid end
//! to end in info order (the reader rejects gaps and reordering). Written atomically: a failed or
//! interrupted export leaves no half-written file behind.
//!
//! llama.cpp checks every metadata type exactly (an F64 where it wants F32 aborts the process),
//! so callers give each key the type llama.cpp's loader reads.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::gguf::Value;
use crate::model::quant::GgmlType;

/// Where each tensor's data starts (and the data section itself), in bytes.
const ALIGNMENT: usize = 32;
/// llama.cpp's GGML_MAX_NAME: names must be shorter.
const MAX_NAME: usize = 64;

/// Metadata pairs in the order they are written.
pub type Metadata = Vec<(String, Value)>;

/// One tensor: its name, dimensions innermost first (GGUF order: a row-major [out, in] matrix is
/// [in, out]), type and little-endian bytes.
#[derive(Debug)]
pub struct TensorOut {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

impl TensorOut {
    /// An f32 tensor of row-major `shape` (outermost first).
    pub fn f32(name: impl Into<String>, shape: &[usize], values: &[f32]) -> TensorOut {
        TensorOut {
            name: name.into(),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ty: GgmlType::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Writes a GGUF file of `metadata` (in order) and `tensors` (in order) to `path`, atomically.
/// Duplicate keys or names, names of 64 bytes or more, dims over 4, and data whose size does not
/// match its dims and type are errors naming the file.
pub fn write_gguf(path: &Path, metadata: &[(String, Value)], tensors: &[TensorOut]) -> Result<()> {
    let bad = |msg: String| Error::file(path, msg);
    let mut keys = BTreeSet::new();
    for (k, _) in metadata {
        if !keys.insert(k.as_str()) {
            return Err(bad(format!("metadata key '{k}' given twice")));
        }
    }
    let mut names = BTreeSet::new();
    for t in tensors {
        if t.name.len() >= MAX_NAME {
            return Err(bad(format!(
                "tensor name '{}' is {} bytes (llama.cpp takes < {MAX_NAME})",
                t.name,
                t.name.len()
            )));
        }
        if !names.insert(t.name.as_str()) {
            return Err(bad(format!("tensor '{}' given twice", t.name)));
        }
        if t.dims.is_empty() || t.dims.len() > 4 {
            return Err(bad(format!("tensor '{}' has {} dimensions (1 to 4)", t.name, t.dims.len())));
        }
        if let Some((per, _)) = t.ty.block()
            && !t.dims[0].is_multiple_of(per as u64)
        {
            return Err(bad(format!(
                "tensor '{}': rows of {} are not whole {} blocks",
                t.name,
                t.dims[0],
                t.ty.name()
            )));
        }
        let want = t.ty.bytes_for(t.dims.iter().product()).map_err(|e| bad(format!("tensor '{}': {e}", t.name)))?;
        if t.data.len() as u64 != want {
            return Err(bad(format!(
                "tensor '{}': {} bytes for dims {:?} of {} (expected {want})",
                t.name,
                t.data.len(),
                t.dims,
                t.ty.name()
            )));
        }
    }
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend(type_id(v).to_le_bytes());
        put_value(&mut out, v).map_err(|e| bad(format!("metadata '{k}': {e}")))?;
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for &d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += t.data.len().next_multiple_of(ALIGNMENT) as u64;
    }
    for t in tensors {
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
        out.extend(&t.data);
    }
    out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
    crate::atomic::write_atomic(path, &out)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Array(items) => {
            // one element type, no nesting (llama.cpp's reader takes neither mixed nor nested)
            let ty = items.first().map_or(4, type_id);
            if items.iter().any(|i| type_id(i) != ty || ty == 9) {
                return Err(Error::Invalid("arrays hold one scalar or string type".into()));
            }
            out.extend(ty.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::Gguf;

    #[test]
    fn what_is_written_reads_back() {
        let dir = std::env::temp_dir().join(format!("lorafuse-gguf-write-{}", std::process::id()));
        let path = dir.join("t.gguf");
        let meta = vec![
            ("general.architecture".to_string(), Value::Str("llama".into())),
            ("adapter.lora.alpha".to_string(), Value::F32(16.0)),
            ("tokenizer.ggml.tokens".to_string(), Value::Array(vec![Value::Str("a".into()), Value::Str("bc".into())])),
        ];
        let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let tensors = vec![TensorOut::f32("x.lora_a", &[2, 3], &a), TensorOut::f32("y", &[5], &[1.0; 5])];
        write_gguf(&path, &meta, &tensors).unwrap();
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get("adapter.lora.alpha"), Some(&Value::F32(16.0)));
        assert_eq!(g.str_array("tokenizer.ggml.tokens").unwrap(), vec!["a", "bc"]);
        let (shape, got) = g.tensor_f32("x.lora_a").unwrap();
        assert_eq!((shape, got), (vec![2, 3], a));
        assert_eq!(g.tensor("y").unwrap().offset, 32, "the second tensor starts at the next 32-byte boundary");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_tensors_are_refused_and_nothing_is_written() {
        let dir = std::env::temp_dir().join(format!("lorafuse-gguf-bad-{}", std::process::id()));
        let path = dir.join("bad.gguf");
        let long = "n".repeat(64);
        let mut short = TensorOut::f32("s", &[4], &[0.0; 4]);
        short.data.pop();
        let q8 = TensorOut { name: "q".into(), dims: vec![16, 2], ty: GgmlType::Q8_0, data: vec![0; 34] };
        for (tensors, what) in [
            (vec![TensorOut::f32(long.as_str(), &[1], &[0.0])], "64 bytes"),
            (vec![TensorOut::f32("a", &[1], &[0.0]), TensorOut::f32("a", &[1], &[0.0])], "twice"),
            (vec![short], "expected 16"),
            (vec![q8], "whole Q8_0 blocks"),
        ] {
            let e = write_gguf(&path, &[], &tensors).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("bad.gguf"), "{e}");
            assert!(!path.exists());
        }
        let dup = vec![("k".to_string(), Value::U32(1)), ("k".to_string(), Value::U32(2))];
        assert!(write_gguf(&path, &dup, &[]).unwrap_err().to_string().contains("twice"));
    }
}
