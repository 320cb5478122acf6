//! A tensor is a storage buffer with a shape and an element type. Row-major, dense.

use std::fmt;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Element types a buffer can hold. f16 values are stored two to a 32-bit word (element 2i in the
/// low half), which every WGSL implementation reads with `unpack2x16float`, with or without the
/// `shader-f16` feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    U32,
    /// 4-bit blocks of 32 with an f32 scale and offset (src/gpu/q4.rs): texture matrices only.
    Q4,
    /// 8-bit blocks of 32 with an f32 scale (GGUF's Q8_0, src/gpu/q8.rs): texture matrices only.
    Q8,
}

impl DType {
    pub fn bytes_for(self, numel: usize) -> u64 {
        match self {
            DType::F32 | DType::U32 => 4 * numel as u64,
            DType::F16 => 2 * numel as u64,
            DType::Q4 => numel.div_ceil(32) as u64 * 24,
            DType::Q8 => numel.div_ceil(32) as u64 * 36,
        }
    }

    /// Blocks of 32 with scales (texture matrices only).
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q4 | DType::Q8)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
            DType::Q4 => "q4",
            DType::Q8 => "q8",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    shape: Vec<usize>,
    dtype: DType,
    _alloc: std::sync::Arc<Allocation>,
}

/// Counts device memory while a buffer or texture lives (shared by a tensor's clones).
#[derive(Debug)]
pub(crate) struct Allocation {
    bytes: u64,
    meter: std::sync::Arc<MemoryMeter>,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.meter.live.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Bytes of buffers and textures alive on the device, and the most there were at once.
#[derive(Debug, Default)]
pub struct MemoryMeter {
    live: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
}

impl MemoryMeter {
    pub(crate) fn allocate(self: &std::sync::Arc<Self>, bytes: u64) -> std::sync::Arc<Allocation> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.live.fetch_add(bytes, Relaxed) + bytes;
        self.peak.fetch_max(now, Relaxed);
        std::sync::Arc::new(Allocation { bytes, meter: self.clone() })
    }

    pub fn live(&self) -> u64 {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts a new peak measurement from what is alive now.
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype)
    }
}

/// Buffer sizes are rounded up to 16 bytes so any tensor can also be bound as `array<vec4<f32>>`.
fn padded_size(bytes: u64) -> u64 {
    bytes.max(16).div_ceil(16) * 16
}

/// What `poison` writes after a tensor's elements (its padding and guard): a NaN pattern no
/// kernel computes, so a write past the elements shows.
const SENTINEL: [u8; 4] = 0x7FC0_BEEFu32.to_le_bytes();

