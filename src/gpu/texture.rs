//! Matrices held in textures, and the `Matrix` type that says where a kernel operand lives.
//!
//! On CPU drivers (lavapipe) a texel fetch costs about half an indexed storage-buffer load, so the
//! fastest matmuls there keep both operands in textures (../docs/LAVAPIPE.md). A [rows, cols]
//! matrix becomes a 2-D array texture:
//! - f32: rgba32float, texel x of a row holds cols 4x..4x+3;
//! - f16: rgba32uint, texel x holds cols 8x..8x+7 (pack2x16float pairs);
//! - 4-bit and 8-bit blocks: rgba32uint quants (32 and 16 values a texel) and a rgba32float
//!   texture of block scales beside them (src/gpu/q4.rs, src/gpu/q8.rs);
//! - the row length is padded with zeros to `col_align` columns, so kernels walk the inner
//!   dimension in whole chunks without bounds tests;
//! - rows are padded with zeros to a multiple of `ROW_ALIGN` and split across layers of at most
//!   `max_texture_dimension_2d` rows (rounded down to `ROW_ALIGN`), which is how a 49152-row
//!   embedding fits a 16384-texel limit: a chunk of `ROW_ALIGN` rows never straddles two layers.

use crate::error::{Error, Result};
use crate::gpu::q4::{self, Q4Block};
use crate::gpu::q8::{self, Q8Block};
use crate::gpu::{DType, Gpu, Tensor};

/// Rows of a texture matrix are padded to this multiple.
pub const ROW_ALIGN: usize = 64;

#[derive(Clone, Debug)]
pub struct TexMatrix {
    pub(crate) texture: wgpu::Texture,
    pub(crate) view: wgpu::TextureView,
    /// Quantized matrices: the scale texture beside the quants ((d, m) pairs for 4-bit, d for 8-bit).
    pub(crate) scales: Option<(wgpu::Texture, wgpu::TextureView)>,
    rows: usize,
    cols: usize,
    dtype: DType,
    /// Texels per texture row.
    pub(crate) width: u32,
    pub(crate) rows_per_layer: u32,
    pub(crate) layers: u32,
    pub(crate) col_align: usize,
    _alloc: std::sync::Arc<crate::gpu::tensor::Allocation>,
}

fn new_texture(
    gpu: &Gpu,
    label: &str,
    width: u32,
    rows: u32,
    layers: u32,
    format: wgpu::TextureFormat,
) -> (wgpu::Texture, wgpu::TextureView) {
    let texture = gpu.device().create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size: wgpu::Extent3d { width, height: rows, depth_or_array_layers: layers },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::TEXTURE_BINDING
            | wgpu::TextureUsages::STORAGE_BINDING
            | wgpu::TextureUsages::COPY_DST
            | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let view = texture.create_view(&wgpu::TextureViewDescriptor {
        label: Some(label),
        dimension: Some(wgpu::TextureViewDimension::D2Array),
        ..Default::default()
    });
    (texture, view)
}

/// Writes `texels` (rows_per_layer × layers rows of `width` texels) into `texture`, layer by layer.
fn write_layers(gpu: &Gpu, texture: &wgpu::Texture, texels: &[u8], width: u32, rows_per_layer: u32, layers: u32) {
    let bytes_per_row = width * 16;
    let layer_bytes = bytes_per_row as usize * rows_per_layer as usize;
    for layer in 0..layers {
        let start = layer as usize * layer_bytes;
        gpu.queue().write_texture(
            wgpu::TexelCopyTextureInfo {
                texture,
                mip_level: 0,
                origin: wgpu::Origin3d { x: 0, y: 0, z: layer },
                aspect: wgpu::TextureAspect::All,
            },
            &texels[start..start + layer_bytes],
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(bytes_per_row),
                rows_per_image: Some(rows_per_layer),
            },
            wgpu::Extent3d { width, height: rows_per_layer, depth_or_array_layers: 1 },
        );
    }
}

