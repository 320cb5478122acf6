//! The harness's table: every kernel, at awkward sizes for check and grad mode (check_table) and
//! at the model's sizes for perf mode (perf_table).

mod layer;
mod linear;
mod train;

use crate::error::Result;
use crate::gpu::{DType, Gpu, Layout, Tensor};
use crate::kernels::attention::{AttentionVariant, Heads};
use crate::kernels::harness::{Case, Instance};
use crate::kernels::matmul::tune::{self, Problem};
use crate::kernels::matmul::{Form, Variant};
use crate::rng::Rng;

/// (M, K, N): Y [M, N] from an inner size K.
pub type Shape = (usize, usize, usize);

/// A case whose group is its own (timed alone).
fn case(
    op: &str,
    shape: &str,
    dtype: DType,
    variant: &str,
    build: impl Fn(&Gpu, &mut Rng) -> Result<Instance> + 'static,
) -> Case {
    Case {
        op: op.to_string(),
        shape: shape.to_string(),
        dtype,
        variant: variant.to_string(),
        group: format!("{op} {shape} {dtype} {variant}"),
        note: String::new(),
        build: Box::new(build),
    }
}

fn input(gpu: &Gpu, shape: &[usize], v: &[f32]) -> Result<Tensor> {
    Tensor::from_f32(gpu, shape, v, "input")
}

