//! Safetensors: the input as a model's model.safetensors (beside a good config.json: every
//! tensor it lists read at the shape it gives) and as an adapter's adapter_model.safetensors
//! (beside a good adapter_config.json).
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use lorafuse::lora::peft::Adapter;
use lorafuse::model::source::ModelSource;

fuzz_target!(|data: &[u8]| {
    common::put("model/config.json", common::CONFIG.as_bytes());
    let st = common::put("model/model.safetensors", data);
    let dir = st.parent().unwrap().to_path_buf();
    if let Some(src) = common::named(ModelSource::open(&dir), &dir) {
        if let Some(cfg) = common::named(src.config(), &dir) {
            // the names and shapes the header claims, as the safetensors crate reads them
            if let Ok((_, meta)) = safetensors::SafeTensors::read_metadata(data) {
                for (name, info) in meta.tensors() {
                    if info.shape.iter().product::<usize>() <= 1 << 20 {
                        common::named(src.tensor(&name, &info.shape, &cfg), &dir);
                    }
                }
            }
        }
    }
    let ad = common::put("adapter/adapter_model.safetensors", data);
    let adir = ad.parent().unwrap();
    if !adir.join("adapter_config.json").exists() {
        std::fs::copy(common::good_adapter().join("adapter_config.json"), adir.join("adapter_config.json")).unwrap();
    }
    common::named(Adapter::load(adir), adir);
});