/// The subgroup size texture matrices are laid out for: a single fixed size, small enough that
/// the texture kernels name its lanes as constants (4, 8 or 16). None: no texture layout here.
pub fn subgroup_size(gpu: &Gpu) -> Option<u32> {
    let caps = gpu.caps();
    match caps.fixed_subgroup_size {
        Some(sg @ (4 | 8 | 16)) if caps.subgroups => Some(sg),
        _ => None,
    }
}

/// Column padding of texture matrices on this device: one chunk of the kernels' inner loop, a
/// vec4 per lane of a subgroup.
pub fn col_align(gpu: &Gpu) -> Result<usize> {
    subgroup_size(gpu).map(|sg| 4 * sg as usize).ok_or_else(|| Error::Unsupported {
        kernel: "matmul".into(),
        variant: "texture".into(),
        reason: "needs subgroups of one fixed size (4, 8 or 16)".into(),
    })
}

/// The texel bytes of `data` ([rows, cols] row-major) in the texture layout: `width` texels a
/// row over `padded_rows` rows, zero padded. The host-side packer of uploads, and the reference
/// the GPU pack kernel is tested against.
pub fn pack_host(data: &[f32], rows: usize, cols: usize, dtype: DType, width: usize, padded_rows: usize) -> Vec<u8> {
    let mut out = vec![0u8; width * 16 * padded_rows];
    for r in 0..rows {
        let row = &mut out[r * width * 16..(r + 1) * width * 16];
        for c in 0..cols {
            let v = data[r * cols + c];
            match dtype {
                DType::F16 => {
                    let h = half::f16::from_f32(v).to_bits();
                    row[c * 2..c * 2 + 2].copy_from_slice(&h.to_le_bytes());
                }
                _ => row[c * 4..c * 4 + 4].copy_from_slice(&v.to_le_bytes()),
            }
        }
    }
    out
}

/// Where a matrix lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Buffer,
    Texture,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Buffer => "buffer",
            Layout::Texture => "texture",
        }
    }
}

impl TexMatrix {
    /// Geometry of a [rows, cols] matrix of `dtype` with columns padded to `col_align`.
    fn geometry(gpu: &Gpu, rows: usize, cols: usize, dtype: DType, col_align: usize) -> Result<(u32, u32, u32)> {
        let per_texel = match dtype {
            DType::F32 => 4,
            DType::F16 => 8,
            DType::Q4 => 32,
            DType::Q8 => 16,
            DType::U32 => {
                return Err(Error::DType {
                    op: "TexMatrix".into(),
                    detail: "u32 matrices have no texture layout".into(),
                });
            }
        };
        let l = &gpu.caps().limits;
        let max_dim = l.max_texture_dimension_2d as usize;
        let padded_cols = cols.max(1).div_ceil(col_align) * col_align;
        let width = padded_cols / per_texel;
        if width > max_dim {
            return Err(Error::OverLimit {
                what: format!("texture matrix [{rows}, {cols}] {dtype}: {width} texels per row"),
                requested: width as u64,
                limit_name: "max_texture_dimension_2d",
                limit: max_dim as u64,
            });
        }
        let padded_rows = rows.max(1).div_ceil(ROW_ALIGN) * ROW_ALIGN;
        let max_rows = (max_dim / ROW_ALIGN) * ROW_ALIGN;
        let rpl = padded_rows.min(max_rows);
        let layers = padded_rows.div_ceil(rpl);
        if layers > l.max_texture_array_layers as usize {
            return Err(Error::OverLimit {
                what: format!("texture matrix [{rows}, {cols}] {dtype}: {layers} layers of {rpl} rows"),
                requested: layers as u64,
                limit_name: "max_texture_array_layers",
                limit: l.max_texture_array_layers as u64,
            });
        }
        Ok((width as u32, rpl as u32, layers as u32))
    }

