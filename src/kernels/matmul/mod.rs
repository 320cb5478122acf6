//! Matrix multiplication in the three forms training needs, with one entry point that picks a
//! kernel family per device and shape:
//!
//! | form | computes           | operands                     | used for                     |
//! |------|--------------------|------------------------------|------------------------------|
//! | nt   | Y = X·Wᵀ           | X [M,K], W [N,K] (HF layout) | every linear layer forward   |
//! | nn   | Y = X·W            | X [M,K], W [K,N]             | dX = dY·W in backward        |
//! | tn   | Y = Aᵀ·B           | A [K,M], B [K,N]             | LoRA gradients (dYᵀ·X)       |
//!
//! Optional parts fused into the same launch: an epilogue product added before the output is
//! written (Y += T·B2ᵀ for nt, T·B2 for nn: the LoRA expand), a per-row, per-column-segment
//! scale (the per-row adapter weights of the LoRA shrink), `alpha`, and accumulation into Y.
//!
//! Kernel families (one WGSL file each, one module each here): `texture` (operands in textures,
//! activations shared by subgroupBroadcast: the fast path on CPU drivers), `blocked`
//! (register-blocked storage-buffer kernel that runs anywhere) and `tiled` (shared-memory tiles:
//! the fast path on GPUs); `pack` puts activations into the texture layout, and `tune` decides
//! which variant runs where.

pub mod blocked;
pub mod pack;
pub mod texture;
pub mod tiled;
pub mod tune;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::gpu::{DType, Layout, Matrix, Recorder, Tensor, TexMatrix};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    Nt,
    Nn,
    Tn,
}

impl Form {
    pub const ALL: [Form; 3] = [Form::Nt, Form::Nn, Form::Tn];

    pub fn name(self) -> &'static str {
        match self {
            Form::Nt => "nt",
            Form::Nn => "nn",
            Form::Tn => "tn",
        }
    }

    /// (A transposed, B transposed) in the storage-buffer kernels' convention.
    pub(crate) fn flags(self) -> (bool, bool) {
        match self {
            Form::Nt => (false, true),
            Form::Nn => (false, false),
            Form::Tn => (true, false),
        }
    }

    /// (M, N, K) of `a` times `b`, or a shape error.
    pub fn dims(self, a: (usize, usize), b: (usize, usize)) -> Result<(usize, usize, usize)> {
        let (ok, m, n, k) = match self {
            Form::Nt => (a.1 == b.1, a.0, b.0, a.1),
            Form::Nn => (a.1 == b.0, a.0, b.1, a.1),
            Form::Tn => (a.0 == b.0, a.1, b.1, a.0),
        };
        if ok {
            Ok((m, n, k))
        } else {
            Err(Error::shape(format!("matmul {}", self.name()), format!("operands {a:?} and {b:?} do not match")))
        }
    }

    pub fn flops(self, m: usize, n: usize, k: usize) -> u64 {
        2 * (m as u64) * (n as u64) * (k as u64)
    }
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Form {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "nt" => Ok(Form::Nt),
            "nn" => Ok(Form::Nn),
            "tn" => Ok(Form::Tn),
            _ => Err(Error::Invalid(format!("unknown matmul form '{s}' (nt, nn, tn)"))),
        }
    }
}

/// A kernel family and its blocking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Texture operands, subgroup sharing; `rows` × `cols` outputs (nn: texel columns) per invocation.
    Texture { rows: u32, cols: u32 },
    /// Texture operands, lanes splitting the inner dimension (nt only, for few rows); `rows` ×
    /// `cols` outputs per subgroup.
    TextureDot { rows: u32, cols: u32 },
    /// Storage buffers, `rows` × `cols` outputs per invocation.
    Blocked { rows: u32, cols: u32 },
    /// Storage buffers, 64×64 shared-memory tiles.
    Tiled,
}

impl Variant {
    pub fn layout(self) -> Layout {
        match self {
            Variant::Texture { .. } | Variant::TextureDot { .. } => Layout::Texture,
            _ => Layout::Buffer,
        }
    }

    /// Rows of the output one invocation (or subgroup) computes.
    pub fn rows(self) -> u32 {
        match self {
            Variant::Texture { rows, .. } | Variant::TextureDot { rows, .. } | Variant::Blocked { rows, .. } => rows,
            Variant::Tiled => 64,
        }
    }

