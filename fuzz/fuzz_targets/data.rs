//! Data files: the first byte picks the format, the rest is the file. Training conversations
//! (JSON, JSONL), harmful prompts (CSV, JSONL), XSTest's CSV, and MMLU's test and dev CSVs.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

const MMLU_GOOD: &[u8] = b"What is 1+1?,1,2,3,4,B\n";

fuzz_target!(|data: &[u8]| {
    let Some((&format, file)) = data.split_first() else { return };
    match format % 7 {
        0 | 1 => {
            let p = common::put(if format % 7 == 0 { "train.json" } else { "train.jsonl" }, file);
            common::named(lorafuse::train::data::load(&p, false), &p);
            common::named(lorafuse::train::data::load(&p, true), &p);
        }
        2 | 3 => {
            let p = common::put(if format % 7 == 2 { "harmful.csv" } else { "harmful.jsonl" }, file);
            common::named(lorafuse::eval::prompts::load(&p), &p);
        }
        4 => {
            let p = common::put("xstest.csv", file);
            common::named(lorafuse::eval::xstest::load(&p), &p);
        }
        f => {
            let (test, dev) = if f == 5 { (file, MMLU_GOOD) } else { (MMLU_GOOD, file) };
            common::put("mmlu/test/algebra_test.csv", test);
            common::put("mmlu/dev/algebra_dev.csv", dev);
            let dir = common::scratch().join("mmlu");
            common::named(lorafuse::eval::mmlu::load(&dir, None, None), &dir);
        }
    }
});
