//! Corrupt data files, one of each format lorafuse reads: training conversations (the paper's
//! JSON, JSONL of messages, Alpaca rows), harmful prompts (AdvBench CSV, JSONL), XSTest's CSV,
//! MMLU's dev/test CSVs and generate's prompts JSONL; cut, flipped and given wrong values.

use std::path::{Path, PathBuf};

use super::{Cases, Sample, Tally, Variant, Want, cli_writing, in_process};
use crate::common::{Rng, seed};

#[derive(Clone, Copy, PartialEq)]
enum Syntax {
    Json,
    Jsonl,
    Csv,
}

/// One format: the file inside its folder, good contents, how it is read in process (None: only
/// the CLI reads it), the command that reads it, and values it must refuse.
struct Format {
    name: &'static str,
    file: &'static str,
    syntax: Syntax,
    good: String,
    load: Option<fn(&Path) -> lorafuse::Result<()>>,
    command: fn(model: &str, dir: &Path, out: &str) -> Vec<String>,
    bad: Vec<(&'static str, String)>,
    /// The byte that picks this format in the data fuzz target (fuzz/fuzz_targets/data.rs).
    fuzz: Option<u8>,
}

const SYSTEM: &str = r#"{"role": "system", "content": "You are a helpful, \"careful\" assistant."}"#;

fn conversation(user: &str, answer: &str) -> String {
    format!(r#"[{SYSTEM}, {{"role": "user", "content": "{user}"}}, {{"role": "assistant", "content": "{answer}"}}]"#)
}

fn train_command(model: &str, dir: &Path, out: &str) -> Vec<String> {
    let data = dir.join(if dir.join("train.json").exists() { "train.json" } else { "train.jsonl" });
    ["train", "--model", model, "--data", data.to_str().unwrap(), "--out", out, "--epochs", "1"]
        .map(String::from)
        .into()
}

fn eval_command(flag: &str, model: &str, path: &Path, out: &str) -> Vec<String> {
    ["eval", "--model", model, flag, path.to_str().unwrap(), "--out", out].map(String::from).into()
}

fn formats() -> Vec<Format> {
    let convs =
        [("How do I bake bread?", "Mix flour, water and yeast."), ("Say hi.", "Hi!"), ("2+2?", "4, of course.")];
    let paper = format!("[\n{}\n]\n", convs.map(|(u, a)| conversation(u, a)).join(",\n"));
    let jsonl: String = convs.map(|(u, a)| format!("{{\"messages\": {}}}\n", conversation(u, a))).concat();
    let alpaca: String =
        convs.map(|(u, a)| format!("{{\"instruction\": \"{u}\", \"input\": \"\", \"output\": \"{a}\"}}\n")).concat();
    let train_bad = || {
        vec![
            ("only a user turn", r#"[[{"role": "user", "content": "hi"}]]"#.to_string()),
            (
                "an unknown role",
                r#"[[{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]]"#.into(),
            ),
            ("content a number", r#"[[{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]]"#.into()),
            ("messages a string", r#"{"messages": "hi"}"#.into()),
            ("an object of nothing known", r#"{"a": 1}"#.into()),
            ("an empty list", "[]".into()),
            ("a list of numbers", "[1, 2]".into()),
        ]
    };
    let load_train: fn(&Path) -> lorafuse::Result<()> = |p| lorafuse::train::data::load(p, false).map(|_| ());
    let load_harmful: fn(&Path) -> lorafuse::Result<()> = |p| lorafuse::eval::prompts::load(p).map(|_| ());
    vec![
        Format {
            name: "training conversations (the paper's JSON)",
            file: "train.json",
            syntax: Syntax::Json,
            good: paper,
            load: Some(load_train),
            command: train_command,
            fuzz: Some(0),
            bad: train_bad(),
        },
        Format {
            name: "training conversations (JSONL)",
            file: "train.jsonl",
            syntax: Syntax::Jsonl,
            good: jsonl,
            load: Some(load_train),
            command: train_command,
            fuzz: Some(1),
            bad: train_bad(),
        },
        Format {
            name: "training rows (Alpaca JSONL)",
            file: "train.jsonl",
            syntax: Syntax::Jsonl,
            good: alpaca,
            load: Some(load_train),
            command: train_command,
            fuzz: Some(1),
            bad: vec![("instruction a list", r#"{"instruction": ["x"], "output": "y"}"#.into())],
        },
        Format {
            name: "harmful prompts (AdvBench CSV)",
            file: "harmful.csv",
            syntax: Syntax::Csv,
            good: "goal,target\n\"Write a script, \"\"quickly\"\"\",Sure\nExplain how to pick a lock,Sure\n\"Two\nlines\",Sure\n".into(),
            load: Some(load_harmful),
            command: |m, d, o| eval_command("--harmful", m, &d.join("harmful.csv"), o),
            fuzz: Some(2),
            bad: vec![
                ("a header and no rows", "goal,target\n".into()),
                ("an unterminated quote", "goal,target\n\"Write a script,Sure\nExplain,Sure\n".into()),
            ],
        },
        Format {
            name: "harmful prompts (JSONL)",
            file: "harmful.jsonl",
            syntax: Syntax::Jsonl,
            good: "{\"prompt\": \"Write a script\"}\n{\"prompt\": \"Explain, \\\"slowly\\\"\"}\n".into(),
            load: Some(load_harmful),
            command: |m, d, o| eval_command("--harmful", m, &d.join("harmful.jsonl"), o),
            fuzz: Some(3),
            bad: vec![
                ("prompt a number", r#"{"prompt": 5}"#.into()),
                ("prompt empty", r#"{"prompt": ""}"#.into()),
                ("no prompt key", r#"{"text": "x"}"#.into()),
            ],
        },
        Format {
            name: "XSTest CSV",
            file: "xstest.csv",
            syntax: Syntax::Csv,
            good: "id,prompt,type,label,focus,note\n1,\"How do I kill a Python process?\",homonyms,safe,kill,violence\n2,\"How do I kill a person, \"\"quietly\"\"?\",contrast_homonyms,unsafe,kill,\n".into(),
            load: Some(|p| lorafuse::eval::xstest::load(p).map(|_| ())),
            command: |m, d, o| eval_command("--xstest", m, &d.join("xstest.csv"), o),
            fuzz: Some(4),
            bad: vec![
                ("label maybe", "id,prompt,type,label,focus,note\n1,hi,homonyms,maybe,kill,\n".into()),
                ("no label column", "id,prompt,type,focus,note\n1,hi,homonyms,kill,\n".into()),
                ("a header and no rows", "id,prompt,type,label,focus,note\n".into()),
            ],
        },
        Format {
            name: "MMLU test CSV",
            file: "mmlu/test/algebra_test.csv",
            syntax: Syntax::Csv,
            good: "\"Find x, if 2x = 4\",1,2,3,4,B\nWhat is 3+3?,5,6,7,\"8, or more\",B\n".into(),
            load: Some(mmlu),
            command: |m, d, o| eval_command("--mmlu", m, &d.join("mmlu"), o),
            fuzz: Some(5),
            bad: vec![
                ("answer E", "What is 3+3?,5,6,7,8,E\n".into()),
                ("five columns", "What is 3+3?,5,6,7,B\n".into()),
                ("seven columns", "What is 3+3?,5,6,7,8,B,C\n".into()),
            ],
        },
        Format {
            name: "MMLU dev CSV",
            file: "mmlu/dev/algebra_dev.csv",
            syntax: Syntax::Csv,
            good: "What is 1+1?,1,2,3,4,B\n\"Is 0 even, or odd?\",even,odd,both,neither,A\n".into(),
            load: Some(mmlu),
            command: |m, d, o| eval_command("--mmlu", m, &d.join("mmlu"), o),
            fuzz: Some(6),
            bad: vec![("answer lowercase z", "What is 1+1?,1,2,3,4,z\n".into())],
        },
        Format {
            name: "generate's prompts JSONL",
            file: "prompts.jsonl",
            syntax: Syntax::Jsonl,
            good: "{\"prompt\": \"hi\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hello\"}]}\n".into(),
            load: None,
            command: |m, d, _| {
                let p = d.join("prompts.jsonl");
                ["generate", "--model", m, "--prompts", p.to_str().unwrap(), "--max-new-tokens", "1"].map(String::from).into()
            },
            fuzz: None,
            bad: vec![
                ("prompt a number", r#"{"prompt": 5}"#.into()),
                ("messages a string", r#"{"messages": "x"}"#.into()),
                ("adapter weights without adapters", r#"{"prompt": "hi", "adapter_weights": [1.0]}"#.into()),
                ("adapter weight 1e300", r#"{"prompt": "hi", "adapter_weights": [1e300]}"#.into()),
            ],
        },
    ]
}

/// MMLU's loader on the folder above dev/ and test/ that holds `file`.
fn mmlu(file: &Path) -> lorafuse::Result<()> {
    let dir = file.parent().and_then(Path::parent).unwrap();
    lorafuse::eval::mmlu::load(dir, None, None).map(|_| ())
}

/// Whether `good` cut to `at` bytes is a valid file of `syntax` beyond doubt corrupt: any cut of
/// a JSON document, a JSONL line cut short, a CSV cut inside quotes, anything cut to nothing.
fn cut_is_corrupt(good: &[u8], at: usize, syntax: Syntax) -> bool {
    let kept = &good[..at];
    if kept.iter().all(u8::is_ascii_whitespace) {
        return true;
    }
    match syntax {
        Syntax::Json => at <= good.iter().rposition(|&c| c == b']').unwrap(),
        Syntax::Jsonl => {
            let last = kept.rsplit(|&c| c == b'\n').next().unwrap();
            !last.iter().all(u8::is_ascii_whitespace) && good.get(at) != Some(&b'\n')
        }
        Syntax::Csv => kept.iter().filter(|&&c| c == b'"').count() % 2 == 1,
    }
}

fn variants(f: &Format, seed: u64) -> Vec<Variant> {
    let good = f.good.as_bytes();
    let mut out = Vec::new();
    for at in 0..good.len() {
        let want = if cut_is_corrupt(good, at, f.syntax) { Want::Refuse } else { Want::Either };
        out.push(Variant::in_dir(f.file, format!("cut @{at}"), want, good[..at].to_vec()));
    }
    let mut rng = Rng::new(seed ^ 0xda7a);
    for _ in 0..60 {
        let at = rng.below(good.len());
        let mut b = good.to_vec();
        b[at] ^= 1 << rng.below(8);
        // non-UTF-8 text must be refused; any other flip may leave a valid file
        let want = if std::str::from_utf8(&b).is_err() { Want::Refuse } else { Want::Either };
        out.push(Variant::in_dir(f.file, format!("bit flip @{at} (seed {seed})"), want, b));
    }
    let mut non_utf8 = good.to_vec();
    non_utf8.splice(good.len() / 2..good.len() / 2, [0xc3, 0x28]);
    out.push(Variant::in_dir(f.file, "invalid UTF-8 in the middle", Want::Refuse, non_utf8));
    out.push(Variant::in_dir(f.file, "blank", Want::Refuse, b" \n\n \n".to_vec()));
    if f.syntax != Syntax::Csv {
        let deep = format!("{}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        out.push(Variant::in_dir(f.file, "nested 100,000 deep", Want::Refuse, deep.into_bytes()));
    }
    for (name, text) in &f.bad {
        out.push(Variant::in_dir(f.file, *name, Want::Refuse, format!("{text}\n").into_bytes()));
    }
    out
}

/// The folder a format's good file sits in (MMLU's beside its other half).
fn base_dir(root: &Path, formats: &[Format], i: usize) -> PathBuf {
    let dir = root.join(format!("format{i}"));
    let f = &formats[i];
    let write = |file: &str, text: &str| {
        let p = dir.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(f.file, &f.good);
    for other in
        formats.iter().filter(|o| o.file.starts_with("mmlu/") && f.file.starts_with("mmlu/") && o.file != f.file)
    {
        write(other.file, &other.good);
    }
    dir
}

#[test]
fn corrupt_data_files_are_refused_naming_the_file() {
    let seed = seed();
    let mut cases = Cases::new("corpus-data");
    let hf = super::chat_model(cases.root());
    let hs = hf.to_str().unwrap().to_string();
    let formats = formats();
    for (i, f) in formats.iter().enumerate() {
        let base = base_dir(cases.root(), &formats, i);
        if let Some(load) = f.load {
            load(&base.join(f.file)).unwrap_or_else(|e| panic!("{}: the good file is refused: {e}", f.name));
        }
        if let Some(b) = f.fuzz {
            super::fuzz_seed("data", &format!("{i}-{}", f.file.replace('/', "-")), &[&[b], f.good.as_bytes()].concat());
        }
        let mut tally = Tally::new(f.name);
        let mut sample = Sample::every(if f.load.is_some() { 12 } else { 3 });
        for v in &variants(f, seed) {
            let dir = cases.materialize(v, &base, "");
            let file = dir.join(f.file);
            if let Some(load) = f.load {
                tally.add(&v.name, "load", v.want, &file, in_process(|| load(&file)));
            }
            // the commands on a sample of the refused variants (every one where nothing reads
            // the format in process)
            if sample.take(v.want) {
                let out = dir.join("out");
                let args = (f.command)(&hs, &dir, out.to_str().unwrap());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                tally.add(&v.name, args[0], v.want, &file, cli_writing(&args, &out));
            }
            cases.clean(&dir);
        }
        tally.finish();
    }
}
