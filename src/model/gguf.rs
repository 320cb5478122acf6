//! GGUF (v2 and v3) files: header, metadata, tensor directory, and tensor data read on demand.
//! Every failure names the file and, where one is involved, the key or tensor.
//!
//! Layout: magic "GGUF", version u32, tensor count u64, metadata count u64; metadata as (key
//! string, type u32, value); tensor infos as (name, n_dims u32, dims u64×n, GGML type u32,
//! offset u64); then data from the first multiple of `general.alignment` (default 32). Strings
//! are a u64 length and UTF-8 bytes. Dims are innermost first: a Hugging Face [out, in] weight
//! is stored with dims [in, out].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::quant::{GgmlType, dequantize};

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Innermost first (GGUF order).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row-major shape, outermost first (a Hugging Face weight's [out, in]).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

pub struct Gguf {
    path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
    file_len: u64,
}

/// The largest tensor dimension read: a vocabulary or a hidden size is far below it, and a
/// corrupt count above it is called that, not a truncated file.
const MAX_TENSOR_DIM: u64 = 1 << 32;

/// A reader that knows how many bytes remain, so a corrupt length is an error, not an
/// allocation of gigabytes.
struct Cursor<R> {
    r: R,
    pos: u64,
    len: u64,
    path: PathBuf,
}

impl<R: Read> Cursor<R> {
    fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::file(&self.path, format!("{what} (at byte {})", self.pos))
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(self.err(format!("truncated: {what} needs {n} bytes, {} remain", self.len - self.pos)));
        }
        let mut buf = vec![0u8; n as usize];
        self.r.read_exact(&mut buf).map_err(|e| self.err(format!("reading {what}: {e}")))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(format!("metadata '{key}': arrays nested too deep")));
                }
                let ety = self.u32(key)?;
                let n = self.u64(key)?;
                // Every element takes at least one byte: a count past the file's end is corrupt.
                if n > self.len - self.pos {
                    return Err(self.err(format!("metadata '{key}': array of {n} elements cannot fit the file")));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(self.err(format!("metadata '{key}': unknown value type {other}"))),
        })
    }
}

