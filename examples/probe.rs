use lorafuse::gpu::*;
use lorafuse::kernels::matmul::*;
use lorafuse::tune::time_op;

fn main() {
    let gpu = Gpu::new(&GpuOptions { tune_cache: None, ..Default::default() }).unwrap();
    let args: Vec<String> = std::env::args().collect();
    let m: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(256);
    let k: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(2048);
    let n: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(2048);
    let forms: Vec<Form> = args.get(4).map(|s| s.split(',').map(|f| f.parse().unwrap()).collect()).unwrap_or(vec![Form::Nt]);
    let only: Option<String> = args.get(5).cloned();
    let data: Vec<f32> = (0..(m.max(n) * k.max(n) )).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    for form in forms {
        for layout in [Layout::Texture, Layout::Buffer] {
            for dtype in [DType::F32, DType::F16] {
                if form == Form::Tn && dtype == DType::F16 { continue; }
                let (sa, sb) = match form { Form::Nt => ([m, k], [n, k]), Form::Nn => ([m, k], [k, n]), Form::Tn => ([k, m], [k, n]) };
                let a = Tensor::from_f32(&gpu, &sa, &data[..sa[0]*sa[1]], "a").unwrap();
                let b = Matrix::from_host(&gpu, layout, sb[0], sb[1], &data[..sb[0]*sb[1]], dtype, "b").unwrap();
                let y = Tensor::zeros(&gpu, &[m, n], DType::F32, "y").unwrap();
                for v in Variant::candidates(&gpu, form, layout) {
                    if let Some(o) = &only { if !v.to_string().contains(o.as_str()) { continue; } }
                    let t0 = std::time::Instant::now();
                    let opts = MatmulOpts { variant: Some(v), ..Default::default() };
                    let ms = time_op(&gpu, 3, |rec| matmul(rec, form, &a, &b, &y, &opts)).unwrap();
                    let gf = 2.0 * (m * n * k) as f64 / ms / 1e6;
                    println!("{form} {m}x{k}x{n} {dtype} {v:<16} {ms:9.3} ms {gf:7.2} GF/s  (total {:.1}s)", t0.elapsed().as_secs_f64());
                }
            }
        }
    }
}
