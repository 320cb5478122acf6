fn main() {
    for a in lorafuse::gpu::list_adapters(lorafuse::gpu::BackendChoice::Auto) {
        println!("{a:#?}");
    }
}
