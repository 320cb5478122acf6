//! Cases of the training kernels (masked cross-entropy with its gradient, LoRA dropout, the
//! gradient norm, AdamW) and of the ceiling kernels the perf mode rates against.

use super::{case, f64s, input, input_u32};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::ceiling;
use crate::kernels::cross_entropy::{MASKED, cross_entropy, cross_entropy_ref};
use crate::kernels::dropout::{Dropout, dropout, dropout_ref};
use crate::kernels::harness::{Case, Expect, FiniteDiff, Instance, Output, output};
use crate::kernels::optimizer::{AdamW, AdamwState, HostAdamw, adamw, adamw_ref, sumsq, sumsq_partials};

/// Loss per row and scale·(softmax − onehot) in place of the logits, a third of the rows masked;
/// in grad mode the gradient against finite differences of scale·Σ loss.
pub fn cross_entropy_case(r: usize, v: usize) -> Case {
    case("cross_entropy", &format!("{r}x{v}"), DType::F32, "-", move |gpu, rng| {
        let logits = rng.vec(r * v, 8.0);
        let target: Vec<u32> = (0..r).map(|i| if i % 3 == 1 { MASKED } else { rng.below(v) as u32 }).collect();
        let scale = 1.0 / target.iter().filter(|&&t| t != MASKED).count().max(1) as f32;
        let (want_loss, want_grad) = cross_entropy_ref(&logits, &target, v, scale as f64);
        let (lt, tt, loss) = (
            output(gpu, &[r, v], DType::F32, "logits")?,
            input_u32(gpu, &target)?,
            output(gpu, &[r], DType::F32, "loss")?,
        );
        let forward = {
            let target = target.clone();
            move |l: &[f32]| scale as f64 * cross_entropy_ref(l, &target, v, 1.0).0.iter().sum::<f64>()
        };
        let fd = FiniteDiff {
            loss: Box::new(forward),
            x: logits.clone(),
            h: 1e-2,
            samples: 8,
            tol: 2e-3,
            floor: 1e-3 / r as f64,
        };
        let outputs = vec![
            Output::new("loss", &loss, want_loss, Expect::Close(1e-5)),
            Output::new("dlogits", &lt, want_grad, Expect::Close(1e-5)).with_prior(logits).with_fd(fd),
        ];
        Ok(Instance { launch: Box::new(move |rec| cross_entropy(rec, &lt, &tt, &loss, scale)), outputs, flops: None })
    })
}

/// The mask bit for bit (the backward regenerates it), written or added to a prior output.
pub fn dropout_case(p: f32, r: usize, c: usize, accumulate: bool) -> Case {
    let shape = format!("{r}x{c} p={p}{}", if accumulate { " acc" } else { "" });
    case("dropout", &shape, DType::F32, "-", move |gpu, rng| {
        let x = rng.vec(r * c, 1.0);
        let d = Dropout { p, seed: rng.next_u64() };
        let dropped = dropout_ref(&d, &x);
        let (a, out) = (input(gpu, &[r, c], &x)?, output(gpu, &[r, c], DType::F32, "out")?);
        let o = if accumulate {
            let base = rng.vec(r * c, 1.0);
            let want = base.iter().zip(&dropped).map(|(&b, &w)| b as f64 + w as f64).collect();
            Output::new("out", &out, want, Expect::Close(1e-7)).with_prior(base)
        } else {
            Output::new("out", &out, f64s(&dropped), Expect::Exact)
        };
        Ok(Instance {
            launch: Box::new(move |rec| dropout(rec, &d, &a, &out, accumulate)),
            outputs: vec![o],
            flops: None,
        })
    })
}

/// Partial sums of squares of a masked gradient (added in order by the host).
pub fn sumsq_case(n: usize) -> Case {
    case("grad_sumsq", &format!("{n}"), DType::F32, "-", move |gpu, rng| {
        let g = rng.vec(n, 1.0);
        let mask: Vec<f32> = (0..n).map(|i| if i % 5 == 3 { 0.0 } else { 1.0 }).collect();
        let chunks = sumsq_partials(n);
        let want: Vec<f64> = (0..chunks)
            .map(|c| (c * 256..((c + 1) * 256).min(n)).map(|i| ((g[i] * mask[i]) as f64).powi(2)).sum())
            .collect();
        let (gt, mt, p) =
            (input(gpu, &[n], &g)?, input(gpu, &[n], &mask)?, output(gpu, &[chunks], DType::F32, "partials")?);
        let outputs = vec![Output::new("partials", &p, want, Expect::Close(1e-6))];
        Ok(Instance { launch: Box::new(move |rec| sumsq(rec, &gt, Some(&mt), &p)), outputs, flops: None })
    })
}

