fn main() {
    let gpu = lorafuse::gpu::Gpu::new(&lorafuse::gpu::GpuOptions { tune_cache: None, ..Default::default() }).unwrap();
    for _ in 0..3 { println!("{:?}", lorafuse::kernels::ceiling::measure(&gpu, 3).unwrap()); }
}
