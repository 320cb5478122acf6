//! Corrupt GGUF models: the tiny chat model exported by lorafuse (f16 matrices, f32 norms, its
//! byte-level tokenizer in the metadata), spoiled at every structural boundary of its header.

use std::path::Path;

use lorafuse::model::quant::GgmlType;
use lorafuse::model::source::ModelSource;

use super::{Cases, SHORT, Sample, Tally, Variant, Want, cli, cli_writing, in_process, load_model};
use crate::common::{Rng, seed};

/// A field of the file: where it starts, how long it is, what it holds, and the metadata key or
/// tensor it belongs to.
#[derive(Clone, Debug)]
struct Field {
    at: usize,
    len: usize,
    kind: Kind,
    owner: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Magic,
    Version,
    TensorCount,
    KvCount,
    /// a string's u64 length (a key, a string value, a tensor name)
    StrLen,
    StrBytes,
    ValueType,
    /// a scalar metadata value of this GGUF type
    Scalar(u32),
    ArrayType,
    ArrayCount,
    NDims,
    Dim,
    TensorType,
    TensorOffset,
}

/// A tensor: its directory fields and its data in the file (absolute byte range).
struct Tensor {
    name: String,
    name_len: Field,
    ndims: Field,
    dims: Vec<Field>,
    ty: Field,
    offset: Field,
    at: usize,
    len: usize,
}

/// The layout of a GGUF file, read by this walker (not lorafuse's reader, so that the two can
/// disagree): every header field, and every tensor.
struct Layout {
    fields: Vec<Field>,
    data_start: usize,
    tensors: Vec<Tensor>,
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    fields: Vec<Field>,
    owner: String,
}

impl Walker<'_> {
    fn take(&mut self, len: usize, kind: Kind) -> u64 {
        let f = Field { at: self.pos, len, kind, owner: self.owner.clone() };
        self.fields.push(f);
        self.pos += len;
        value(self.b, self.fields.last().unwrap())
    }

    fn string(&mut self) -> String {
        let n = self.take(8, Kind::StrLen) as usize;
        let s = String::from_utf8_lossy(&self.b[self.pos..self.pos + n]).to_string();
        self.take(n, Kind::StrBytes);
        s
    }
}

/// The little-endian integer a field of at most 8 bytes holds.
fn value(b: &[u8], f: &Field) -> u64 {
    let mut v = [0u8; 8];
    let n = f.len.min(8);
    v[..n].copy_from_slice(&b[f.at..f.at + n]);
    u64::from_le_bytes(v)
}

fn scalar_size(ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => panic!("the walker does not know GGUF type {ty}"),
    }
}

fn walk(b: &[u8]) -> Layout {
    let mut w = Walker { b, pos: 0, fields: Vec::new(), owner: "header".into() };
    w.take(4, Kind::Magic);
    w.take(4, Kind::Version);
    let n_tensors = w.take(8, Kind::TensorCount);
    let n_kv = w.take(8, Kind::KvCount);
    let mut alignment = 32;
    for _ in 0..n_kv {
        w.owner = "a key".into();
        w.owner = w.string();
        let ty = w.take(4, Kind::ValueType) as u32;
        match ty {
            8 => {
                w.string();
            }
            9 => {
                let ety = w.take(4, Kind::ArrayType) as u32;
                for _ in 0..w.take(8, Kind::ArrayCount) {
                    if ety == 8 {
                        w.string();
                    } else {
                        w.take(scalar_size(ety), Kind::Scalar(ety));
                    }
                }
            }
            _ => {
                let v = w.take(scalar_size(ty), Kind::Scalar(ty));
                if w.owner == "general.alignment" {
                    alignment = v as usize;
                }
            }
        }
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        w.owner = "a tensor name".into();
        let name_at = w.fields.len();
        let name = w.string();
        w.owner = name.clone();
        let name_len = w.fields[name_at].clone();
        let nd = w.take(4, Kind::NDims);
        let ndims = w.fields.last().unwrap().clone();
        let numel: u64 = (0..nd).map(|_| w.take(8, Kind::Dim)).product();
        let dims = w.fields[w.fields.len() - nd as usize..].to_vec();
        let ty_id = w.take(4, Kind::TensorType);
        let ty = w.fields.last().unwrap().clone();
        let off = w.take(8, Kind::TensorOffset) as usize;
        let offset = w.fields.last().unwrap().clone();
        let len = match ty_id {
            0 => numel as usize * 4,
            1 => numel as usize * 2,
            other => panic!("the corpus model has GGML type {other}"),
        };
        infos.push(Tensor { name, name_len, ndims, dims, ty, offset, at: off, len });
    }
    let data_start = w.pos.div_ceil(alignment) * alignment;
    for t in &mut infos {
        t.at += data_start;
    }
    Layout { fields: w.fields, data_start, tensors: infos }
}

