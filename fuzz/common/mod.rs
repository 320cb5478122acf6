#![allow(dead_code)] // each target uses a part
//! What every fuzz target shares: a scratch folder of its own process (the parsers read files),
//! and the rule that an error names the file it is about.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A folder for this process's inputs: /dev/shm where there is one (no disk writes per input).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
        let d = base.join(format!("lorafuse-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

/// `bytes` written to `name` inside the scratch folder (`name` may hold folders).
pub fn put(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Ok, or an error that names `path` (a file, or a folder whose file it names): an error that
/// does not say which file is a bug, as a panic is.
pub fn named<T>(r: lorafuse::Result<T>, path: &Path) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "the error does not name {}: {msg}", path.display());
            None
        }
    }
}

/// The tiny model's config.json (tests/common/tiny.rs: the chat model's shapes).
pub const CONFIG: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":48,"intermediate_size":80,"num_hidden_layers":2,"num_attention_heads":3,"num_key_value_heads":1,"head_dim":16,"vocab_size":259,"rope_theta":10000.0,"rms_norm_eps":1e-5,"max_position_embeddings":512,"tie_word_embeddings":true,"torch_dtype":"float32"}"#;

/// A good r = 4 adapter (lora_alpha 8) on q_proj and v_proj of the tiny model, written once by lorafuse itself.
pub fn good_adapter() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use lorafuse::lora::peft::{Adapter, Factors, LoraConfig};
        let dir = scratch().join("good-adapter");
        let targets = vec!["q_proj".to_string(), "v_proj".to_string()];
        let mut factors = std::collections::BTreeMap::new();
        for layer in 0..2 {
            for (t, out) in [("q_proj", 48), ("v_proj", 16)] {
                let a = (0..4 * 48).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
                let b = (0..out * 4).map(|i| (i as f32 * 0.11).cos() * 0.1).collect();
                factors.insert((layer, t.to_string()), Factors { a, b, inp: 48, out });
            }
        }
        let adapter = Adapter { config: LoraConfig::new(4, 8.0, 0.05, &targets, false, None), factors, source: None };
        adapter.save(&dir).expect("the good adapter is written");
        dir
    })
}
