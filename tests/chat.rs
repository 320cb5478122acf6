//! Chat templates of the common Llama-family formats, rendered by the Jinja engine. The
//! templates here are written for the tests in each family's style and use the constructs the
//! real ones use (loops with loop.first, slicing, namespace(), Python string methods, whitespace
//! control, raise_exception, bos_token).

use lorafuse::model::chat::{ChatTemplate, Message};

fn conv() -> Vec<Message> {
    vec![
        Message::new("system", "Be brief."),
        Message::new("user", "  Hi there  "),
        Message::new("assistant", "Hello!"),
        Message::new("user", "Capital of France?"),
    ]
}

#[test]
fn llama3_style() {
    let t = ChatTemplate::new(
        "{{- bos_token }}\n{%- for message in messages %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n",
    )
    .unwrap();
    let out = t.render(&conv(), true, Some("<|begin_of_text|>"), Some("<|eot_id|>")).unwrap();
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

#[test]
fn llama2_inst_style() {
    let t = ChatTemplate::new(LLAMA2).unwrap();
    let out = t.render(&conv(), true, Some("<s>"), Some("</s>")).unwrap();
    assert_eq!(
        out,
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n  Hi there [/INST] Hello! </s><s>[INST] Capital of France? [/INST]"
    );
    let bad = vec![Message::new("user", "a"), Message::new("user", "b")];
    let err = t.render(&bad, true, Some("<s>"), Some("</s>")).unwrap_err();
    assert!(err.to_string().contains("alternate"), "{err}");
}

#[test]
fn qwen2_chatml_style_with_default_system() {
    let t = ChatTemplate::new(
        "{%- for message in messages %}\n{%- if loop.first and messages[0]['role'] != 'system' %}\n{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n{{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n",
    )
    .unwrap();
    let out = t.render(&[Message::new("user", "Hi")], true, None, None).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = t.render(&[Message::new("user", "Hi")], false, None, None).unwrap();
    assert!(!out.ends_with("assistant\n"));
}

#[test]
fn namespaces_and_block_trimming() {
    // trim_blocks + lstrip_blocks as Hugging Face sets them: block tags leave no blank lines.
    let t = ChatTemplate::new(
        "{% set ns = namespace(n=0) %}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n        {% set ns.n = ns.n + 1 %}\n    {% endif %}\n{% endfor %}\nusers={{ ns.n }} first={{ messages[0].content.upper() }}\n",
    )
    .unwrap();
    assert_eq!(t.render(&conv(), false, None, None).unwrap(), "users=2 first=BE BRIEF.");
}

#[test]
fn broken_templates_are_errors() {
    assert!(ChatTemplate::new("{% for m in messages %}").is_err());
}
