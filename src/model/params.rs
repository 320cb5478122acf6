//! The model's trainable parameters: the attached adapter's stacks (f32 masters of A and B on the
//! GPU), their gradients, the AdamW moments over them, and both in the named form a checkpoint
//! stores. The trainer decides when and with what hyper-parameters; the kernels run here.

use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::lora::LoraStack;
pub use crate::kernels::optimizer::AdamW;
use crate::kernels::optimizer::{AdamwState, adamw, sumsq, sumsq_partials};
use crate::lora::attach::{Site, place};
use crate::lora::peft::{Adapter, Factors, LoraConfig};
use crate::model::llama::Llama;

/// A named f32 tensor: name, shape, values.
pub type Named = (String, Vec<usize>, Vec<f32>);

/// Named tensors by name: shape and values.
pub type NamedMap = std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>;

/// dA and dB of every adapter stack of the model (shaped like the stacks' A and B).
pub struct LoraGradients {
    layers: Vec<[Option<(Tensor, Tensor)>; 4]>,
}

impl LoraGradients {
    /// Zero gradients for the adapters attached to `model`.
    pub fn new(model: &Llama) -> Result<LoraGradients> {
        let gpu = model.gpu();
        let attached = model.adapters().ok_or_else(|| Error::Invalid("no adapter attached".into()))?;
        let mut layers = Vec::with_capacity(attached.layers.len());
        for l in &attached.layers {
            let mut sites: [Option<(Tensor, Tensor)>; 4] = Default::default();
            for site in Site::ALL {
                if let Some(s) = l.get(site) {
                    let da = Tensor::zeros(gpu, s.a_buf.shape(), DType::F32, "dA")?;
                    let db = Tensor::zeros(gpu, s.b_buf.shape(), DType::F32, "dB")?;
                    sites[site.index()] = Some((da, db));
                }
            }
            layers.push(sites);
        }
        Ok(LoraGradients { layers })
    }

    pub fn get(&self, layer: usize, site: Site) -> Option<&(Tensor, Tensor)> {
        self.layers[layer][site.index()].as_ref()
    }
}

/// AdamW's first and second moments of every stack's A and B (f32), in `stacks` order.
pub struct Moments {
    per_stack: Vec<[Tensor; 4]>,
}

fn site_name(s: Site) -> &'static str {
    match s {
        Site::Qkv => "qkv",
        Site::O => "o",
        Site::GateUp => "gate_up",
        Site::Down => "down",
    }
}

impl Llama {
    /// The stacks of the attached adapters, by (layer, site).
    fn stacks(&self) -> Vec<(usize, Site, &LoraStack)> {
        let Some(a) = self.adapters() else { return Vec::new() };
        a.layers
            .iter()
            .enumerate()
            .flat_map(|(i, ll)| Site::ALL.into_iter().filter_map(move |s| ll.get(s).map(|st| (i, s, st))))
            .collect()
    }

    /// Zero AdamW moments for the attached adapters.
    pub fn new_moments(&self) -> Result<Moments> {
        let z = |t: &Tensor, n: &str| Tensor::zeros(self.gpu(), t.shape(), DType::F32, n);
        let per_stack = (self.stacks().iter())
            .map(|(_, _, st)| {
                Ok([z(&st.a_buf, "m A")?, z(&st.a_buf, "v A")?, z(&st.b_buf, "m B")?, z(&st.b_buf, "v B")?])
            })
            .collect::<Result<_>>()?;
        Ok(Moments { per_stack })
    }

    /// The global L2 norm of `grads` over the adapters' parameters (B's entries outside their
    /// blocks are not parameters and do not count), summed in a fixed order.
    pub fn grad_norm(&self, grads: &LoraGradients) -> Result<f64> {
        let gpu = self.gpu();
        let mut rec = Recorder::new(gpu);
        let mut partials = Vec::new();
        for (layer, site, st) in self.stacks() {
            let (da, db) = grads.get(layer, site).ok_or_else(|| Error::Invalid("a stack without gradients".into()))?;
            for (g, mask) in [(da, None), (db, Some(&st.b_mask))] {
                let p = Tensor::zeros(gpu, &[sumsq_partials(g.numel())], DType::F32, "norm partials")?;
                sumsq(&mut rec, g, mask, &p)?;
                partials.push(p);
            }
        }
        rec.submit()?;
        let mut sq = 0.0f64;
        for p in &partials {
            sq += p.read_f32(gpu)?.iter().map(|&x| x as f64).sum::<f64>();
        }
        Ok(sq.sqrt())
    }

