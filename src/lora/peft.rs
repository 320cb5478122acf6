//! LoRA adapters in Hugging Face PEFT's format, so lorafuse reads what PEFT writes and PEFT,
//! vLLM and LoRAX load what lorafuse writes:
//! - `adapter_config.json`: peft_type LORA, task_type CAUSAL_LM, r, lora_alpha, lora_dropout,
//!   target_modules, bias "none", fan_in_fan_out false, use_rslora, base_model_name_or_path;
//! - `adapter_model.safetensors`: `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`
//!   [r, in] and `...lora_B.weight` [out, r] (likewise k, v, o and mlp gate, up, down), f32.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The modules a LoRA can target, in Hugging Face names.
pub const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The PEFT module path of a target in layer `i`.
pub fn module_path(layer: usize, target: &str) -> String {
    let block = if matches!(target, "gate_proj" | "up_proj" | "down_proj") { "mlp" } else { "self_attn" };
    format!("base_model.model.model.layers.{layer}.{block}.{target}")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    #[serde(default = "none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
}

fn none() -> String {
    "none".into()
}

impl LoraConfig {
    pub fn new(
        r: usize,
        lora_alpha: f64,
        lora_dropout: f64,
        targets: &[String],
        use_rslora: bool,
        base: Option<String>,
    ) -> Self {
        LoraConfig {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r,
            lora_alpha,
            lora_dropout,
            target_modules: targets.to_vec(),
            bias: "none".into(),
            fan_in_fan_out: false,
            use_rslora,
            use_dora: false,
            base_model_name_or_path: base,
            inference_mode: true,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
        }
    }

    /// lora_alpha / r, or lora_alpha / √r with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            (self.lora_alpha / (self.r as f64).sqrt()) as f32
        } else {
            (self.lora_alpha / self.r as f64) as f32
        }
    }
}

/// One target's factors: A [r, in] and B [out, r], row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Factors {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub inp: usize,
    pub out: usize,
}

/// A LoRA adapter: its config and, per (layer, target), its factors.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub config: LoraConfig,
    pub factors: BTreeMap<(usize, String), Factors>,
    /// Where it was read from, for messages.
    pub source: Option<PathBuf>,
}

impl Adapter {
    pub fn scale(&self) -> f32 {
        self.config.scale()
    }

    pub fn get(&self, layer: usize, target: &str) -> Option<&Factors> {
        self.factors.get(&(layer, target.to_string()))
    }

