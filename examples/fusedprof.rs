use lorafuse::gpu::*;
use lorafuse::kernels::lora::*;
use lorafuse::kernels::matmul::*;
use lorafuse::bench::fill;
fn main() {
    let gpu = Gpu::new(&GpuOptions::from_env().unwrap()).unwrap();
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (m, h, r, na) = (a[0], a[1], a[2], a[3]);
    let layout = Layout::Texture;
    let ads: Vec<HostAdapter> = (0..na).map(|i| HostAdapter { rank: r, a: fill(r*h, i as u64), b: fill(h*r, 9+i as u64), scale: 2.0 }).collect();
    let stack = LoraStack::new(&gpu, layout, h, h, &ads).unwrap();
    let wm = Matrix::from_host(&gpu, layout, h, h, &fill(h*h, 3), DType::F32, "w").unwrap();
    let x = Tensor::from_f32(&gpu, &[m, h], &fill(m*h, 4), "x").unwrap();
    let y = Tensor::zeros(&gpu, &[m, h], DType::F32, "y").unwrap();
    let t = Tensor::zeros(&gpu, &[m, stack.rp()], DType::F32, "t").unwrap();
    let coef = Mix::All(vec![0.5; na]).coef_tensor(&gpu, m, &stack).unwrap();
    for _ in 0..2 {
        let mut rec = Recorder::profiled(&gpu);
        for g in 0..3 { rec.set_group(g); matmul(&mut rec, Form::Nt, &x, &wm, &y, &MatmulOpts::default()).unwrap(); }
        for g in 3..6 { rec.set_group(g); lora_forward(&mut rec, &x, &wm, &stack, &coef, &t, &y, None).unwrap(); }
        let tm = rec.run().unwrap();
        for k in &tm { println!("{:>2} {:<40} {:8.3} ms", k.group, k.label, k.ns/1e6); }
        println!("{}", lorafuse::gpu::profiler::table(&lorafuse::gpu::profiler::summarize(&tm)));
    }
}