impl Tensor {
    /// A zero-filled tensor (wgpu clears new buffers).
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        Tensor::guarded(gpu, shape, dtype, 0, label)
    }

    /// A zero-filled tensor whose buffer runs `guard` more 32-bit words past its elements (and
    /// their padding): `poison` and `fill_guard` put sentinels there and `guard_write` finds the
    /// first one a kernel overwrote. Kernels bind whole buffers, so a kernel that writes past
    /// its output's shape writes there.
    pub fn guarded(gpu: &Gpu, shape: &[usize], dtype: DType, guard: usize, label: &str) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let bytes = padded_size(dtype.bytes_for(numel)) + 4 * guard as u64;
        gpu.check_binding(&format!("tensor '{label}' {shape:?} {dtype}"), bytes)?;
        let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Tensor { buffer, shape: shape.to_vec(), dtype, _alloc: gpu.memory().allocate(bytes) })
    }

    pub fn from_f32(gpu: &Gpu, shape: &[usize], data: &[f32], label: &str) -> Result<Tensor> {
        check_len(label, shape, data.len())?;
        let t = Tensor::zeros(gpu, shape, DType::F32, label)?;
        gpu.queue().write_buffer(&t.buffer, 0, bytemuck::cast_slice(data));
        Ok(t)
    }

    /// Stores `data` rounded to f16.
    pub fn from_f32_as_f16(gpu: &Gpu, shape: &[usize], data: &[f32], label: &str) -> Result<Tensor> {
        check_len(label, shape, data.len())?;
        let t = Tensor::zeros(gpu, shape, DType::F16, label)?;
        let mut halves: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
        if halves.len() % 2 == 1 {
            halves.push(half::f16::ZERO);
        }
        gpu.queue().write_buffer(&t.buffer, 0, bytemuck::cast_slice(&halves));
        Ok(t)
    }

    pub fn from_u32(gpu: &Gpu, shape: &[usize], data: &[u32], label: &str) -> Result<Tensor> {
        check_len(label, shape, data.len())?;
        let t = Tensor::zeros(gpu, shape, DType::U32, label)?;
        gpu.queue().write_buffer(&t.buffer, 0, bytemuck::cast_slice(data));
        Ok(t)
    }

    /// Overwrites every element with NaN (u32: 0xFFFF_FFFF), so a kernel that skips an output
    /// element is caught by the comparison that follows; the rest of the buffer gets sentinels.
    pub fn poison(&self, gpu: &Gpu) {
        let mut fill = vec![0xFFu8; self.buffer.size() as usize];
        self.sentinels(&mut fill);
        gpu.queue().write_buffer(&self.buffer, 0, &fill);
    }

    /// Writes sentinels after the elements (the elements keep their values).
    pub fn fill_guard(&self, gpu: &Gpu) {
        let mut fill = vec![0u8; self.buffer.size() as usize];
        self.sentinels(&mut fill);
        let start = self.guard_start();
        if start < fill.len() {
            gpu.queue().write_buffer(&self.buffer, start as u64, &fill[start..]);
        }
    }

    /// Where the guard starts: after the elements' last 32-bit word (f16 elements are stored
    /// two to a word, and kernels write whole words).
    fn guard_start(&self) -> usize {
        (self.bytes() as usize).div_ceil(4) * 4
    }

    fn sentinels(&self, buf: &mut [u8]) {
        let start = self.guard_start();
        for (i, b) in buf.iter_mut().enumerate().skip(start) {
            *b = SENTINEL[i % 4];
        }
    }

    /// The byte offset, from the end of the elements, of the first sentinel a kernel overwrote
    /// since `poison` or `fill_guard`; None when all are intact. Waits for the GPU.
    pub fn guard_write(&self, gpu: &Gpu) -> Result<Option<usize>> {
        let bytes = read_bytes(gpu, &self.buffer)?;
        let start = self.guard_start();
        Ok((start..bytes.len()).find(|&i| bytes[i] != SENTINEL[i % 4]).map(|i| i - start))
    }

    /// The same buffer under another shape, which must fit in it (a harness's view of an output
    /// past its shape).
    pub fn view(&self, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if self.dtype.bytes_for(numel) > self.buffer.size() {
            return Err(Error::shape("Tensor::view", format!("{shape:?} does not fit a buffer of {:?}", self.shape)));
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    pub fn write_f32(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        if self.dtype != DType::F32 || data.len() != self.numel() {
            return Err(Error::shape(
                "Tensor::write_f32",
                format!("{} values for a {:?} {} tensor", data.len(), self.shape, self.dtype),
            ));
        }
        gpu.queue().write_buffer(&self.buffer, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copies the tensor back to the host as f32 (f16 widened). Waits for the GPU.
    pub fn read_f32(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let bytes = read_bytes(gpu, &self.buffer)?;
        let n = self.numel();
        Ok(match self.dtype {
            DType::F32 => bytemuck::cast_slice::<u8, f32>(&bytes)[..n].to_vec(),
            DType::F16 => bytemuck::cast_slice::<u8, half::f16>(&bytes)[..n].iter().map(|h| h.to_f32()).collect(),
            DType::U32 => bytemuck::cast_slice::<u8, u32>(&bytes)[..n].iter().map(|&u| u as f32).collect(),
            DType::Q4 | DType::Q8 => {
                return Err(Error::DType {
                    op: "Tensor::read_f32".into(),
                    detail: "no quantized buffers exist".into(),
                });
            }
        })
    }

    pub fn read_u32(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        let bytes = read_bytes(gpu, &self.buffer)?;
        Ok(bytemuck::cast_slice::<u8, u32>(&bytes)[..self.numel()].to_vec())
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        self.dtype.bytes_for(self.numel())
    }

    /// (rows, cols) of a 2-D tensor; errors name `op` otherwise.
    pub fn dims2(&self, op: &str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Ok((r, c)),
            _ => Err(Error::shape(op, format!("expected a 2-D tensor, got shape {:?}", self.shape))),
        }
    }

    pub fn expect_dtype(&self, op: &str, what: &str, want: &[DType]) -> Result<()> {
        if want.contains(&self.dtype) {
            Ok(())
        } else {
            Err(Error::DType { op: op.into(), detail: format!("{what} is {}, expected one of {:?}", self.dtype, want) })
        }
    }
}

fn check_len(label: &str, shape: &[usize], len: usize) -> Result<()> {
    let numel: usize = shape.iter().product();
    if numel == len {
        Ok(())
    } else {
        Err(Error::shape(format!("tensor '{label}'"), format!("{len} values for shape {shape:?} ({numel} elements)")))
    }
}

/// Copies a whole buffer to the host through a staging buffer.
pub(crate) fn read_bytes(gpu: &Gpu, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
    let size = buffer.size();
    let staging = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
    enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
    gpu.queue().submit([enc.finish()]);
    map_read(gpu, &staging)
}

/// Maps a MAP_READ buffer, waits, and returns its bytes.
pub(crate) fn map_read(gpu: &Gpu, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    gpu.wait()?;
    rx.recv()
        .map_err(|e| Error::Gpu { during: "readback".into(), message: e.to_string() })?
        .map_err(|e| Error::Gpu { during: "readback".into(), message: e.to_string() })?;
    let bytes = staging
        .get_mapped_range(..)
        .map_err(|e| Error::Gpu { during: "readback".into(), message: e.to_string() })?
        .to_vec();
    staging.unmap();
    Ok(bytes)
}
