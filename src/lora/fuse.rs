//! Adapters fused into one, computed as Hugging Face PEFT's `add_weighted_adapter` defines each
//! combination type (peft 0.21, `tuners/lora/model.py`), with the result's r and lora_alpha set
//! as PEFT sets them (alpha = r, so the scale is 1):
//! - `cat`: the factors stacked along the rank, A's rows scaled by wᵢsᵢ: exactly Σ wᵢ sᵢ BᵢAᵢ;
//!   r = Σ rᵢ (a module some adapters lack is zero-padded).
//! - `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: the A's and the B's
//!   combined separately (combine.rs), with √|wᵢsᵢ| on each side and the sign on A's; equal r.
//! - `svd` and the `*_svd` variants: the deltas sᵢBᵢAᵢ combined with weights wᵢ, then the
//!   best rank-r factorization (svd.rs); r = --rank or the largest rᵢ. PEFT 0.20 and before
//!   weighted each delta by wᵢsᵢ though it already holds sᵢ (Σ wᵢ sᵢ² BᵢAᵢ); 0.21 fixed that;
//!   `peft_svd_scale` reproduces the old weighting.
//!
//! As in PEFT, one adapter alone always merges linearly, and the linear family refuses adapters
//! of different ranks. Unlike PEFT, the result has use_rslora false: PEFT copies the first
//! adapter's flag, which would rescale its result by √r.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::lora::combine::{Combination, SignMethod, combine};
use crate::lora::peft::{Adapter, Factors, LoraConfig, TARGETS};
use crate::lora::svd::{truncate_dense, truncate_factored};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Cat,
    /// A combination of the factors.
    Factors(Combination),
    /// A combination of the deltas, then a truncated SVD.
    Svd(Combination),
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let base = |name: &str| match name {
            "linear" => Some(Combination::Linear),
            "ties" => Some(Combination::Ties),
            "dare_linear" => Some(Combination::DareLinear),
            "dare_ties" => Some(Combination::DareTies),
            "magnitude_prune" => Some(Combination::MagnitudePrune),
            _ => None,
        };
        match s {
            "cat" => Ok(Method::Cat),
            "svd" => Ok(Method::Svd(Combination::Linear)),
            "linear" => Ok(Method::Factors(Combination::Linear)),
            _ => match (s.strip_suffix("_svd").and_then(base), base(s)) {
                (Some(c), _) if c != Combination::Linear => Ok(Method::Svd(c)),
                (_, Some(c)) => Ok(Method::Factors(c)),
                _ => Err(Error::Invalid(format!("unknown fusion method '{s}' (one of {})", METHODS.join(", ")))),
            },
        }
    }
}

/// The methods' names, as PEFT's combination_type takes them.
pub const METHODS: [&str; 11] = [
    "cat",
    "linear",
    "svd",
    "ties",
    "ties_svd",
    "dare_linear",
    "dare_linear_svd",
    "dare_ties",
    "dare_ties_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
];

#[derive(Clone, Debug)]
pub struct FuseOptions {
    pub method: Method,
    /// The share each tensor keeps: ties, dare and magnitude_prune (and their svd forms).
    pub density: Option<f64>,
    pub majority_sign: SignMethod,
    /// The rank of an svd method's result (default: the largest input rank).
    pub rank: Option<usize>,
    /// Seeds DARE's random masks.
    pub seed: u64,
    /// svd methods: weight each delta by wᵢsᵢ as PEFT 0.20 and before did (Σ wᵢ sᵢ² BᵢAᵢ).
    pub peft_svd_scale: bool,
}

impl FuseOptions {
    pub fn new(method: Method) -> FuseOptions {
        FuseOptions {
            method,
            density: None,
            majority_sign: SignMethod::Total,
            rank: None,
            seed: 0,
            peft_svd_scale: false,
        }
    }
}

fn name(a: &Adapter, i: usize) -> String {
    a.source.as_ref().map_or_else(|| format!("adapter {i}"), |p| p.display().to_string())
}