    /// The variants the autotuner may pick for `form` with B in `layout`, on this device.
    pub fn candidates(gpu: &crate::gpu::Gpu, form: Form, layout: Layout) -> Vec<Variant> {
        match layout {
            Layout::Texture if crate::gpu::texture::subgroup_size(gpu).is_some() => match form {
                Form::Nt => texture::NT_BLOCKINGS
                    .iter()
                    .map(|&(rows, cols)| Variant::Texture { rows, cols })
                    .chain(texture::NT_DOT_BLOCKINGS.iter().map(|&(rows, cols)| Variant::TextureDot { rows, cols }))
                    .collect(),
                Form::Nn => texture::NN_BLOCKINGS.iter().map(|&(rows, cols)| Variant::Texture { rows, cols }).collect(),
                Form::Tn => Vec::new(),
            },
            Layout::Texture => Vec::new(),
            Layout::Buffer => {
                let mut v: Vec<Variant> =
                    blocked::BLOCKINGS.iter().map(|&(rows, cols)| Variant::Blocked { rows, cols }).collect();
                v.push(Variant::Tiled);
                v
            }
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Variant::Texture { rows, cols } => write!(f, "texture_r{rows}c{cols}"),
            Variant::TextureDot { rows, cols } => write!(f, "texdot_r{rows}c{cols}"),
            Variant::Blocked { rows, cols } => write!(f, "blocked_r{rows}c{cols}"),
            Variant::Tiled => f.write_str("tiled_64x64"),
        }
    }
}

impl FromStr for Variant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "tiled_64x64" {
            return Ok(Variant::Tiled);
        }
        let parse = |rest: &str| -> Option<(u32, u32)> {
            let rest = rest.strip_prefix('r')?;
            let (r, c) = rest.split_once('c')?;
            Some((r.parse().ok()?, c.parse().ok()?))
        };
        let bad = || Error::Invalid(format!("unknown matmul variant '{s}'"));
        if let Some(rest) = s.strip_prefix("texture_") {
            let (rows, cols) = parse(rest).ok_or_else(bad)?;
            Ok(Variant::Texture { rows, cols })
        } else if let Some(rest) = s.strip_prefix("texdot_") {
            let (rows, cols) = parse(rest).ok_or_else(bad)?;
            Ok(Variant::TextureDot { rows, cols })
        } else if let Some(rest) = s.strip_prefix("blocked_") {
            let (rows, cols) = parse(rest).ok_or_else(bad)?;
            Ok(Variant::Blocked { rows, cols })
        } else {
            Err(bad())
        }
    }
}

/// Y += T·B2ᵀ (nt) or T·B2 (nn) before Y is written. T is [M, E], E a multiple of 4.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub t: &'a Tensor,
    pub b: &'a Matrix,
}

/// Y[m, j] *= coef[m, seg[j]]: coef is [M, n_adapters] f32, seg is [N] u32.
#[derive(Clone, Copy)]
pub struct RowCoef<'a> {
    pub coef: &'a Tensor,
    pub seg: &'a Tensor,
}

#[derive(Clone, Copy)]
pub struct MatmulOpts<'a> {
    pub alpha: f32,
    pub accumulate: bool,
    pub epilogue: Option<Epilogue<'a>>,
    pub row_coef: Option<RowCoef<'a>>,
    /// Forces a variant; `None` asks the autotuner.
    pub variant: Option<Variant>,
}

impl Default for MatmulOpts<'_> {
    fn default() -> Self {
        MatmulOpts { alpha: 1.0, accumulate: false, epilogue: None, row_coef: None, variant: None }
    }
}

/// What a kernel computes from the activation's source tensor as it reads it, so that the
/// elementwise step between two products costs no launch of its own.
#[derive(Clone)]
pub(crate) enum Prologue {
    /// x = src · ρ · gain, ρ = 1/sqrt(mean(src²) + eps) per row: the RMSNorm before q/k/v,
    /// gate/up and the LM head.
    RmsNorm { gain: Tensor, eps: f32 },
    /// x = silu(src[:, :F]) ⊙ src[:, F:]: SwiGLU before the down projection.
    SwiGlu,
}

/// The left operand of a product: an activation, maybe with a prologue pending. Kernels that
/// apply the prologue themselves (the one-row texture kernels, which read the buffer) read the
/// source; any other kernel gets the value materialized once into `dst` (or packed into a
/// scratch texture, once), and every later product of the same activation reuses it (the q, k
/// and v projections of one normalized input pack it once).
pub(crate) struct Act {
    src: Tensor,
    prologue: Option<(Prologue, Tensor)>,
    slot: u32,
    /// Whether `dst` holds the prologue's result.
    materialized: std::cell::Cell<bool>,
    packed: std::cell::OnceCell<TexMatrix>,
}