fn patch(b: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    v[at..at + with.len()].copy_from_slice(with);
    v
}

/// Whether the tensor value that holds byte `at` is non-finite in `b`.
fn non_finite_at(b: &[u8], tensors: &[Tensor], at: usize) -> bool {
    let Some(t) = tensors.iter().find(|t| (t.at..t.at + t.len).contains(&at)) else { return false };
    let f32s = value(b, &t.ty) == 0;
    let size = if f32s { 4 } else { 2 };
    let e = &b[t.at + (at - t.at) / size * size..][..size];
    if f32s {
        !f32::from_le_bytes([e[0], e[1], e[2], e[3]]).is_finite()
    } else {
        !half::f16::from_le_bytes([e[0], e[1]]).is_finite()
    }
}

/// Every variant of the good file `good`.
fn variants(good: &[u8]) -> Vec<Variant> {
    let l = walk(good);
    let mut out = Vec::new();
    let mut refuse = |name: String, bytes: Vec<u8>| out.push(Variant::new(name, Want::Refuse, bytes));
    let set = |f: &Field, v: u64| patch(good, f.at, &v.to_le_bytes()[..f.len]);
    // truncations: at the start and in the middle of every header field, in the padding before
    // the data, and at the start, middle and last byte of every tensor's data
    for f in &l.fields {
        refuse(format!("cut at {:?} of {} @{}", f.kind, f.owner, f.at), good[..f.at].to_vec());
        if f.len > 1 {
            refuse(format!("cut inside {:?} of {} @{}", f.kind, f.owner, f.at), good[..f.at + f.len / 2].to_vec());
        }
    }
    let header_end = l.fields.last().map(|f| f.at + f.len).unwrap();
    if header_end < l.data_start {
        refuse("cut in the padding".into(), good[..header_end + 1].to_vec());
    }
    for t in &l.tensors {
        for (what, at) in [("start", t.at), ("middle", t.at + t.len / 2), ("last byte", t.at + t.len - 1)] {
            refuse(format!("cut at the {what} of {}'s data", t.name), good[..at].to_vec());
        }
    }
    // oversized counts and lengths
    let first = |k: Kind| l.fields.iter().find(|f| f.kind == k).unwrap();
    let (tc, kc, key, arr) =
        (first(Kind::TensorCount), first(Kind::KvCount), first(Kind::StrLen), first(Kind::ArrayCount));
    for (what, f, v) in [
        ("tensor count 2^64-1", tc, u64::MAX),
        ("tensor count 2^40", tc, 1 << 40),
        ("tensor count + 1", tc, value(good, tc) + 1),
        ("metadata count 2^64-1", kc, u64::MAX),
        ("metadata count + 1", kc, value(good, kc) + 1),
        ("first key's length 2^64-1", key, u64::MAX),
        ("first key's length 2^40", key, 1 << 40),
        ("first array's count 2^64-1", arr, u64::MAX),
        ("first array's count + 1", arr, value(good, arr) + 1),
    ] {
        refuse(what.into(), set(f, v));
    }
    for t in &l.tensors {
        let n = &t.name;
        refuse(format!("{n}: name length 2^40"), set(&t.name_len, 1 << 40));
        for v in [0, 5, u32::MAX as u64] {
            refuse(format!("{n}: {v} dimensions"), set(&t.ndims, v));
        }
        let d = &t.dims[0];
        for (what, v) in [
            ("2^40", 1u64 << 40),
            ("2^64-1", u64::MAX),
            ("0", 0),
            ("doubled", value(good, d) * 2),
            ("- 1", value(good, d) - 1),
        ] {
            refuse(format!("{n}: first dimension {what}"), set(d, v));
        }
        let off = value(good, &t.offset);
        for (what, v) in [("+1 (unaligned)", off + 1), ("+32", off + 32), ("2^63", 1 << 63)] {
            refuse(format!("{n}: data offset {what}"), set(&t.offset, v));
        }
        // wrong dtypes: unknown, and f16 data read as f32 or f32 as f16
        let other = if value(good, &t.ty) == 0 { 1 } else { 0 };
        refuse(format!("{n}: type 99"), set(&t.ty, 99));
        refuse(format!("{n}: type {other}"), set(&t.ty, other));
        // wrong shapes: a matrix's dimensions swapped (the same number of values)
        if t.dims.len() == 2 && value(good, &t.dims[0]) != value(good, &t.dims[1]) {
            let (a, b) = (value(good, &t.dims[0]), value(good, &t.dims[1]));
            refuse(format!("{n}: dimensions swapped"), patch(&set(&t.dims[0], b), t.dims[1].at, &a.to_le_bytes()));
        }
        // non-finite values in its data
        let mid = t.at + t.len / 2 / 4 * 4;
        let (nan, inf): (Vec<u8>, Vec<u8>) = if value(good, &t.ty) == 0 {
            (f32::NAN.to_le_bytes().into(), f32::NEG_INFINITY.to_le_bytes().into())
        } else {
            (half::f16::NAN.to_le_bytes().into(), half::f16::INFINITY.to_le_bytes().into())
        };
        refuse(format!("{n}: a NaN"), patch(good, mid, &nan));
        refuse(format!("{n}: an infinity"), patch(good, mid, &inf));
    }
    // metadata: an unknown value type; the numbers lorafuse reads non-finite, out of range or of
    // the wrong type (a count stored as a float)
    for f in l.fields.iter().filter(|f| f.kind == Kind::ValueType) {
        refuse(format!("{}: value type 99", f.owner), set(f, 99));
    }
    let read = |f: &&Field| f.owner.starts_with("llama.") || f.owner.ends_with("_token_id");
    for f in l.fields.iter().filter(|f| f.kind == Kind::Scalar(4)).filter(read) {
        refuse(format!("{}: u32 typed f32", f.owner), patch(good, f.at - 4, &6u32.to_le_bytes()));
    }
    for f in l.fields.iter().filter(|f| f.kind == Kind::Scalar(6)).filter(read) {
        for (what, v) in [("NaN", f32::NAN), ("inf", f32::INFINITY), ("-1", -1.0), ("0", 0.0)] {
            refuse(format!("{} = {what}", f.owner), patch(good, f.at, &v.to_le_bytes()));
        }
    }
    // seeded bit flips, half in the header and half in the data; a flip that leaves a tensor
    // value non-finite must be refused, any other may still be a valid model
    let seed = seed();
    let mut rng = Rng::new(seed ^ 0x6767);
    for i in 0..240 {
        let at = if i % 2 == 0 { rng.below(header_end) } else { l.data_start + rng.below(good.len() - l.data_start) };
        let mut v = good.to_vec();
        v[at] ^= 1 << rng.below(8);
        let want = if non_finite_at(&v, &l.tensors, at) { Want::Refuse } else { Want::Either };
        out.push(Variant::new(format!("bit flip @{at} (seed {seed})"), want, v));
    }
    out
}

