//! The tokenizer built from the GGUF's metadata and the chat template rendered from its own
//! Jinja source reproduce the golden prompt, ids and text of SmolLM2-135M-Instruct.

mod common;

use common::{default_model, golden, golden_ids};
use lorafuse::model::chat::{ChatTemplate, Message};
use lorafuse::model::gguf::Gguf;
use lorafuse::model::tokenizer::Tokenizer;

#[test]
fn golden_prompt_renders_encodes_and_decodes() {
    let g = golden();
    let gguf = Gguf::open(&default_model()).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let template = ChatTemplate::new(gguf.str("tokenizer.chat_template").unwrap()).unwrap();
    let prompt = template
        .render(
            &[Message::new("user", "What is the capital of France?")],
            true,
            tok.bos_token.as_deref(),
            tok.eos_token.as_deref(),
        )
        .unwrap();
    assert_eq!(prompt, g["prompt"].as_str().unwrap());
    let ids = tok.encode(&prompt, true).unwrap();
    assert_eq!(ids, golden_ids(&g, "prompt_ids"));
    assert_eq!(tok.decode(&ids, false).unwrap(), prompt);
    let answer = golden_ids(&g, "greedy_ids");
    assert_eq!(tok.decode(&answer, false).unwrap(), g["greedy_text"].as_str().unwrap());
    assert_eq!(tok.eos, vec![2], "SmolLM2 ends turns with <|im_end|>");
}

#[test]
fn digits_split_and_bytes_round_trip() {
    let gguf = Gguf::open(&default_model()).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    for text in ["12345 apples", "naïve café — 東京 🚀", "  spaces\tand\nnewlines  ", "<|im_start|>user"] {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // SmolLM's pre-tokenizer splits every digit.
    let ids = tok.encode("2026", true).unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(tok.encode("<|im_start|>", true).unwrap(), vec![1]);
}
