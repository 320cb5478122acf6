//! GGUF: the header, metadata and tensor directory, the model config and tokenizer built from it,
//! and every tensor small enough dequantized.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use lorafuse::model::config::LlamaConfig;
use lorafuse::model::gguf::Gguf;
use lorafuse::model::source::ModelSource;

fuzz_target!(|data: &[u8]| {
    let p = common::put("model.gguf", data);
    let Some(g) = common::named(Gguf::open(&p), &p) else { return };
    common::named(LlamaConfig::from_gguf(&g), &p);
    for t in g.tensors.iter().filter(|t| t.numel() <= 1 << 20) {
        common::named(g.tensor_f32(&t.name), &p);
    }
    if let Some(src) = common::named(ModelSource::open(&p), &p) {
        common::named(src.config(), &p);
        common::named(src.tokenizer(), &p);
        common::named(src.chat_template(), &p);
    }
});