fn input_u32(gpu: &Gpu, v: &[u32]) -> Result<Tensor> {
    Tensor::from_u32(gpu, &[v.len()], v, "index")
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// The layouts this device has kernels for in `form`.
fn layouts(gpu: &Gpu, form: Form) -> Vec<Layout> {
    [Layout::Buffer, Layout::Texture].into_iter().filter(|&l| !Variant::candidates(gpu, form, l).is_empty()).collect()
}

/// Every matmul variant of `form` on this device with each weight type it takes, at `shapes`
/// (4- and 8-bit weights at `q4_shapes`, whose weight rows are whole 32-value blocks).
fn matmuls(gpu: &Gpu, form: Form, shapes: &[Shape], q4_shapes: &[Shape]) -> Vec<Case> {
    let mut out = Vec::new();
    for layout in [Layout::Buffer, Layout::Texture] {
        for v in Variant::candidates(gpu, form, layout) {
            for dtype in linear::dtypes_of(gpu, form, v) {
                for &s in if dtype.is_quantized() { q4_shapes } else { shapes } {
                    out.push(linear::matmul_case(form, v, dtype, s, false));
                }
            }
        }
        if let Some(&v) = Variant::candidates(gpu, form, layout).first() {
            out.push(linear::matmul_case(form, v, DType::F32, shapes[0], true));
        }
    }
    out
}

/// Products with an RMSNorm or SwiGLU prologue, K a multiple of 4 (the buffer read's condition)
/// but not of the subgroup's chunk: one row through every one-row texture variant and weight
/// type (they apply it as they read), and three rows through each layout's first variant (the
/// prologue runs first, into a scratch activation).
fn prologues(gpu: &Gpu) -> Vec<Case> {
    use linear::PrologueKind::{RmsNorm, SwiGlu};
    let mut out = Vec::new();
    for layout in [Layout::Buffer, Layout::Texture] {
        let variants = Variant::candidates(gpu, Form::Nt, layout);
        for (i, &v) in variants.iter().enumerate() {
            let one_row = v.rows() == 1 && layout == Layout::Texture;
            for dtype in linear::dtypes_of(gpu, Form::Nt, v) {
                let k = if dtype.is_quantized() { 288 } else { 132 };
                for kind in [RmsNorm, SwiGlu] {
                    if one_row {
                        out.push(linear::prologue_case(v, dtype, kind, (1, k, 37)));
                    }
                    if i == 0 && dtype == DType::F32 {
                        out.push(linear::prologue_case(v, dtype, kind, (3, k, 37)));
                    }
                }
            }
        }
    }
    out
}

/// A decode step's matvecs at SmolLM2-135M's sizes with the prologues they run with: q/k/v and
/// gate/up read the residual stream through its RMSNorm, down reads gate/up through SwiGLU (4-bit
/// weights, as the default model's layers), the LM head reads it through the final norm (f16, and
/// 8-bit as the default model's file holds it).
/// The one-row variants of each problem are timed side by side.
fn decode_matvecs(gpu: &Gpu) -> Vec<Case> {
    use linear::PrologueKind::{RmsNorm, SwiGlu};
    let mut out = Vec::new();
    for (kind, k, n, dtype) in [
        (RmsNorm, 576, 960, DType::Q4),
        (RmsNorm, 576, 3072, DType::Q4),
        (SwiGlu, 1536, 576, DType::Q4),
        (RmsNorm, 576, 49152, DType::F16),
        (RmsNorm, 576, 49152, DType::Q8),
    ] {
        for v in Variant::candidates(gpu, Form::Nt, Layout::Texture) {
            if v.rows() != 1 || !linear::dtypes_of(gpu, Form::Nt, v).contains(&dtype) {
                continue;
            }
            let mut c = linear::prologue_case(v, dtype, kind, (1, k, n));
            c.group = format!("decode {} {dtype}", c.shape);
            let p = Problem { form: Form::Nt, layout: Layout::Texture, dtype, m: 1, n, k };
            if tune::lookup(gpu, &p).is_ok_and(|pick| pick == v) {
                c.note = "tuner's pick".into();
            }
            out.push(c);
        }
    }
    out
}

/// The check and grad table: every kernel, every variant, awkward sizes.
pub fn check_table(gpu: &Gpu) -> Vec<Case> {
    let mut t = Vec::new();
    for form in Form::ALL {
        // nn with quantized weights: W [N, K] is read transposed, so N holds the 32-value blocks
        let q4 = if form == Form::Nn { [(7, 67, 160), (1, 37, 288)] } else { [(7, 160, 67), (1, 288, 37)] };
        t.extend(matmuls(gpu, form, &[(33, 132, 67), (1, 301, 259)], &q4));
    }
    for layout in layouts(gpu, Form::Nt) {
        for dtype in [DType::F32, DType::F16] {
            t.push(linear::lora_forward_case(layout, dtype, (7, 45, 37), vec![3, 8]));
            t.push(linear::lora_forward_case(layout, dtype, (33, 132, 67), vec![8]));
        }
        t.push(linear::lora_sequential_case(layout, (9, 45, 37), vec![3, 8]));
    }
    for layout in layouts(gpu, Form::Nn) {
        for accumulate in [false, true] {
            t.push(linear::lora_backward_case(layout, (13, 45, 37), vec![4, 8], accumulate));
        }
    }
    t.extend(prologues(gpu));
    for dtype in [DType::F32, DType::F16] {
        t.push(linear::merge_case(dtype, (37, 45), vec![4, 8]));
        for (r, c) in [(7, 45), (70, 64), (257, 130)] {
            t.push(linear::pack_case(dtype, r, c));
            if dtype == DType::F32 {
                t.push(linear::pack_prologue_case(linear::PrologueKind::RmsNorm, r, c));
                t.push(linear::pack_prologue_case(linear::PrologueKind::SwiGlu, r, c));
            }
        }
    }
    for (r, h) in [(1, 576), (7, 45), (33, 130)] {
        t.push(layer::rmsnorm_case(r, h));
        t.push(layer::rmsnorm_backward_case(r, h, false));
        t.push(layer::rmsnorm_backward_case(r, h, true));
        t.push(layer::swiglu_case(r, h));
        t.push(layer::swiglu_backward_case(r, h));
    }
    for (heads, kv, hd, r, keys) in [(9, 3, 64, 7, 40), (4, 4, 12, 33, 40), (2, 1, 8, 1, 40), (9, 3, 64, 3, 301)] {
        t.push(layer::rope_kv_case(heads, kv, hd, r));
        for v in AttentionVariant::available(gpu, heads, kv, hd) {
            let h = Heads { heads, kv_heads: kv, hd };
            for (shared, rope) in [(false, false), (true, false), (false, true), (true, true)] {
                t.push(layer::attention_case(h, r, keys, shared, rope, 0, v));
            }
            // a prefill's runs of rows, which the flash kernel shares keys within
            for (shared, runs) in [(false, 1), (true, 3.min(r))] {
                t.push(layer::attention_case(h, r, keys, shared, false, runs, v));
            }
        }
    }
    for (heads, kv, hd, r) in [(9, 3, 64, 7), (4, 2, 12, 33)] {
        t.push(layer::rope_backward_case(heads, kv, hd, r));
    }
    for (heads, kv, hd, lens) in [(2, 1, 4, vec![3, 2]), (9, 3, 64, vec![7, 1, 12]), (4, 2, 40, vec![20, 37])] {
        for v in AttentionVariant::available(gpu, heads, kv, hd) {
            if v != AttentionVariant::Groups {
                t.push(layer::attention_backward_case(heads, kv, hd, lens.clone(), v));
            }
        }
    }
    t.push(layer::bias_case(33, 130));
    t.push(layer::copy_case(7, 45));
    for dtype in [DType::F32, DType::F16] {
        t.push(layer::gather_case(dtype, 50, 45, 7));
        t.push(layer::gather_case(dtype, 1000, 576, 33));
    }
    t.push(layer::scatter_case(40, 45, 13));
    for (r, v) in [(7, 1000), (33, 97)] {
        t.push(train::cross_entropy_case(r, v));
    }
    for p in [0.05, 0.5] {
        t.push(train::dropout_case(p, 37, 1001, false));
        t.push(train::dropout_case(p, 37, 1001, true));
    }
    for n in [1, 257, 5000] {
        t.push(train::sumsq_case(n));
        t.push(train::adamw_case(n));
    }
    t.extend(train::ceiling_cases(1000));
    t
}

/// What the perf table measures.
#[derive(Clone, Debug)]
pub struct PerfGrid {
    /// Matmul problems (every variant of each, interleaved) and the weight types they run at.
    pub matmuls: Vec<(Form, usize, usize, usize)>,
    pub dtypes: Vec<DType>,
    /// Sequence lengths of the attention rows (SmolLM2's 9 query and 3 KV heads of 64).
    pub seqs: Vec<usize>,
    /// Rows of the other kernels' rows (a prefill or training micro-batch).
    pub rows: usize,
}

/// The perf table: every kernel at the model's sizes (SmolLM2-135M: hidden 576, FFN 1536, 9
/// query and 3 KV heads of 64, vocabulary 49152), the matmul variants as `grid` asks.
pub fn perf_table(gpu: &Gpu, grid: &PerfGrid) -> Vec<Case> {
    let mut t = Vec::new();
    for &(form, m, k, n) in &grid.matmuls {
        for layout in [Layout::Buffer, Layout::Texture] {
            for &dtype in &grid.dtypes {
                for v in Variant::candidates(gpu, form, layout) {
                    // quantized weights need whole blocks along the weight rows
                    let blocks = if form == Form::Nn { n } else { k };
                    if !linear::dtypes_of(gpu, form, v).contains(&dtype) || (dtype.is_quantized() && blocks % 32 != 0) {
                        continue;
                    }
                    let mut c = linear::matmul_case(form, v, dtype, (m, k, n), false);
                    let p = Problem { form, layout, dtype, m, n, k };
                    if tune::lookup(gpu, &p).is_ok_and(|pick| pick == v) {
                        c.note = "tuner's pick".into();
                    }
                    t.push(c);
                }
            }
        }
    }
    t.extend(decode_matvecs(gpu));
    let r = grid.rows;
    let layout = tune::preferred_layout(gpu);
    t.push(linear::lora_forward_case(layout, DType::F16, (r, 576, 576), vec![16, 16]));
    if !Variant::candidates(gpu, Form::Nn, layout).is_empty() {
        t.push(linear::lora_backward_case(layout, (r, 576, 576), vec![16, 16], false));
    }
    t.push(linear::merge_case(DType::F16, (576, 576), vec![16, 16]));
    t.push(linear::pack_case(DType::F32, r, 1536));
    t.push(linear::pack_prologue_case(linear::PrologueKind::RmsNorm, r, 576));
    t.push(linear::pack_prologue_case(linear::PrologueKind::SwiGlu, r, 1536));
    t.push(layer::rmsnorm_case(r, 576));
    t.push(layer::rmsnorm_backward_case(r, 576, true));
    t.push(layer::rope_kv_case(9, 3, 64, r));
    t.push(layer::rope_backward_case(9, 3, 64, r));
    let smol = Heads { heads: 9, kv_heads: 3, hd: 64 };
    for &s in &grid.seqs {
        // a prefill's rows (rope_kv launched before), then four sequences' decode rows (rope in it)
        for (rows, rope, runs) in [(s, false, 1), (4, true, 0)] {
            for v in AttentionVariant::available(gpu, 9, 3, 64) {
                let mut c = layer::attention_case(smol, rows, s, false, rope, runs, v);
                c.group = format!("attention {rows} {s}");
                t.push(c);
            }
        }
        for v in AttentionVariant::available(gpu, 9, 3, 64) {
            if v != AttentionVariant::Groups {
                let mut c = layer::attention_backward_case(9, 3, 64, vec![s], v);
                c.group = format!("attention backward {s}");
                t.push(c);
            }
        }
    }
    t.push(layer::swiglu_case(r, 1536));
    t.push(layer::swiglu_backward_case(r, 1536));
    t.push(layer::bias_case(r, 960));
    t.push(layer::gather_case(DType::F16, 49152, 576, r));
    t.push(layer::scatter_case(r.max(64), 576, r.min(64)));
    t.push(train::cross_entropy_case(64, 49152));
    t.push(train::dropout_case(0.05, r, 576, false));
    t.push(train::sumsq_case(1 << 20));
    t.push(train::adamw_case(1 << 20));
    t
}
