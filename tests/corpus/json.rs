//! Corrupt JSON files (config.json, adapter_config.json, the tokenizer's files): cut at
//! structural characters, keys set to wrong values, bytes flipped.

use serde_json::Value;

use super::{Variant, Want};
use crate::common::Rng;

/// `good` cut at its structural characters (at most `cap` of them, spread over the file): all
/// refused, as a JSON value cut anywhere before its end is not JSON.
pub fn cuts(good: &[u8], file: &'static str, cap: usize) -> Vec<Variant> {
    let end = good.iter().rposition(|c| !c.is_ascii_whitespace()).unwrap();
    let at: Vec<usize> = (0..end).filter(|&i| b"{}[],:\"".contains(&good[i])).collect();
    let step = at.len().div_ceil(cap).max(1);
    at.into_iter()
        .step_by(step)
        .map(|i| Variant::in_dir(file, format!("cut @{i}"), Want::Refuse, good[..i].to_vec()))
        .collect()
}

/// `good` (a JSON object) with each `(key, value)` set in turn (`null` value: the key removed),
/// every one refused.
pub fn edits(good: &[u8], file: &'static str, keys: &[(&str, Value)]) -> Vec<Variant> {
    let base: serde_json::Map<String, Value> = serde_json::from_slice(good).unwrap();
    keys.iter()
        .map(|(k, v)| {
            let mut m = base.clone();
            if v.is_null() {
                m.remove(*k);
            } else {
                m.insert(k.to_string(), v.clone());
            }
            Variant::in_dir(file, format!("{k} = {v}"), Want::Refuse, serde_json::to_vec(&m).unwrap())
        })
        .collect()
}

/// Text spliced in by hand where serde_json cannot write it (numbers out of f64's range, a
/// document nested too deep): `(name, from, to)` replacements of the file's text.
pub fn spliced(good: &[u8], file: &'static str, swaps: &[(&str, &str, &str)]) -> Vec<Variant> {
    let v: Value = serde_json::from_slice(good).unwrap();
    let text = serde_json::to_string(&v).unwrap();
    swaps
        .iter()
        .map(|(name, from, to)| {
            assert!(text.contains(from), "{file} has no '{from}' to replace");
            Variant::in_dir(file, *name, Want::Refuse, text.replacen(from, to, 1).into_bytes())
        })
        .collect()
}

/// `n` seeded bit flips: a flip may leave valid JSON with another value, so loading is allowed.
pub fn flips(good: &[u8], file: &'static str, n: usize, seed: u64) -> Vec<Variant> {
    let mut rng = Rng::new(seed ^ 0x15011);
    (0..n)
        .map(|_| {
            let at = rng.below(good.len());
            let mut b = good.to_vec();
            b[at] ^= 1 << rng.below(8);
            Variant::in_dir(file, format!("bit flip @{at} (seed {seed})"), Want::Either, b)
        })
        .collect()
}

/// Empty, blank, not JSON at all, JSON of another kind, nested past any parser's depth.
pub fn wrong_kinds(file: &'static str) -> Vec<Variant> {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    [("empty", ""), ("blank", " \n\t"), ("not JSON", "config"), ("an array", "[1, 2]"), ("a string", "\"x\"")]
        .into_iter()
        .chain(std::iter::once(("nested 100,000 deep", deep.as_str())))
        .map(|(name, text)| Variant::in_dir(file, name, Want::Refuse, text.as_bytes().to_vec()))
        .chain(std::iter::once(Variant::in_dir(file, "not UTF-8", Want::Refuse, vec![b'{', 0xff, 0xfe, b'}'])))
        .collect()
}
