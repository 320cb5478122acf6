//! Property tests: random forms, variants, weight dtypes and shapes (1–300 on every axis),
//! each against the f64 reference with the output poisoned first.

mod common;

use common::{Rng, gpu, rel_err, round_f16};
use lorafuse::gpu::{DType, Layout, Matrix, Recorder, Tensor};
use lorafuse::kernels::matmul::{Form, MatmulOpts, Variant, matmul, matmul_ref};
use proptest::prelude::*;

fn all_variants(form: Form) -> Vec<Variant> {
    let g = gpu();
    let mut v = Variant::candidates(g, form, Layout::Buffer);
    v.extend(Variant::candidates(g, form, Layout::Texture));
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_matmuls_match_reference(
        form_ix in 0usize..3,
        pick in any::<u32>(),
        f16 in any::<bool>(),
        m in 1usize..300,
        n in 1usize..300,
        k in 1usize..300,
        data_seed in any::<u64>(),
    ) {
        let gpu = gpu();
        let form = Form::ALL[form_ix];
        let variants = all_variants(form);
        let v = variants[pick as usize % variants.len()];
        let dtype = if f16 && form != Form::Tn { DType::F16 } else { DType::F32 };
        let (sa, sb) = match form {
            Form::Nt => ([m, k], [n, k]),
            Form::Nn => ([m, k], [k, n]),
            Form::Tn => ([k, m], [k, n]),
        };
        let mut rng = Rng::new(data_seed);
        let a = rng.vec(sa[0] * sa[1]);
        let mut b = rng.vec(sb[0] * sb[1]);
        if dtype == DType::F16 {
            b = round_f16(&b);
        }
        let at = Tensor::from_f32(gpu, &sa, &a, "a").unwrap();
        let bm = Matrix::from_host(gpu, v.layout(), sb[0], sb[1], &b, dtype, "b").unwrap();
        let y = Tensor::zeros(gpu, &[m, n], DType::F32, "y").unwrap();
        y.poison(gpu);
        let mut rec = Recorder::new(gpu);
        matmul(&mut rec, form, &at, &bm, &y, &MatmulOpts { variant: Some(v), ..Default::default() }).unwrap();
        rec.run().unwrap();
        let err = rel_err(&y.read_f32(gpu).unwrap(), &matmul_ref(form, m, n, k, &a, &b));
        prop_assert!(err <= 1e-4, "{form} {v} {dtype} m={m} n={n} k={k}: relative error {err:.3e} (data seed {data_seed})");
    }
}