impl Act {
    /// `slot` names the scratch texture: activations packed while another is still to be read
    /// need different slots.
    pub(crate) fn new(x: &Tensor, slot: u32) -> Act {
        Act::with(x, None, slot)
    }

    /// x = rmsnorm(src)·gain, materialized into `dst` [R, H] only if a kernel needs it.
    pub(crate) fn normed(src: &Tensor, gain: &Tensor, eps: f32, dst: &Tensor, slot: u32) -> Act {
        Act::with(src, Some((Prologue::RmsNorm { gain: gain.clone(), eps }, dst.clone())), slot)
    }

    /// x = silu(gate)·up of src = [gate | up] [R, 2F], materialized into `dst` [R, F] only if a
    /// kernel needs it.
    pub(crate) fn swiglu(src: &Tensor, dst: &Tensor, slot: u32) -> Act {
        Act::with(src, Some((Prologue::SwiGlu, dst.clone())), slot)
    }

    fn with(src: &Tensor, prologue: Option<(Prologue, Tensor)>, slot: u32) -> Act {
        Act {
            src: src.clone(),
            prologue,
            slot,
            materialized: std::cell::Cell::new(false),
            packed: std::cell::OnceCell::new(),
        }
    }

    /// The activation's value as a tensor, its prologue run on first use.
    pub(crate) fn value(&self, rec: &mut Recorder) -> Result<&Tensor> {
        let Some((prologue, dst)) = &self.prologue else { return Ok(&self.src) };
        if !self.materialized.get() {
            match prologue {
                Prologue::RmsNorm { gain, eps } => crate::kernels::rmsnorm::rmsnorm(rec, &self.src, gain, dst, *eps)?,
                Prologue::SwiGlu => crate::kernels::elementwise::swiglu(rec, &self.src, dst)?,
            }
            self.materialized.set(true);
        }
        Ok(dst)
    }

    /// The buffer a prologue-capable kernel reads and the prologue it must apply: the source
    /// while nothing materialized the value, else the value and none.
    pub(crate) fn source(&self) -> (&Tensor, Option<&Prologue>) {
        match &self.prologue {
            Some((prologue, _)) if !self.materialized.get() => (&self.src, Some(prologue)),
            Some((_, dst)) => (dst, None),
            None => (&self.src, None),
        }
    }

    /// The texture form, packed on first use.
    pub(crate) fn packed(&self, rec: &mut Recorder) -> Result<&TexMatrix> {
        if let Some(t) = self.packed.get() {
            return Ok(t);
        }
        let t = match self.source() {
            // the prologue's value goes straight into the texture (one launch, not two)
            (src, Some(prologue)) => {
                let (src, prologue) = (src.clone(), prologue.clone());
                let (rows, cols) = self.dims()?;
                let dst = rec.gpu().scratch_texture(rows, cols, self.slot)?;
                pack::pack_prologue(rec, &src, &prologue, &dst)?;
                dst
            }
            (x, None) => {
                let x = x.clone();
                pack::to_scratch_texture(rec, &x, self.slot)?
            }
        };
        Ok(self.packed.get_or_init(|| t))
    }

    /// Rows of the activation.
    pub(crate) fn rows(&self) -> Result<usize> {
        Ok(self.dims()?.0)
    }

    fn dims(&self) -> Result<(usize, usize)> {
        match &self.prologue {
            Some((_, dst)) => dst.dims2("matmul"),
            None => self.src.dims2("matmul"),
        }
    }
}

/// Where a texture kernel reads the activation from.
pub(crate) enum XOperand<'a> {
    Texture(&'a TexMatrix),
    /// [M, K] f32 with K a multiple of 4 (read as vec4s), and the prologue the kernel applies
    /// as it reads (then the buffer is the prologue's source): only the one-row kernels take it.
    Buffer(&'a Tensor, Option<&'a Prologue>),
}

/// Checked shapes of one product: Y [m, n], inner size k, epilogue inner size e.
pub(crate) struct Dims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub e: usize,
}

/// A checked product on its way to a family's launcher.
pub(crate) struct Launch<'a> {
    pub form: Form,
    pub y: &'a Tensor,
    pub opts: &'a MatmulOpts<'a>,
    pub dims: Dims,
    pub variant: Variant,
}