    /// Reads a PEFT adapter directory.
    pub fn load(dir: &Path) -> Result<Adapter> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?;
        let config: LoraConfig =
            serde_json::from_str(&text).map_err(|e| Error::file(&cfg_path, format!("not a PEFT LoRA config: {e}")))?;
        let bad = |msg: String| Err(Error::file(&cfg_path, msg));
        if config.peft_type != "LORA" {
            return bad(format!("peft_type {} (only LORA adapters are read)", config.peft_type));
        }
        if config.bias != "none" || config.fan_in_fan_out || config.use_dora {
            return bad("bias training, fan_in_fan_out and DoRA adapters are not supported".into());
        }
        if !config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty() {
            return bad("per-module rank_pattern / alpha_pattern are not supported".into());
        }
        if config.r == 0 || !config.lora_alpha.is_finite() {
            return bad(format!(
                "r {} and lora_alpha {}: r must be at least 1, lora_alpha finite",
                config.r, config.lora_alpha
            ));
        }
        if let Some(t) = config.target_modules.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return bad(format!("target module '{t}' is not one of {TARGETS:?}"));
        }
        let st_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&st_path).map_err(|e| Error::file(&st_path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::file(&st_path, e))?;
        // (layer, target) → (A, B), each (shape, values) once read
        type Shaped = Option<(Vec<usize>, Vec<f32>)>;
        let mut factors: BTreeMap<(usize, String), (Shaped, Shaped)> = BTreeMap::new();
        for name in st.names() {
            let Some((layer, target, which)) = parse_name(name) else {
                return Err(Error::file(&st_path, format!("tensor '{name}' is not a LoRA factor of a known module")));
            };
            if !config.target_modules.contains(&target) {
                return Err(Error::file(
                    &st_path,
                    format!(
                        "tensor '{name}' adapts {target}, which adapter_config.json's target_modules {:?} lacks",
                        config.target_modules
                    ),
                ));
            }
            let view = st.tensor(name).map_err(|e| Error::file(&st_path, format!("tensor '{name}': {e}")))?;
            let data = crate::model::source::to_f32(view.dtype(), view.data())
                .map_err(|e| Error::file(&st_path, format!("tensor '{name}': {e}")))?;
            crate::validate::finite_tensor(&st_path, name, &data)?;
            let entry = factors.entry((layer, target)).or_default();
            let slot = if which == 'A' { &mut entry.0 } else { &mut entry.1 };
            *slot = Some((view.shape().to_vec(), data));
        }
        let r = config.r;
        let mut out = BTreeMap::new();
        // (in, out) of each target, as its first layer has it: a model's layers are alike
        let mut shapes: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for ((layer, target), (a, b)) in factors {
            let what = module_path(layer, &target);
            let (Some((sa, a)), Some((sb, b))) = (a, b) else {
                return Err(Error::file(&st_path, format!("{what}: lora_A and lora_B must both be present")));
            };
            if sa.len() != 2 || sb.len() != 2 || sa[0] != r || sb[1] != r {
                return Err(Error::file(
                    &st_path,
                    format!("{what}: lora_A {sa:?} and lora_B {sb:?} do not have rank r = {r}"),
                ));
            }
            let (first, inp, outd) = *shapes.entry(target.clone()).or_insert((layer, sa[1], sb[0]));
            if (inp, outd) != (sa[1], sb[0]) {
                return Err(Error::file(
                    &st_path,
                    format!(
                        "{what} is [{} → {}] (in → out) where layer {first}'s {target} is [{inp} → {outd}]: one module has the wrong shape",
                        sa[1], sb[0]
                    ),
                ));
            }
            out.insert((layer, target), Factors { a, b, inp: sa[1], out: sb[0] });
        }
        Ok(Adapter { config, factors: out, source: Some(dir.to_path_buf()) })
    }

    /// Writes the adapter as a PEFT directory (created if needed), the weights file atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for ((layer, target), f) in &self.factors {
            let p = module_path(*layer, target);
            let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            tensors.push((format!("{p}.lora_A.weight"), vec![self.config.r, f.inp], le(&f.a)));
            tensors.push((format!("{p}.lora_B.weight"), vec![f.out, self.config.r], le(&f.b)));
        }
        let refs: Vec<(String, Vec<usize>, &[u8])> =
            tensors.iter().map(|(n, s, b)| (n.clone(), s.clone(), b.as_slice())).collect();
        let path = dir.join("adapter_model.safetensors");
        crate::atomic::write_safetensors(&path, safetensors::Dtype::F32, &refs, crate::atomic::pt_metadata())?;
        let cfg = serde_json::to_string_pretty(&self.config).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::atomic::write_atomic(&dir.join("adapter_config.json"), &cfg)
    }
}

/// (layer, target, 'A' or 'B') of a PEFT tensor name.
fn parse_name(name: &str) -> Option<(usize, String, char)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let rest = rest.strip_prefix("self_attn.").or_else(|| rest.strip_prefix("mlp."))?;
    let (target, rest) = rest.split_once('.')?;
    let which = match rest {
        "lora_A.weight" | "lora_A.default.weight" => 'A',
        "lora_B.weight" | "lora_B.default.weight" => 'B',
        _ => return None,
    };
    TARGETS.contains(&target).then(|| (layer, target.to_string(), which))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some((3, "q_proj".into(), 'A'))
        );
        assert_eq!(
            parse_name("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"),
            Some((0, "down_proj".into(), 'B'))
        );
        assert_eq!(parse_name("base_model.model.model.layers.0.mlp.fc1.lora_B.weight"), None);
        assert_eq!(module_path(2, "up_proj"), "base_model.model.model.layers.2.mlp.up_proj");
    }
}