/// Fuses `inputs` (adapter, weight) into one adapter. Weights may be negative. `progress` is
/// called with (modules done, modules) as the work proceeds (from worker threads).
pub fn fuse(
    inputs: &[(&Adapter, f64)],
    opts: &FuseOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Adapter> {
    let first = inputs.first().ok_or_else(|| Error::Invalid("no adapters to fuse".into()))?.0;
    let method = if inputs.len() == 1 { Method::Factors(Combination::Linear) } else { opts.method };
    let ranks: Vec<usize> = inputs.iter().map(|(a, _)| a.config.r).collect();
    let new_rank = match method {
        Method::Cat => ranks.iter().sum(),
        Method::Factors(_) => {
            if ranks.iter().any(|&r| r != ranks[0]) {
                let list: Vec<String> =
                    inputs.iter().enumerate().map(|(i, (a, _))| format!("{} (r {})", name(a, i), a.config.r)).collect();
                return Err(Error::Invalid(format!(
                    "the linear, ties, dare and magnitude_prune methods need adapters of one rank, as PEFT does; got {} (use cat or an svd method)",
                    list.join(", ")
                )));
            }
            ranks[0]
        }
        Method::Svd(_) => opts.rank.unwrap_or_else(|| ranks.iter().copied().max().unwrap_or(1)),
    };
    if new_rank == 0 {
        return Err(Error::Invalid("--rank must be at least 1".into()));
    }
    let combination = match method {
        Method::Cat => None,
        Method::Factors(c) | Method::Svd(c) => Some(c),
    };
    if let Some(c) = combination {
        match opts.density {
            None if c.needs_density() => {
                return Err(Error::Invalid(format!(
                    "the {c:?} combination needs --density (the share of values kept)"
                )));
            }
            Some(d) if !(0.0..=1.0).contains(&d) => {
                return Err(Error::Invalid(format!("--density {d} is outside [0, 1]")));
            }
            _ => {}
        }
    }
    if let Some((i, (a, w))) = inputs.iter().enumerate().find(|(_, (_, w))| !w.is_finite()) {
        return Err(Error::Invalid(format!("{}: weight {w} is not a number", name(a, i))));
    }

    // every module any adapter has, with the same shape in all that have it
    // (in, out, the adapter that first had it); a disagreement names both adapters, as neither
    // alone can be told wrong without the model
    let mut modules: BTreeMap<(usize, String), (usize, usize, usize)> = BTreeMap::new();
    for (i, (a, _)) in inputs.iter().enumerate() {
        for (key, f) in &a.factors {
            let (inp, out, j) = *modules.entry(key.clone()).or_insert((f.inp, f.out, i));
            if (inp, out) != (f.inp, f.out) {
                return Err(Error::Invalid(format!(
                    "layer {} {}: {} has [{inp} → {out}] (in → out), {} has [{} → {}]: adapters of different models",
                    key.0,
                    key.1,
                    name(inputs[j].0, j),
                    name(a, i),
                    f.inp,
                    f.out
                )));
            }
        }
    }
    let keys: Vec<((usize, String), (usize, usize))> =
        modules.into_iter().map(|(k, (inp, out, _))| (k, (inp, out))).collect();
    let done = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(keys.len().max(1));
    type Module = ((usize, String), Factors);
    let results: Vec<Result<Vec<Module>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|wkr| {
                let (keys, done) = (&keys, &done);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (m, (key, (inp, outd))) in keys.iter().enumerate().skip(wkr).step_by(workers) {
                        let present: Vec<(&Factors, f64, f64)> = inputs
                            .iter()
                            .filter_map(|(a, w)| a.factors.get(key).map(|f| (f, *w, a.scale() as f64)))
                            .collect();
                        let mut rng = Rng::new(opts.seed, m as u64);
                        let f = fuse_module(method, &present, *inp, *outd, new_rank, opts, &mut rng)?;
                        out.push((key.clone(), f));
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1, keys.len());
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Invalid("a fusion worker panicked".into()))))
            .collect()
    });
    let mut factors = BTreeMap::new();
    for r in results {
        factors.extend(r?);
    }
    let targets: BTreeSet<&str> =
        inputs.iter().flat_map(|(a, _)| a.config.target_modules.iter().map(String::as_str)).collect();
    let targets: Vec<String> = TARGETS.iter().filter(|t| targets.contains(*t)).map(|t| t.to_string()).collect();
    let config = LoraConfig::new(
        new_rank,
        new_rank as f64,
        first.config.lora_dropout,
        &targets,
        false,
        first.config.base_model_name_or_path.clone(),
    );
    Ok(Adapter { config, factors, source: None })
}

