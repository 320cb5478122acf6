//! A CPU Llama forward in f64 on the host weights: the independent reference the GPU model is
//! tested against (slow: for tiny models and short prompts).

use crate::error::Result;
use crate::kernels::dropout::{Dropout, keep_ref};
use crate::lora::attach::place;
use crate::lora::peft::Adapter;
use crate::model::config::LlamaConfig;
use crate::model::source::ModelSource;

/// An unmerged adapter on a linear: y += scale · B·A·x̃, x̃ = x with LoRA dropout (mask element
/// `row · width + i` of `drop` for batch row `row`: the GPU's stacked input's element).
struct HostLora {
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
    scale: f64,
    drop: Option<Dropout>,
}

struct HostLinear {
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
    out: usize,
    inp: usize,
    lora: Vec<HostLora>,
}

impl HostLinear {
    /// y = W·x (+ bias) (+ the unmerged adapters), x being batch row `row`.
    fn apply(&self, x: &[f64], row: usize) -> Vec<f64> {
        let mut y: Vec<f64> = (0..self.out)
            .map(|o| {
                let wr = &self.w[o * self.inp..(o + 1) * self.inp];
                let s: f64 = wr.iter().zip(x).map(|(&w, &v)| w as f64 * v).sum();
                s + self.bias.as_ref().map_or(0.0, |b| b[o] as f64)
            })
            .collect();
        for l in &self.lora {
            let xd: Vec<f64> = match &l.drop {
                Some(d) => x
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| if keep_ref(d, (row * self.inp + i) as u32) { v / (1.0 - d.p as f64) } else { 0.0 })
                    .collect(),
                None => x.to_vec(),
            };
            let t: Vec<f64> = (0..l.r)
                .map(|j| l.a[j * self.inp..(j + 1) * self.inp].iter().zip(&xd).map(|(&a, v)| a as f64 * v).sum())
                .collect();
            for (o, yo) in y.iter_mut().enumerate() {
                *yo += l.scale * (0..l.r).map(|j| l.b[o * l.r + j] as f64 * t[j]).sum::<f64>();
            }
        }
        y
    }
}

struct HostLayer {
    attn_norm: Vec<f32>,
    q: HostLinear,
    k: HostLinear,
    v: HostLinear,
    o: HostLinear,
    mlp_norm: Vec<f32>,
    gate: HostLinear,
    up: HostLinear,
    down: HostLinear,
}

pub struct HostLlama {
    cfg: LlamaConfig,
    embed: Vec<f32>,
    layers: Vec<HostLayer>,
    norm: Vec<f32>,
    lm_head: Vec<f32>,
}

fn rmsnorm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, &g)| v * inv * g as f64).collect()
}

fn linear_mut<'a>(l: &'a mut HostLayer, target: &str) -> &'a mut HostLinear {
    match target {
        "q_proj" => &mut l.q,
        "k_proj" => &mut l.k,
        "v_proj" => &mut l.v,
        "o_proj" => &mut l.o,
        "gate_proj" => &mut l.gate,
        "up_proj" => &mut l.up,
        _ => &mut l.down,
    }
}