    /// An all-zero texture matrix.
    pub fn zeros(
        gpu: &Gpu,
        rows: usize,
        cols: usize,
        dtype: DType,
        col_align: usize,
        label: &str,
    ) -> Result<TexMatrix> {
        let (width, rpl, layers) = Self::geometry(gpu, rows, cols, dtype, col_align)?;
        if matches!(dtype, DType::Q4 | DType::Q8) && !col_align.is_multiple_of(32) {
            return Err(Error::DType {
                op: "TexMatrix".into(),
                detail: format!("{dtype} texture rows need 32-column padding (whole blocks)"),
            });
        }
        let format = match dtype {
            DType::F16 | DType::Q4 | DType::Q8 => wgpu::TextureFormat::Rgba32Uint,
            _ => wgpu::TextureFormat::Rgba32Float,
        };
        let (texture, view) = new_texture(gpu, label, width, rpl, layers, format);
        let scale_width = scale_width(dtype, width);
        let scales = (scale_width > 0)
            .then(|| new_texture(gpu, label, scale_width, rpl, layers, wgpu::TextureFormat::Rgba32Float));
        let texel_rows = rpl as u64 * layers as u64;
        let bytes = 16 * texel_rows * (width + scale_width) as u64;
        let _alloc = gpu.memory().allocate(bytes);
        Ok(TexMatrix {
            texture,
            view,
            scales,
            rows,
            cols,
            dtype,
            width,
            rows_per_layer: rpl,
            layers,
            col_align,
            _alloc,
        })
    }

    /// Uploads a host matrix (row-major [rows, cols]) into a new texture matrix.
    pub fn from_host(
        gpu: &Gpu,
        rows: usize,
        cols: usize,
        data: &[f32],
        dtype: DType,
        col_align: usize,
        label: &str,
    ) -> Result<TexMatrix> {
        if data.len() != rows * cols {
            return Err(Error::shape(
                format!("texture matrix '{label}'"),
                format!("{} values for [{rows}, {cols}]", data.len()),
            ));
        }
        if matches!(dtype, DType::Q4 | DType::Q8) {
            return Err(Error::DType {
                op: format!("texture matrix '{label}'"),
                detail: format!("{dtype} matrices come from quantized blocks (TexMatrix::from_q4 / from_q8)"),
            });
        }
        let t = Self::zeros(gpu, rows, cols, dtype, col_align, label)?;
        let texels = pack_host(data, rows, cols, dtype, t.width as usize, t.padded_rows());
        write_layers(gpu, &t.texture, &texels, t.width, t.rows_per_layer, t.layers);
        Ok(t)
    }

    /// Uploads 4-bit blocks ([rows, cols/32] blocks, cols a multiple of 32).
    pub fn from_q4(
        gpu: &Gpu,
        rows: usize,
        cols: usize,
        blocks: &[Q4Block],
        col_align: usize,
        label: &str,
    ) -> Result<TexMatrix> {
        Self::from_blocks(gpu, (rows, cols), DType::Q4, blocks.len(), col_align, label, |width, padded| {
            q4::texels(blocks, rows, cols / 32, width, padded)
        })
    }

    /// Uploads 8-bit blocks ([rows, cols/32] blocks, cols a multiple of 32).
    pub fn from_q8(
        gpu: &Gpu,
        rows: usize,
        cols: usize,
        blocks: &[Q8Block],
        col_align: usize,
        label: &str,
    ) -> Result<TexMatrix> {
        Self::from_blocks(gpu, (rows, cols), DType::Q8, blocks.len(), col_align, label, |width, padded| {
            q8::texels(blocks, rows, cols / 32, width, padded)
        })
    }

    /// A quantized matrix of `n_blocks` blocks, its (quant, scale) texel bytes made by `texels`
    /// for the texture's width and padded rows.
    fn from_blocks(
        gpu: &Gpu,
        (rows, cols): (usize, usize),
        dtype: DType,
        n_blocks: usize,
        col_align: usize,
        label: &str,
        texels: impl FnOnce(usize, usize) -> (Vec<u8>, Vec<u8>),
    ) -> Result<TexMatrix> {
        if !cols.is_multiple_of(32) || n_blocks * 32 != rows * cols {
            return Err(Error::shape(
                format!("texture matrix '{label}'"),
                format!("{n_blocks} {dtype} blocks for [{rows}, {cols}] (columns must be a multiple of 32)"),
            ));
        }
        let t = Self::zeros(gpu, rows, cols, dtype, col_align, label)?;
        let (q, s) = texels(t.width as usize, t.padded_rows());
        write_layers(gpu, &t.texture, &q, t.width, t.rows_per_layer, t.layers);
        if let Some((scales, _)) = &t.scales {
            write_layers(gpu, scales, &s, scale_width(dtype, t.width), t.rows_per_layer, t.layers);
        }
        Ok(t)
    }