fn check(form: Form, a: (usize, usize), b: &Matrix, y: &Tensor, opts: &MatmulOpts) -> Result<Dims> {
    let op = format!("matmul {}", form.name());
    let (m, n, k) = form.dims(a, (b.rows(), b.cols()))?;
    y.expect_dtype(&op, "output", &[DType::F32])?;
    if y.dims2(&op)? != (m, n) {
        return Err(Error::shape(&op, format!("output is {:?}, expected [{m}, {n}]", y.shape())));
    }
    let mut e = 0;
    if let Some(ep) = &opts.epilogue {
        if form == Form::Tn {
            return Err(Error::shape(&op, "the tn form takes no epilogue"));
        }
        let (tm, te) = ep.t.dims2(&op)?;
        let want_b = if form == Form::Nt { (n, te) } else { (te, n) };
        if tm != m || (ep.b.rows(), ep.b.cols()) != want_b || te % 4 != 0 {
            return Err(Error::shape(
                &op,
                format!(
                    "epilogue T {:?} and B [{}, {}] do not fit a [{m}, {n}] output (T must be [M, E] with E a multiple of 4)",
                    ep.t.shape(),
                    ep.b.rows(),
                    ep.b.cols()
                ),
            ));
        }
        ep.t.expect_dtype(&op, "epilogue T", &[DType::F32])?;
        if ep.b.dtype() != DType::F32 {
            return Err(Error::DType { op, detail: "epilogue B must be f32".into() });
        }
        e = te;
    }
    if let Some(rc) = &opts.row_coef {
        let (cm, _) = rc.coef.dims2(&op)?;
        if cm != m || rc.seg.numel() != n || rc.seg.dtype() != DType::U32 {
            return Err(Error::shape(
                &op,
                format!("row coefficients {:?} / segments {:?} do not fit [{m}, {n}]", rc.coef.shape(), rc.seg.shape()),
            ));
        }
    }
    if b.dtype() == DType::U32 {
        return Err(Error::DType { op, detail: "B must be f32 or f16".into() });
    }
    if form == Form::Tn && b.dtype() != DType::F32 {
        return Err(Error::DType { op, detail: "the tn form takes f32 operands".into() });
    }
    Ok(Dims { m, n, k, e })
}

/// Y = alpha · op(A)·op(B) (+ epilogue), per `form` and `opts`. The variant is `opts.variant` or
/// the autotuner's choice for this device and shape class.
pub fn matmul(rec: &mut Recorder, form: Form, a: &Tensor, b: &Matrix, y: &Tensor, opts: &MatmulOpts) -> Result<()> {
    matmul_act(rec, form, &Act::new(a, 0), b, y, opts)
}

pub(crate) fn matmul_act(
    rec: &mut Recorder,
    form: Form,
    a: &Act,
    b: &Matrix,
    y: &Tensor,
    opts: &MatmulOpts,
) -> Result<()> {
    let dims = check(form, a.dims()?, b, y, opts)?;
    let variant = match opts.variant {
        Some(v) => v,
        None => {
            let p = tune::Problem { form, layout: b.layout(), dtype: b.dtype(), m: dims.m, n: dims.n, k: dims.k };
            tune::choose(rec, &p)?
        }
    };
    let unsupported = |reason: &str| Error::Unsupported {
        kernel: format!("matmul {form}"),
        variant: variant.to_string(),
        reason: reason.into(),
    };
    if !Variant::candidates(rec.gpu(), form, b.layout()).contains(&variant) {
        return Err(unsupported(&format!("not a candidate for {} operands of this device", b.layout().name())));
    }
    // One-row nt kernels read the activation's buffer (with its prologue) rather than a packed
    // texture: a decode step packs nothing and runs no separate norm or SwiGLU launch.
    let from_buffer = match variant {
        Variant::TextureDot { .. } => true,
        Variant::Texture { rows, .. } => rows == 1 && form == Form::Nt,
        _ => false,
    } && dims.k.is_multiple_of(4)
        && a.packed.get().is_none();
    let l = Launch { form, y, opts, dims, variant };
    match (variant, b) {
        (Variant::Texture { .. } | Variant::TextureDot { .. }, Matrix::Texture(w)) if from_buffer => {
            let (x, prologue) = a.source();
            texture::launch(rec, &l, XOperand::Buffer(x, prologue), w)
        }
        (Variant::Texture { .. } | Variant::TextureDot { .. }, Matrix::Texture(w)) => {
            let x = a.packed(rec)?.clone();
            texture::launch(rec, &l, XOperand::Texture(&x), w)
        }
        (Variant::Blocked { .. }, Matrix::Buffer(w)) => {
            let x = a.value(rec)?.clone();
            blocked::launch(rec, &l, &x, w)
        }
        (Variant::Tiled, Matrix::Buffer(w)) => {
            let x = a.value(rec)?.clone();
            tiled::launch(rec, &l, &x, w)
        }
        _ => Err(unsupported(&format!("B is in a {} layout", b.layout().name()))),
    }
}

