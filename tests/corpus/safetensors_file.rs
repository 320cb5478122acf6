//! Corrupt safetensors files (a model's weights, an adapter's factors): the 8-byte header length,
//! the JSON header's entries and the data, each spoiled.

use serde_json::{Map, Value, json};

use super::{Variant, Want};
use crate::common::Rng;

/// A file as its parts: the JSON header and the data after it.
struct Parts {
    header: Map<String, Value>,
    data: Vec<u8>,
}

fn split(b: &[u8]) -> (usize, Parts) {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    (n, Parts { header, data: b[8 + n..].to_vec() })
}

fn join(p: &Parts) -> Vec<u8> {
    let mut h = serde_json::to_string(&p.header).unwrap().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&p.data);
    out
}

/// (name, start, end) of each tensor's data, absolute in the file.
fn spans(b: &[u8]) -> Vec<(String, usize, usize)> {
    let (n, p) = split(b);
    p.header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            (k.clone(), 8 + n + o[0].as_u64().unwrap() as usize, 8 + n + o[1].as_u64().unwrap() as usize)
        })
        .collect()
}

/// Every variant of the f32 safetensors file `good`, named `file` inside its directory. `strict`:
/// a tensor the reader does not know is a corruption (an adapter's factors), not one a model's
/// loader may pass over as Hugging Face's does.
pub fn variants(good: &[u8], file: &'static str, strict: bool, seed: u64) -> Vec<Variant> {
    let mut out = Vec::new();
    let (n, parts) = split(good);
    let mut refuse = |name: String, bytes: Vec<u8>| out.push(Variant::in_dir(file, name, Want::Refuse, bytes));
    // truncations: in the header length, at every structural character of the header, at the
    // start, middle and last byte of every tensor's data
    for at in 0..8 {
        refuse(format!("cut at byte {at} of the header length"), good[..at].to_vec());
    }
    for at in (8..8 + n).filter(|&i| b"{}[],:\"".contains(&good[i])) {
        refuse(format!("cut in the header @{at}"), good[..at].to_vec());
    }
    for (name, s, e) in spans(good) {
        for (what, at) in [("start", s), ("middle", (s + e) / 2), ("last byte", e - 1)] {
            refuse(format!("cut at the {what} of {name}'s data"), good[..at].to_vec());
        }
    }
    // oversized or inconsistent header lengths
    for (what, v) in [("2^64-1", u64::MAX), ("2^40", 1 << 40), ("+1", n as u64 + 1), ("-1", n as u64 - 1), ("0", 0)] {
        let mut b = good.to_vec();
        b[..8].copy_from_slice(&v.to_le_bytes());
        refuse(format!("header length {what}"), b);
    }
    let edit = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut p = Parts { header: parts.header.clone(), data: parts.data.clone() };
        f(&mut p.header);
        join(&p)
    };
    let names: Vec<String> = parts.header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    for name in &names {
        let t = &parts.header[name];
        let shape: Vec<u64> = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        let offs = [t["data_offsets"][0].as_u64().unwrap(), t["data_offsets"][1].as_u64().unwrap()];
        let set = |key: &str, v: Value| edit(&|h| h[name][key] = v.clone());
        // wrong dtypes: another of the same size, of another size, unknown
        for d in ["I32", "F16", "BF16", "U8", "Q9"] {
            refuse(format!("{name}: dtype {d}"), set("dtype", json!(d)));
        }
        // wrong shapes: swapped, doubled, empty, another rank
        if shape.len() == 2 && shape[0] != shape[1] {
            refuse(format!("{name}: shape swapped"), set("shape", json!([shape[1], shape[0]])));
        }
        let mut doubled = shape.clone();
        doubled[0] *= 2;
        refuse(format!("{name}: first dimension doubled"), set("shape", json!(doubled)));
        refuse(format!("{name}: shape [0]"), set("shape", json!([0])));
        refuse(format!("{name}: shape 2^62 x 4"), set("shape", json!([1u64 << 62, 4])));
        if shape.len() > 1 {
            let flat: u64 = shape.iter().product();
            refuse(format!("{name}: flattened to 1-D"), set("shape", json!([flat])));
        }
        // data offsets past the data, reversed, overlapping the next tensor
        let len = parts.data.len() as u64;
        refuse(format!("{name}: data end past the file"), set("data_offsets", json!([offs[0], len + 4])));
        refuse(format!("{name}: data offsets reversed"), set("data_offsets", json!([offs[1], offs[0]])));
        refuse(format!("{name}: data offsets 2^64-1"), set("data_offsets", json!([offs[0], u64::MAX])));
        refuse(format!("{name}: header entry not an object"), set("shape", json!("many")));
        refuse(
            format!("{name}: removed"),
            edit(&|h| {
                h.remove(name);
            }),
        );
        // non-finite values
        for (what, v) in [("a NaN", f32::NAN), ("an infinity", f32::INFINITY)] {
            let mut b = good.to_vec();
            let at = 8 + n + (offs[0] as usize + offs[1] as usize) / 2 / 4 * 4;
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            refuse(format!("{name}: {what}"), b);
        }
    }
    let unknown = edit(&|h| {
        let first = h[&names[0]].clone();
        h.insert("model.extra.weight".into(), first);
    });
    out.push(Variant::in_dir(file, "an unknown tensor", if strict { Want::Refuse } else { Want::Either }, unknown));
    // seeded bit flips: in the header or in a value; a flip to a non-finite value must be refused
    let mut rng = Rng::new(seed ^ 0x5afe);
    for i in 0..120 {
        let at = if i % 3 == 0 { rng.below(8 + n) } else { 8 + n + rng.below(good.len() - 8 - n) };
        let mut b = good.to_vec();
        b[at] ^= 1 << rng.below(8);
        let value_at = at >= 8 + n && {
            let s = 8 + n + (at - 8 - n) / 4 * 4;
            !f32::from_le_bytes(b[s..s + 4].try_into().unwrap()).is_finite()
        };
        let want = if value_at { Want::Refuse } else { Want::Either };
        out.push(Variant::in_dir(file, format!("bit flip @{at} (seed {seed})"), want, b));
    }
    out
}