impl Gguf {
    /// Reads the header, metadata and tensor directory, and checks that every tensor's data lies
    /// inside the file.
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = File::open(path).map_err(|e| Error::file(path, e))?;
        let len = file.metadata().map_err(|e| Error::file(path, e))?.len();
        let mut c = Cursor { r: BufReader::new(file), pos: 0, len, path: path.to_path_buf() };
        let magic = c.bytes(4, "magic").map_err(|_| Error::file(path, "not a GGUF file (shorter than its header)"))?;
        if magic != b"GGUF" {
            return Err(Error::file(path, format!("not a GGUF file (magic {:?})", String::from_utf8_lossy(&magic))));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::file(path, format!("GGUF version {version} (this reader takes 2 and 3)")));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_tensors > len || n_kv > len {
            return Err(Error::file(path, format!("corrupt header: {n_tensors} tensors, {n_kv} metadata entries")));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(c.err(format!("tensor '{name}': {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64(&name)?;
                if d > MAX_TENSOR_DIM {
                    return Err(c.err(format!(
                        "tensor '{name}': dimension {d} is implausible (the most taken is 2^32): a corrupt header"
                    )));
                }
                dims.push(d);
            }
            let ty = GgmlType::from_id(c.u32(&name)?);
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo { name, dims, ty, offset });
        }
        let align = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| Error::file(path, format!("general.alignment is {v:?}, not a power of two")))?,
            None => 32,
        };
        let data_start = c.pos.div_ceil(align) * align;
        let g = Gguf { path: path.to_path_buf(), version, metadata, tensors, data_start, file_len: len };
        // llama.cpp's rule: each tensor's data starts where the one before it ended, padded to the
        // alignment. A wrong type or dimension then shows as a misplaced offset (or as bytes left
        // after the last tensor) instead of reading another tensor's bytes.
        let mut expected = 0u64;
        for t in &g.tensors {
            let numel = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let bytes = numel
                .ok_or_else(|| g.tensor_err(&t.name, format!("dims {:?} overflow", t.dims)))
                .and_then(|n| t.ty.bytes_for(n).map_err(|e| g.tensor_err(&t.name, e)))?;
            if t.offset % align != 0 {
                return Err(g.tensor_err(&t.name, format!("data offset {} is not aligned to {align}", t.offset)));
            }
            if t.offset != expected {
                return Err(g.tensor_err(
                    &t.name,
                    format!(
                        "data offset {} where the tensors before it end at {expected}: a wrong type, dimension or offset in the header",
                        t.offset
                    ),
                ));
            }
            expected = t.offset.saturating_add(bytes.div_ceil(align).saturating_mul(align));
            let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(bytes));
            if end.is_none_or(|e| e > len) {
                return Err(g.tensor_err(
                    &t.name,
                    format!(
                        "data [{}, +{bytes}) runs past the end of the file ({len} bytes): the file is truncated",
                        data_start + t.offset
                    ),
                ));
            }
        }
        let described = data_start.saturating_add(expected);
        if len > described {
            return Err(Error::file(
                path,
                format!(
                    "{} bytes after the last tensor's data (the directory describes {described} of {len}): a wrong type or dimension in the header",
                    len - described
                ),
            ));
        }
        Ok(g)
    }

    pub fn tensor_err(&self, name: &str, msg: impl std::fmt::Display) -> Error {
        Error::file(&self.path, format!("tensor '{name}': {msg}"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| self.tensor_err(name, "missing"))
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        let bytes = t.ty.bytes_for(t.numel()).map_err(|e| self.tensor_err(&t.name, e))?;
        let mut f = File::open(&self.path).map_err(|e| Error::file(&self.path, e))?;
        f.seek(SeekFrom::Start(self.data_start + t.offset)).map_err(|e| self.tensor_err(&t.name, e))?;
        let mut buf = vec![0u8; bytes as usize];
        f.read_exact(&mut buf).map_err(|e| self.tensor_err(&t.name, format!("reading data: {e}")))?;
        debug_assert!(self.data_start + t.offset + bytes <= self.file_len);
        Ok(buf)
    }

    /// A tensor dequantized to f32, row-major (outermost dimension first).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.tensor(name)?;
        let bytes = self.tensor_bytes(t)?;
        let v = dequantize(t.ty, &bytes, t.numel() as usize).map_err(|e| self.tensor_err(name, e))?;
        Ok((t.shape(), v))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn meta_err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::file(&self.path, format!("metadata '{key}': {msg}"))
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .ok_or_else(|| self.meta_err(key, "missing"))?
            .as_u64()
            .ok_or_else(|| self.meta_err(key, "not an integer"))
    }

    /// An optional integer: absent is None, present of another type an error (never read as
    /// absent, which would put a default in its place).
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| v.as_u64().ok_or_else(|| self.meta_err(key, format!("{v:?} is not an integer"))))
            .transpose()
    }

    /// An optional number, as `opt_u64`.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.meta_err(key, format!("{v:?} is not a number"))))
            .transpose()
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .ok_or_else(|| self.meta_err(key, "missing"))?
            .as_f64()
            .ok_or_else(|| self.meta_err(key, "not a number"))
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| self.meta_err(key, "missing"))?
            .as_str()
            .ok_or_else(|| self.meta_err(key, "not a string"))
    }

    pub fn str_array(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key) {
            Some(Value::Array(a)) => {
                a.iter().map(|v| v.as_str().ok_or_else(|| self.meta_err(key, "not an array of strings"))).collect()
            }
            Some(_) => Err(self.meta_err(key, "not an array")),
            None => Err(self.meta_err(key, "missing")),
        }
    }

    pub fn int_array(&self, key: &str) -> Result<Vec<i64>> {
        match self.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(*x as i64),
                    Value::I64(x) => Ok(*x),
                    other => other.as_u64().map(|x| x as i64).ok_or_else(|| self.meta_err(key, "not an integer array")),
                })
                .collect(),
            Some(_) => Err(self.meta_err(key, "not an array")),
            None => Err(self.meta_err(key, "missing")),
        }
    }
}