/// One AdamW step on a parameter with a masked gradient, moments mid-run.
pub fn adamw_case(n: usize) -> Case {
    case("adamw", &format!("{n}"), DType::F32, "-", move |gpu, rng| {
        let (p0, g) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
        let m0 = rng.vec(n, 0.1);
        let v0: Vec<f32> = rng.vec(n, 0.01).iter().map(|x| x.abs()).collect();
        let mask: Vec<f32> = (0..n).map(|i| if i % 5 == 3 { 0.0 } else { 1.0 }).collect();
        let hp = AdamW { lr: 3e-3, weight_decay: 0.1, ..AdamW::default() };
        let (t, scale) = (3, 0.7);
        let (mut rp, mut rm, mut rv) = (f64s(&p0), f64s(&m0), f64s(&v0));
        // f32 rounds m = β1·m + (1−β1)·g relative to its terms; where they cancel (n = 1 makes
        // that likely) the error relative to m itself is unbounded, so m's tolerance is scaled
        // by how much larger the terms are than the result.
        let b1 = hp.beta1 as f64;
        let terms: Vec<f64> =
            (0..n).map(|i| (b1 * m0[i] as f64).abs() + ((1.0 - b1) * (g[i] * mask[i] * scale) as f64).abs()).collect();
        adamw_ref(
            &hp,
            t,
            scale as f64,
            HostAdamw { param: &mut rp, grad: &g, mask: Some(&mask), m: &mut rm, v: &mut rv },
        );
        let m_tol = 1e-6 * (l2(&terms) / l2(&rm)).max(1.0);
        let (pt, mt, vt) = (
            output(gpu, &[n], DType::F32, "p")?,
            output(gpu, &[n], DType::F32, "m")?,
            output(gpu, &[n], DType::F32, "v")?,
        );
        let (gt, maskt) = (input(gpu, &[n], &g)?, input(gpu, &[n], &mask)?);
        let outputs = vec![
            Output::new("param", &pt, rp, Expect::Close(1e-6)).with_prior(p0),
            Output::new("m", &mt, rm, Expect::Close(m_tol)).with_prior(m0),
            Output::new("v", &vt, rv, Expect::Close(1e-6)).with_prior(v0),
        ];
        let launch = move |rec: &mut Recorder| {
            adamw(rec, &hp, t, scale, &AdamwState { param: &pt, grad: &gt, mask: Some(&maskt), m: &mt, v: &vt })
        };
        Ok(Instance { launch: Box::new(launch), outputs, flops: None })
    })
}

/// The copy ceiling kernel copies; the FMA one leaves its sink alone (it writes only when the
/// impossible happens).
pub fn ceiling_cases(n: usize) -> Vec<Case> {
    vec![
        case("ceiling copy", &format!("{n}"), DType::F32, "-", move |gpu, rng| {
            let a = rng.vec(n, 1.0);
            let (src, dst) = (input(gpu, &[n], &a)?, output(gpu, &[n], DType::F32, "dst")?);
            let outputs = vec![Output::new("dst", &dst, f64s(&a), Expect::Exact)];
            Ok(Instance { launch: Box::new(move |rec| ceiling::copy(rec, &src, &dst)), outputs, flops: None })
        }),
        case("ceiling fma", "2 groups x 64 rounds", DType::F32, "-", move |gpu, rng| {
            let prior = rng.vec(2 * 64 * 4, 1.0);
            let sink: Tensor = output(gpu, &[2 * 64, 4], DType::F32, "sink")?;
            let outputs = vec![Output::new("sink", &sink, f64s(&prior), Expect::Exact).with_prior(prior)];
            Ok(Instance { launch: Box::new(move |rec| ceiling::fma(rec, &sink, 2, 64)), outputs, flops: None })
        }),
    ]
}

fn l2(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}