/// One module's fused factors from the adapters that have it: (factors, weight, scale).
fn fuse_module(
    method: Method,
    present: &[(&Factors, f64, f64)],
    inp: usize,
    out: usize,
    rank: usize,
    opts: &FuseOptions,
    rng: &mut Rng,
) -> Result<Factors> {
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let (a, b) = match method {
        Method::Cat => {
            let (mut a, mut b) = (Vec::with_capacity(rank * inp), vec![0.0; out * rank]);
            let mut col = 0;
            for (f, w, s) in present {
                let r = f.a.len() / inp;
                a.extend(f.a.iter().map(|&x| x as f64 * w * s));
                for i in 0..out {
                    for j in 0..r {
                        b[i * rank + col + j] = f.b[i * r + j] as f64;
                    }
                }
                col += r;
            }
            a.resize(rank * inp, 0.0);
            (a, b)
        }
        Method::Factors(c) => {
            let ws: Vec<f64> = present.iter().map(|(_, w, s)| w * s).collect();
            let wa: Vec<f64> = ws.iter().map(|x| x.abs().sqrt() * if *x >= 0.0 { 1.0 } else { -1.0 }).collect();
            let wb: Vec<f64> = ws.iter().map(|x| x.abs().sqrt()).collect();
            let a_s: Vec<Vec<f64>> = present.iter().map(|(f, ..)| f64s(&f.a)).collect();
            let b_s: Vec<Vec<f64>> = present.iter().map(|(f, ..)| f64s(&f.b)).collect();
            let a = combine(c, &a_s, &wa, opts.density, opts.majority_sign, rng)?;
            let b = combine(c, &b_s, &wb, opts.density, opts.majority_sign, rng)?;
            (a, b)
        }
        Method::Svd(c) => {
            // the coefficient of BᵢAᵢ in delta i times its combination weight
            let weight = |w: f64, s: f64| if opts.peft_svd_scale { w * s } else { w };
            let (b, a) = if c == Combination::Linear {
                // Σ (wᵢ sᵢ) BᵢAᵢ is already factored: stack and reduce
                let total: usize = present.iter().map(|(f, ..)| f.a.len() / inp).sum();
                let (mut bs, mut as_) = (vec![0.0; out * total], Vec::with_capacity(total * inp));
                let mut col = 0;
                for (f, w, s) in present {
                    let r = f.a.len() / inp;
                    let k = weight(*w, *s) * s;
                    for i in 0..out {
                        for j in 0..r {
                            bs[i * total + col + j] = f.b[i * r + j] as f64 * k;
                        }
                    }
                    as_.extend(f.a.iter().map(|&x| x as f64));
                    col += r;
                }
                truncate_factored(&bs, &as_, out, inp, total, rank)
            } else {
                let deltas: Vec<Vec<f64>> = present.iter().map(|(f, _, s)| delta(f, *s)).collect();
                let ws: Vec<f64> = present.iter().map(|(_, w, s)| weight(*w, *s)).collect();
                let m = combine(c, &deltas, &ws, opts.density, opts.majority_sign, rng)?;
                truncate_dense(&m, out, inp, rank)
            };
            (a, b)
        }
    };
    let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    Ok(Factors { a: f32s(a), b: f32s(b), inp, out })
}

/// s·B·A [out, in], f64.
fn delta(f: &Factors, s: f64) -> Vec<f64> {
    let r = f.a.len() / f.inp;
    let mut m = vec![0.0; f.out * f.inp];
    for i in 0..f.out {
        for k in 0..r {
            let bik = f.b[i * r + k] as f64 * s;
            if bik == 0.0 {
                continue;
            }
            let row = &f.a[k * f.inp..(k + 1) * f.inp];
            for (mj, &akj) in m[i * f.inp..(i + 1) * f.inp].iter_mut().zip(row) {
                *mj += bik * akj as f64;
            }
        }
    }
    m
}