    /// The same texture seen as its first `rows` rows (scratch textures are allocated for a
    /// bucket of row counts).
    pub(crate) fn with_rows(&self, rows: usize) -> TexMatrix {
        TexMatrix { rows, ..self.clone() }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Rows including the zero padding (all layers together).
    pub fn padded_rows(&self) -> usize {
        (self.rows_per_layer * self.layers) as usize
    }

    pub fn bytes(&self) -> u64 {
        (self.width + scale_width(self.dtype, self.width)) as u64 * 16 * self.padded_rows() as u64
    }

    /// The texel bytes of every row, padding included (`width` texels of 16 bytes a row over
    /// `padded_rows` rows): the layout `pack_host` writes.
    pub fn read_texels(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        let bytes_per_row =
            (self.width * 16).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let size = bytes_per_row as u64 * self.padded_rows() as u64;
        let staging = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("texture readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc =
            gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("texture readback") });
        enc.copy_texture_to_buffer(
            wgpu::TexelCopyTextureInfo {
                texture: &self.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::TexelCopyBufferInfo {
                buffer: &staging,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(bytes_per_row),
                    rows_per_image: Some(self.rows_per_layer),
                },
            },
            wgpu::Extent3d { width: self.width, height: self.rows_per_layer, depth_or_array_layers: self.layers },
        );
        gpu.queue().submit([enc.finish()]);
        let raw = crate::gpu::tensor::map_read(gpu, &staging)?;
        let row = (self.width * 16) as usize;
        Ok(raw.chunks(bytes_per_row as usize).flat_map(|r| r[..row].to_vec()).collect())
    }

    /// Overwrites the texels of the logical rows (their column padding too) with NaN bits, so a
    /// pack that skips a texel is caught; the padding rows keep their zeros.
    pub fn poison_rows(&self, gpu: &Gpu) {
        let mut texels = vec![0u8; self.width as usize * 16 * self.padded_rows()];
        texels[..self.width as usize * 16 * self.rows].fill(0xff);
        write_layers(gpu, &self.texture, &texels, self.width, self.rows_per_layer, self.layers);
    }

    /// Reads the matrix back to the host (unpadded, f32), for tests.
    pub fn read_f32(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let raw = self.read_texels(gpu)?;
        let bytes_per_row = self.width * 16;
        let per_texel = if self.dtype == DType::F16 { 8 } else { 4 };
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            let row = &raw[r * bytes_per_row as usize..][..(self.width * 16) as usize];
            for c in 0..self.cols {
                let (texel, lane) = (c / per_texel, c % per_texel);
                let v = if self.dtype == DType::F16 {
                    let word = u32::from_le_bytes(row[texel * 16 + (lane / 2) * 4..][..4].try_into().unwrap_or([0; 4]));
                    let h = if lane % 2 == 0 { word & 0xffff } else { word >> 16 };
                    half::f16::from_bits(h as u16).to_f32()
                } else {
                    f32::from_le_bytes(row[texel * 16 + lane * 4..][..4].try_into().unwrap_or([0; 4]))
                };
                out.push(v);
            }
        }
        Ok(out)
    }
}

/// Texels a row of the scale texture beside `width` quant texels (0: no scale texture).
fn scale_width(dtype: DType, width: u32) -> u32 {
    match dtype {
        DType::Q4 => width.div_ceil(2),
        DType::Q8 => q8::scale_width(width as usize) as u32,
        _ => 0,
    }
}