    /// AdamW step `t` (from 1) on every stack with its gradient times `grad_scale`; the kernels'
    /// copies of A and B follow. Waits for the GPU.
    pub fn adamw_step(&self, grads: &LoraGradients, m: &Moments, hp: &AdamW, t: usize, grad_scale: f32) -> Result<()> {
        let mut rec = Recorder::new(self.gpu());
        for ((layer, site, st), [ma, va, mb, vb]) in self.stacks().into_iter().zip(&m.per_stack) {
            let (da, db) = grads.get(layer, site).ok_or_else(|| Error::Invalid("a stack without gradients".into()))?;
            let a = AdamwState { param: &st.a_buf, grad: da, mask: None, m: ma, v: va };
            adamw(&mut rec, hp, t as u32, grad_scale, &a)?;
            let b = AdamwState { param: &st.b_buf, grad: db, mask: Some(&st.b_mask), m: mb, v: vb };
            adamw(&mut rec, hp, t as u32, grad_scale, &b)?;
            st.refresh(&mut rec)?;
        }
        rec.run()?;
        Ok(())
    }

    /// Every stack's A and B with their moments, named for a checkpoint.
    pub fn training_state(&self, m: &Moments) -> Result<Vec<Named>> {
        let mut out = Vec::new();
        for ((layer, site, st), [ma, va, mb, vb]) in self.stacks().into_iter().zip(&m.per_stack) {
            let p = format!("layers.{layer}.{}", site_name(site));
            for (name, t) in [("A", &st.a_buf), ("B", &st.b_buf), ("mA", ma), ("vA", va), ("mB", mb), ("vB", vb)] {
                out.push((format!("{p}.{name}"), t.shape().to_vec(), t.read_f32(self.gpu())?));
            }
        }
        Ok(out)
    }

    /// Loads `training_state`'s tensors (read from `path`) into the attached adapter and `m`.
    pub fn restore_training_state(&self, m: &Moments, tensors: &NamedMap, path: &Path) -> Result<()> {
        let mut rec = Recorder::new(self.gpu());
        for ((layer, site, st), [ma, va, mb, vb]) in self.stacks().into_iter().zip(&m.per_stack) {
            let p = format!("layers.{layer}.{}", site_name(site));
            for (name, t) in [("A", &st.a_buf), ("B", &st.b_buf), ("mA", ma), ("vA", va), ("mB", mb), ("vB", vb)] {
                let key = format!("{p}.{name}");
                let (shape, v) = tensors.get(&key).ok_or_else(|| Error::file(path, format!("{key} is missing")))?;
                if shape.as_slice() != t.shape() {
                    return Err(Error::file(path, format!("{key} is {shape:?}, the adapter's is {:?}", t.shape())));
                }
                t.write_f32(self.gpu(), v)?;
            }
            st.refresh(&mut rec)?;
        }
        rec.run()?;
        Ok(())
    }

    /// The attached adapter (the first), read back from the GPU as a PEFT adapter with `config`
    /// (its targets name the modules each block belongs to).
    pub fn adapter(&self, config: LoraConfig) -> Result<Adapter> {
        let attached = self.adapters().ok_or_else(|| Error::Invalid("no adapter attached".into()))?;
        let mut factors = std::collections::BTreeMap::new();
        for (layer, ll) in attached.layers.iter().enumerate() {
            for site in Site::ALL {
                let Some(stack) = ll.get(site) else { continue };
                for blk in stack.read_blocks(self.gpu())? {
                    let target = (config.target_modules.iter())
                        .find(|t| place(self.cfg(), t).is_some_and(|(s, rows, ..)| s == site && rows == blk.info.rows))
                        .ok_or_else(|| Error::Invalid(format!("layer {layer}: a block at rows {:?}", blk.info.rows)))?;
                    let inp = blk.a.len() / blk.info.rank;
                    let out = blk.info.rows.len();
                    factors.insert((layer, target.clone()), Factors { a: blk.a, b: blk.b, inp, out });
                }
            }
        }
        Ok(Adapter { config, factors, source: None })
    }
}
