//! PEFT: the input as adapter_config.json beside a good adapter_model.safetensors.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use lorafuse::lora::peft::Adapter;

fuzz_target!(|data: &[u8]| {
    let good = common::good_adapter();
    let cfg = common::put("peft/adapter_config.json", data);
    let dir = cfg.parent().unwrap();
    if !dir.join("adapter_model.safetensors").exists() {
        std::fs::copy(good.join("adapter_model.safetensors"), dir.join("adapter_model.safetensors")).unwrap();
    }
    common::named(Adapter::load(dir), dir);
});