#[test]
fn corrupt_gguf_models_are_refused_naming_the_file() {
    let mut cases = Cases::new("corpus-gguf");
    let hf = super::chat_model(cases.root());
    let good_path = cases.root().join("good.gguf");
    let src = ModelSource::open(&hf).unwrap();
    lorafuse::model::export_gguf::export_gguf(&src, &[], GgmlType::F16, &good_path, &mut |_, _| {}).unwrap();
    load_model(&good_path).expect("the uncorrupted model loads");
    let good = std::fs::read(&good_path).unwrap();
    super::fuzz_seed("gguf", "tiny-chat-f16.gguf", &good);
    let mut tally = Tally::new("GGUF model");
    let mut sample = Sample::every(40);
    for v in &variants(&good) {
        let p = cases.materialize(v, Path::new(""), "gguf");
        tally.add(&v.name, "load", v.want, &p, in_process(|| load_model(&p)));
        if sample.take(v.want) {
            let ps = p.to_str().unwrap();
            let out = p.with_extension("out.gguf");
            let os = out.to_str().unwrap();
            tally.add(&v.name, "generate", v.want, &p, cli(&[&["generate", "--model", ps][..], &SHORT].concat()));
            tally.add(
                &v.name,
                "export gguf",
                v.want,
                &p,
                cli_writing(&["export", "gguf", "--model", ps, "--type", "f16", "--out", os], &out),
            );
        }
        cases.clean(&p);
    }
    tally.finish();
}