impl HostLlama {
    pub fn load(src: &ModelSource) -> Result<HostLlama> {
        let cfg = src.config()?;
        let (h, f, hd) = (cfg.hidden, cfg.intermediate, cfg.head_dim);
        let (nq, nkv) = (cfg.heads * hd, cfg.kv_heads * hd);
        let lin = |name: &str, out: usize, inp: usize| -> Result<HostLinear> {
            let bias = if src.has(&format!("{name}.bias")) {
                Some(src.tensor(&format!("{name}.bias"), &[out], &cfg)?)
            } else {
                None
            };
            Ok(HostLinear {
                w: src.tensor(&format!("{name}.weight"), &[out, inp], &cfg)?,
                bias,
                out,
                inp,
                lora: Vec::new(),
            })
        };
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            layers.push(HostLayer {
                attn_norm: src.tensor(&format!("{p}.input_layernorm.weight"), &[h], &cfg)?,
                q: lin(&format!("{p}.self_attn.q_proj"), nq, h)?,
                k: lin(&format!("{p}.self_attn.k_proj"), nkv, h)?,
                v: lin(&format!("{p}.self_attn.v_proj"), nkv, h)?,
                o: lin(&format!("{p}.self_attn.o_proj"), h, nq)?,
                mlp_norm: src.tensor(&format!("{p}.post_attention_layernorm.weight"), &[h], &cfg)?,
                gate: lin(&format!("{p}.mlp.gate_proj"), f, h)?,
                up: lin(&format!("{p}.mlp.up_proj"), f, h)?,
                down: lin(&format!("{p}.mlp.down_proj"), h, f)?,
            });
        }
        let embed = src.tensor("model.embed_tokens.weight", &[cfg.vocab, h], &cfg)?;
        let lm_head = if cfg.tie_embeddings || !src.has("lm_head.weight") {
            embed.clone()
        } else {
            src.tensor("lm_head.weight", &[cfg.vocab, h], &cfg)?
        };
        let norm = src.tensor("model.norm.weight", &[h], &cfg)?;
        Ok(HostLlama { cfg, embed, layers, norm, lm_head })
    }

    /// Adds the adapter unmerged (weight 1), with training's LoRA dropout when `drop` is given:
    /// the mask of each target is the one the GPU draws for its layer and stacked linear.
    pub fn add_unmerged(&mut self, adapter: &Adapter, drop: Option<Dropout>) {
        for ((layer, target), f) in &adapter.factors {
            let (site, ..) = place(&self.cfg, target).expect("a known target");
            let stream = (*layer * 4 + site.index()) as u64;
            let lin = linear_mut(&mut self.layers[*layer], target);
            lin.lora.push(HostLora {
                a: f.a.clone(),
                b: f.b.clone(),
                r: adapter.config.r,
                scale: adapter.scale() as f64,
                drop: drop.map(|d| d.stream(stream)),
            });
        }
    }

    /// Merges `weight` × the adapter into the weights (W += weight · scale · B·A), the reference
    /// for runtime fusion.
    pub fn merge(&mut self, adapter: &Adapter, weight: f32) {
        let s = (weight * adapter.scale()) as f64;
        for ((layer, target), f) in &adapter.factors {
            let lin = linear_mut(&mut self.layers[*layer], target);
            let r = adapter.config.r;
            for o in 0..lin.out {
                for i in 0..lin.inp {
                    let d: f64 = (0..r).map(|j| f.b[o * r + j] as f64 * f.a[j * lin.inp + i] as f64).sum();
                    lin.w[o * lin.inp + i] = (lin.w[o * lin.inp + i] as f64 + s * d) as f32;
                }
            }
        }
    }

    /// Logits at every position of `tokens` (one sequence from position 0), f64.
    pub fn logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        self.logits_at(tokens, 0)
    }

    /// `logits` of a sequence whose first token is row `first_row` of a training batch (where
    /// its dropout masks come from).
    pub fn logits_at(&self, tokens: &[u32], first_row: usize) -> Vec<Vec<f64>> {
        let c = &self.cfg;
        let (h, hd) = (c.hidden, c.head_dim);
        let half = hd / 2;
        let inv_freq = c.inv_freq();
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut hs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| self.embed[t as usize * h..(t as usize + 1) * h].iter().map(|&v| v as f64).collect())
            .collect();
        let rope = |x: &mut [f64], p: usize| {
            for head in x.chunks_mut(hd) {
                for i in 0..half {
                    let (s, co) = (p as f64 * inv_freq[i]).sin_cos();
                    let (x1, x2) = (head[i], head[i + half]);
                    head[i] = x1 * co - x2 * s;
                    head[i + half] = x2 * co + x1 * s;
                }
            }
        };
        for l in &self.layers {
            let xs: Vec<Vec<f64>> = hs.iter().map(|x| rmsnorm(x, &l.attn_norm, c.rms_eps)).collect();
            let mut qs: Vec<Vec<f64>> = xs.iter().enumerate().map(|(t, x)| l.q.apply(x, first_row + t)).collect();
            let mut ks: Vec<Vec<f64>> = xs.iter().enumerate().map(|(t, x)| l.k.apply(x, first_row + t)).collect();
            let vs: Vec<Vec<f64>> = xs.iter().enumerate().map(|(t, x)| l.v.apply(x, first_row + t)).collect();
            for (p, (q, k)) in qs.iter_mut().zip(ks.iter_mut()).enumerate() {
                rope(q, p);
                rope(k, p);
            }
            for (t, hrow) in hs.iter_mut().enumerate() {
                let mut att = vec![0.0; c.heads * hd];
                for head in 0..c.heads {
                    let g = head / group;
                    let q = &qs[t][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (0..=t)
                        .map(|u| q.iter().zip(&ks[u][g * hd..(g + 1) * hd]).map(|(a, b)| a * b).sum::<f64>() * scale)
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    for (u, s) in scores.iter().enumerate() {
                        let p = (s - m).exp() / z;
                        for i in 0..hd {
                            att[head * hd + i] += p * vs[u][g * hd + i];
                        }
                    }
                }
                for (o, v) in hrow.iter_mut().zip(l.o.apply(&att, first_row + t)) {
                    *o += v;
                }
            }
            for (t, hrow) in hs.iter_mut().enumerate() {
                let x = rmsnorm(hrow, &l.mlp_norm, c.rms_eps);
                let g = l.gate.apply(&x, first_row + t);
                let u = l.up.apply(&x, first_row + t);
                let a: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                for (o, v) in hrow.iter_mut().zip(l.down.apply(&a, first_row + t)) {
                    *o += v;
                }
            }
        }
        hs.iter()
            .map(|x| {
                let xn = rmsnorm(x, &self.norm, c.rms_eps);
                (0..c.vocab)
                    .map(|v| self.lm_head[v * h..(v + 1) * h].iter().zip(&xn).map(|(&w, x)| w as f64 * x).sum())
                    .collect()
            })
            .collect()
    }
}
