//! How PEFT adapters attach to the model's linear layers. The model stacks q/k/v and gate/up
//! into one matmul each, so an adapter on q_proj becomes a block of the stacked q/k/v layer that
//! owns q's rows (and zeros elsewhere): the product is exactly PEFT's, and several adapters on
//! several targets cost one fused launch per stacked layer.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Layout};
use crate::kernels::lora::{LoraBlock, LoraStack};
use crate::lora::peft::{Adapter, Factors, TARGETS};
use crate::model::config::LlamaConfig;

/// The model's stacked linear layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    Qkv,
    O,
    GateUp,
    Down,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::Qkv, Site::O, Site::GateUp, Site::Down];

    /// Position in `ALL`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The stacked layer a PEFT target lives in, its rows there, and (in, out) of the stacked layer.
pub fn place(cfg: &LlamaConfig, target: &str) -> Option<(Site, Range<usize>, usize, usize)> {
    let (h, f) = (cfg.hidden, cfg.intermediate);
    let (nq, nkv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let qkv = nq + 2 * nkv;
    Some(match target {
        "q_proj" => (Site::Qkv, 0..nq, h, qkv),
        "k_proj" => (Site::Qkv, nq..nq + nkv, h, qkv),
        "v_proj" => (Site::Qkv, nq + nkv..qkv, h, qkv),
        "o_proj" => (Site::O, 0..h, nq, h),
        "gate_proj" => (Site::GateUp, 0..f, h, 2 * f),
        "up_proj" => (Site::GateUp, f..2 * f, h, 2 * f),
        "down_proj" => (Site::Down, 0..h, f, h),
        _ => return None,
    })
}

/// The adapters of one layer, one stack per stacked linear that any adapter targets.
#[derive(Default)]
pub struct LayerLora {
    pub qkv: Option<LoraStack>,
    pub o: Option<LoraStack>,
    pub gate_up: Option<LoraStack>,
    pub down: Option<LoraStack>,
}

impl LayerLora {
    pub fn get(&self, site: Site) -> Option<&LoraStack> {
        match site {
            Site::Qkv => self.qkv.as_ref(),
            Site::O => self.o.as_ref(),
            Site::GateUp => self.gate_up.as_ref(),
            Site::Down => self.down.as_ref(),
        }
    }

    fn slot(&mut self, site: Site) -> &mut Option<LoraStack> {
        match site {
            Site::Qkv => &mut self.qkv,
            Site::O => &mut self.o,
            Site::GateUp => &mut self.gate_up,
            Site::Down => &mut self.down,
        }
    }
}

/// Adapters attached to a model, in the order their weights are given.
pub struct Attached {
    pub layers: Vec<LayerLora>,
    pub names: Vec<String>,
    pub scales: Vec<f32>,
}

impl Attached {
    pub fn n_adapters(&self) -> usize {
        self.scales.len()
    }
}

/// Why factors `f` of `target` in layer `layer` do not fit a model of `cfg`; None when they do.
pub fn misfit(cfg: &LlamaConfig, layer: usize, target: &str, f: &Factors) -> Option<String> {
    let Some((_, rows, inp, _)) = place(cfg, target) else {
        return Some(format!("unknown target {target}"));
    };
    if layer >= cfg.layers {
        return Some(format!(
            "has layer {layer} ({target}); the model has {} layers (0 to {})",
            cfg.layers,
            cfg.layers - 1
        ));
    }
    if (f.inp, f.out) != (inp, rows.len()) {
        return Some(format!(
            "layer {layer} {target} is [{} → {}] (in → out), the model's is [{inp} → {}]",
            f.inp,
            f.out,
            rows.len()
        ));
    }
    None
}

fn name_of(a: &Adapter, i: usize) -> String {
    a.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!("adapter {i}"))
}

/// Checks each adapter against the model and builds the per-layer stacks.
pub fn attach(gpu: &Gpu, layout: Layout, cfg: &LlamaConfig, adapters: &[Adapter]) -> Result<Attached> {
    for (i, a) in adapters.iter().enumerate() {
        for ((layer, target), f) in &a.factors {
            if let Some(why) = misfit(cfg, *layer, target, f) {
                return Err(Error::Invalid(format!("{}: {why}", name_of(a, i))));
            }
        }
    }
    let scales: Vec<f32> = adapters.iter().map(Adapter::scale).collect();
    let mut layers = Vec::with_capacity(cfg.layers);
    for layer in 0..cfg.layers {
        let mut ll = LayerLora::default();
        for site in Site::ALL {
            let mut blocks = Vec::new();
            let mut dims = None;
            for target in TARGETS {
                let (s, rows, inp, out) = place(cfg, target).expect("every known target has a place");
                if s != site {
                    continue;
                }
                dims = Some((inp, out));
                for (i, a) in adapters.iter().enumerate() {
                    if let Some(Factors { a: fa, b: fb, .. }) = a.get(layer, target) {
                        blocks.push(LoraBlock {
                            adapter: i,
                            rank: a.config.r,
                            a: fa.clone(),
                            b: fb.clone(),
                            rows: rows.clone(),
                        });
                    }
                }
            }
            if let (false, Some((inp, out))) = (blocks.is_empty(), dims) {
                *ll.slot(site) = Some(LoraStack::from_blocks(gpu, layout, inp, out, &blocks, &scales)?);
            }
        }
        layers.push(ll);
    }
    Ok(Attached { layers, names: adapters.iter().enumerate().map(|(i, a)| name_of(a, i)).collect(), scales })
}
