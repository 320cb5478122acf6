//! Launcher for shaders/cross_entropy.wgsl (masked softmax cross-entropy fused with its
//! gradient) and its CPU reference.

use crate::error::{Error, Result};
use crate::gpu::shader::Defines;
use crate::gpu::{DType, PipelineKey, Recorder, Tensor, Work, flat_grid};

/// The target value that leaves a row out of the loss.
pub const MASKED: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
}

/// logits [R, V] become scale·(softmax − onehot(target)) in place; loss [R] gets each row's
/// −log p(target) (0 where target is MASKED). Targets must be < V or MASKED (checked by the caller).
pub fn cross_entropy(rec: &mut Recorder, logits: &Tensor, target: &Tensor, loss: &Tensor, scale: f32) -> Result<()> {
    let op = "cross entropy";
    let (r, v) = logits.dims2(op)?;
    if target.numel() != r || loss.numel() != r {
        return Err(Error::shape(
            op,
            format!("logits {:?}, targets {:?}, loss {:?}", logits.shape(), target.shape(), loss.shape()),
        ));
    }
    logits.expect_dtype(op, "logits", &[DType::F32])?;
    target.expect_dtype(op, "targets", &[DType::U32])?;
    loss.expect_dtype(op, "loss", &[DType::F32])?;
    let pipeline = rec.gpu().pipeline(&PipelineKey::new("cross_entropy", "cross_entropy", &Defines::new()))?;
    let grid = flat_grid(rec.gpu(), r);
    let params = Params { rows: r as u32, vocab: v as u32, scale };
    let work = Work { flops: 6 * (r * v) as u64, bytes: 4 * logits.bytes() };
    rec.dispatch(
        pipeline,
        &params,
        vec![(1, logits.into()), (2, target.into()), (3, loss.into())],
        grid,
        "cross_entropy",
        work,
    )
}

/// CPU reference (f64): (loss per row, gradient) for logits [R, V].
pub fn cross_entropy_ref(logits: &[f32], target: &[u32], v: usize, scale: f64) -> (Vec<f64>, Vec<f64>) {
    let mut loss = Vec::new();
    let mut grad = Vec::new();
    for (row, &t) in logits.chunks(v).zip(target) {
        if t == MASKED {
            loss.push(0.0);
            grad.extend(std::iter::repeat_n(0.0, v));
            continue;
        }
        let m = row.iter().map(|&x| x as f64).fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        loss.push(m + z.ln() - row[t as usize] as f64);
        grad.extend(row.iter().enumerate().map(|(i, &x)| {
            let p = (x as f64 - m).exp() / z;
            scale * (p - if i == t as usize { 1.0 } else { 0.0 })
        }));
    }
    (loss, grad)
}