/// A kernel operand and where it lives: a storage buffer (any kernel) or a texture matrix (the
/// texture kernels). Weights are placed once, in the layout the autotuner chose for the device.
// A model holds a few hundred of these: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Matrix {
    Buffer(Tensor),
    Texture(TexMatrix),
}

impl Matrix {
    pub fn rows(&self) -> usize {
        match self {
            Matrix::Buffer(t) => t.shape()[0],
            Matrix::Texture(t) => t.rows(),
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Matrix::Buffer(t) => t.shape()[1],
            Matrix::Texture(t) => t.cols(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Matrix::Buffer(t) => t.dtype(),
            Matrix::Texture(t) => t.dtype(),
        }
    }

    pub fn layout(&self) -> Layout {
        match self {
            Matrix::Buffer(_) => Layout::Buffer,
            Matrix::Texture(_) => Layout::Texture,
        }
    }

    pub fn bytes(&self) -> u64 {
        match self {
            Matrix::Buffer(t) => t.bytes(),
            Matrix::Texture(t) => t.bytes(),
        }
    }

    /// Uploads 4-bit blocks; only the texture layout holds them.
    pub fn from_q4(
        gpu: &Gpu,
        layout: Layout,
        rows: usize,
        cols: usize,
        blocks: &[Q4Block],
        label: &str,
    ) -> Result<Matrix> {
        let align = quantized_align(gpu, layout, DType::Q4, label)?;
        Ok(Matrix::Texture(TexMatrix::from_q4(gpu, rows, cols, blocks, align, label)?))
    }

    /// Uploads 8-bit blocks; only the texture layout holds them.
    pub fn from_q8(
        gpu: &Gpu,
        layout: Layout,
        rows: usize,
        cols: usize,
        blocks: &[Q8Block],
        label: &str,
    ) -> Result<Matrix> {
        let align = quantized_align(gpu, layout, DType::Q8, label)?;
        Ok(Matrix::Texture(TexMatrix::from_q8(gpu, rows, cols, blocks, align, label)?))
    }

    /// Uploads host data ([rows, cols], row-major) as `dtype` in `layout`.
    pub fn from_host(
        gpu: &Gpu,
        layout: Layout,
        rows: usize,
        cols: usize,
        data: &[f32],
        dtype: DType,
        label: &str,
    ) -> Result<Matrix> {
        if matches!(dtype, DType::Q4 | DType::Q8) {
            // quantized here: models bring their own blocks; this serves tests and tuning
            if !cols.is_multiple_of(32) {
                return Err(Error::shape(
                    format!("matrix '{label}'"),
                    format!("{dtype} rows of {cols} values (not 32s)"),
                ));
            }
            return match dtype {
                DType::Q4 => Matrix::from_q4(gpu, layout, rows, cols, &q4::quantize(data), label),
                _ => Matrix::from_q8(gpu, layout, rows, cols, &q8::quantize(data), label),
            };
        }
        match layout {
            Layout::Buffer => Ok(Matrix::Buffer(match dtype {
                DType::F32 => Tensor::from_f32(gpu, &[rows, cols], data, label)?,
                DType::F16 => Tensor::from_f32_as_f16(gpu, &[rows, cols], data, label)?,
                DType::Q4 | DType::Q8 | DType::U32 => {
                    return Err(Error::DType {
                        op: "Matrix::from_host".into(),
                        detail: "u32 is not a matrix dtype".into(),
                    });
                }
            })),
            Layout::Texture => {
                let align = col_align(gpu)?;
                Ok(Matrix::Texture(TexMatrix::from_host(gpu, rows, cols, data, dtype, align, label)?))
            }
        }
    }
}

/// The column padding for quantized blocks in `layout` (the texture kernels alone read them).
fn quantized_align(gpu: &Gpu, layout: Layout, dtype: DType, label: &str) -> Result<usize> {
    match layout {
        Layout::Texture => col_align(gpu),
        Layout::Buffer => Err(Error::DType {
            op: format!("matrix '{label}'"),
            detail: format!("{dtype} weights are read by the texture kernels only; load them as f16"),
        }),
    }
}