/// CPU reference (f64 accumulation): op(A)·op(B) for `form`, with A and B as in `Form::dims`
/// (row-major, unpadded). Returns [M, N].
pub fn matmul_ref(form: Form, m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
    let mut y = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                let av = match form {
                    Form::Nt | Form::Nn => a[i * k + p],
                    Form::Tn => a[p * m + i],
                };
                let bv = match form {
                    Form::Nt => b[j * k + p],
                    Form::Nn | Form::Tn => b[p * n + j],
                };
                s += av as f64 * bv as f64;
            }
            y[i * n + j] = s;
        }
    }
    y
}

/// The buffer-kernel parameter block shared by the blocked and tiled families.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct BufferParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub lda: u32,
    pub ldb: u32,
    pub ldy: u32,
    pub e: u32,
    pub lda2: u32,
    pub ldb2: u32,
    pub n_adapters: u32,
    pub alpha: f32,
}

/// Parameters, defines and bindings of one storage-buffer launch.
pub(crate) type BufferSetup = (BufferParams, crate::gpu::shader::Defines, Vec<(u32, crate::gpu::Resource)>);

/// Parameters, defines and bindings common to the storage-buffer families.
pub(crate) fn buffer_setup(l: &Launch, x: &Tensor, w: &Tensor) -> Result<BufferSetup> {
    use crate::gpu::Resource;
    let (form, y, opts, prob) = (l.form, l.y, l.opts, &l.dims);
    let (a_t, b_t) = form.flags();
    let (_, ac) = x.dims2("matmul")?;
    let bc = w.shape()[1];
    let mut params = BufferParams {
        m: prob.m as u32,
        n: prob.n as u32,
        k: prob.k as u32,
        lda: ac as u32,
        ldb: bc as u32,
        ldy: prob.n as u32,
        e: prob.e as u32,
        lda2: 0,
        ldb2: 0,
        n_adapters: 0,
        alpha: opts.alpha,
    };
    let mut defines: crate::gpu::shader::Defines = [
        ("A_T", a_t as u32),
        ("B_T", b_t as u32),
        ("B_F16", (w.dtype() == DType::F16) as u32),
        ("EPILOGUE", opts.epilogue.is_some() as u32),
        ("ROW_COEF", opts.row_coef.is_some() as u32),
        ("ACCUMULATE", opts.accumulate as u32),
    ]
    .into_iter()
    .collect();
    let mut binds = vec![(1, Resource::from(x)), (2, Resource::from(w)), (3, Resource::from(y))];
    if let Some(ep) = &opts.epilogue {
        let Matrix::Buffer(b2) = ep.b else {
            return Err(Error::Unsupported {
                kernel: format!("matmul {form}"),
                variant: "storage-buffer".into(),
                reason: "the epilogue B is in a texture".into(),
            });
        };
        params.lda2 = ep.t.shape()[1] as u32;
        params.ldb2 = b2.shape()[1] as u32;
        binds.push((4, Resource::from(ep.t)));
        binds.push((5, Resource::from(b2)));
    }
    if let Some(rc) = &opts.row_coef {
        params.n_adapters = rc.coef.shape()[1] as u32;
        binds.push((6, Resource::from(rc.coef)));
        binds.push((7, Resource::from(rc.seg)));
    }
    defines.retain(|_, v| *v != 0);
    Ok((params, defines, binds))
}

/// Bytes a product moves at least once (operands in, output out), for GB/s.
pub(crate) fn traffic(prob: &Dims, b_dtype: DType) -> u64 {
    let (m, n, k, e) = (prob.m as u64, prob.n as u64, prob.k as u64, prob.e as u64);
    4 * m * k + b_dtype.bytes_for((n * k) as usize) + 4 * m * n + 4 * (m * e + n * e)
}
