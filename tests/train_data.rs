//! Training data: the paper's files load; the chat template is applied and only the assistant
//! turns carry labels; malformed rows are errors naming file and line, or skipped and counted.

mod common;

use common::default_model;
use lorafuse::kernels::cross_entropy::MASKED;
use lorafuse::model::source::ModelSource;
use lorafuse::train::data::{encode, load};

fn shared(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/paper").join(name)
}

#[test]
fn paper_files_load_and_label_assistant_turns() {
    let src = ModelSource::open(&default_model()).unwrap();
    let tok = src.tokenizer().unwrap();
    let template = src.chat_template().unwrap().unwrap();
    let (safety, bad) = load(&shared("aoa_safety_train.json"), false).unwrap();
    assert_eq!((safety.len(), bad), (16, 0));
    assert_eq!(load(&shared("aoa_task_train.json"), false).unwrap().0.len(), 44);
    assert_eq!(load(&shared("alpaca_safety_only.json"), false).unwrap().0.len(), 1904);
    assert_eq!(load(&shared("dolly_safety_only.jsonl"), false).unwrap().0.len(), 387);

    let ex = &safety[3];
    let (enc, cut) = encode(ex, &tok, &template, None, 4096).unwrap();
    assert!(!cut);
    assert_eq!(enc.tokens.len(), enc.targets.len());
    // the labelled tokens, in order, are exactly the assistant turns' text and end-of-turn
    let labelled: Vec<u32> = enc.targets.iter().copied().filter(|&t| t != MASKED).collect();
    let want: String =
        ex.messages.iter().filter(|m| m.role == "assistant").map(|m| format!("{}<|im_end|>\n", m.content)).collect();
    assert_eq!(tok.decode(&labelled, false).unwrap(), want);
    // each target is the next token
    for (i, &t) in enc.targets.iter().enumerate() {
        if t != MASKED {
            assert_eq!(t, enc.tokens[i + 1]);
        }
    }
    // truncation cuts and is reported
    let (short, cut) = encode(ex, &tok, &template, None, 20).unwrap();
    assert!(cut && short.tokens.len() == 20 && short.targets[19] == MASKED);
    // a system prompt is added where the conversation has none
    let alpaca = &load(&shared("alpaca_safety_only.json"), false).unwrap().0[0];
    let (with, _) = encode(alpaca, &tok, &template, Some("Be terse."), 4096).unwrap();
    assert!(tok.decode(&with.tokens, false).unwrap().starts_with("<|im_start|>system\nBe terse.<|im_end|>"));
}

#[test]
fn malformed_rows_are_errors_or_skipped() {
    let dir = common::tiny::temp_dir("bad-data");
    let p = dir.join("d.jsonl");
    std::fs::write(&p, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{\"messages\": 5}\nnot json\n").unwrap();
    let err = load(&p, false).unwrap_err().to_string();
    assert!(err.contains("d.jsonl") && err.contains("line 2"), "{err}");
    let (ok, bad) = load(&p, true).unwrap();
    assert_eq!((ok.len(), bad), (1, 2));
    std::fs::remove_dir_all(&dir).ok();
}
