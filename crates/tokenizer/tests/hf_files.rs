//! `Tokenizer::from_hf_files`: a tokenizer.json exported with `to_hf_json` (as `hearth export`
//! does) and read back with a tokenizer_config.json tokenizes exactly like the GGUF original,
//! and the config's chat template, BOS/EOS and add_bos_token are honoured.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_ids_eq, fixture, gemma3, smollm2};
use hearth_tokenizer::{BosPolicy, ChatMessage, SkipSpecial, Tokenizer};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check_same_ids(original: &Tokenizer, reloaded: &Tokenizer, name: &str) {
    let fixture = fixture(name);
    for case in &fixture.cases {
        let ids = reloaded.encode(&case.text, BosPolicy::Never).unwrap();
        assert_ids_eq(
            reloaded,
            &format!("reloaded {name} case {:?}", case.name),
            &ids,
            &case.ids,
        );
        assert_eq!(reloaded.decode(&ids, SkipSpecial::No).unwrap(), case.text);
    }
    assert_eq!(reloaded.vocab_size(), original.vocab_size());
    assert_eq!(reloaded.bos_id(), original.bos_id());
    assert_eq!(reloaded.adds_bos(), original.adds_bos());
}

#[test]
fn smollm2_exported_json_with_config_round_trips() {
    let original = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let json = write(dir.path(), "tokenizer.json", &original.to_hf_json().unwrap());
    let template = original.chat_template().unwrap().source();
    let config = serde_json::json!({
        "add_bos_token": false,
        "bos_token": {"content": "<|im_start|>", "special": true},
        "eos_token": "<|im_end|>",
        "chat_template": [{"name": "tool_use", "template": "unused"}, {"name": "default", "template": template}],
    });
    let config = write(dir.path(), "tokenizer_config.json", &config.to_string());
    let reloaded = Tokenizer::from_hf_files(&json, Some(&config)).unwrap();
    check_same_ids(original, &reloaded, "smollm2");
    assert_eq!(
        reloaded.eos_ids(),
        &[2, 0],
        "<|im_end|> from the config, then <|endoftext|>"
    );
    let messages = [ChatMessage::new("user", "What is the capital of France?")];
    assert_eq!(
        reloaded.chat_template().unwrap().render(&messages, true).unwrap(),
        original.chat_template().unwrap().render(&messages, true).unwrap()
    );
}

#[test]
fn gemma3_exported_json_without_config_detects_bos_from_the_post_processor() {
    let original = gemma3();
    let dir = tempfile::tempdir().unwrap();
    let json = write(dir.path(), "tokenizer.json", &original.to_hf_json().unwrap());
    let reloaded = Tokenizer::from_hf_files(&json, None).unwrap();
    check_same_ids(original, &reloaded, "gemma3");
    assert_eq!(
        reloaded.encode("Hi", BosPolicy::AddIfModelDoes).unwrap(),
        original.encode("Hi", BosPolicy::AddIfModelDoes).unwrap()
    );
    assert!(reloaded.eos_ids().contains(&106), "<end_of_turn> stops generation");
    assert!(reloaded.chat_template().is_none());
}

#[test]
fn chat_template_jinja_next_to_the_config_is_used() {
    let original = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let json = write(dir.path(), "tokenizer.json", &original.to_hf_json().unwrap());
    let config = write(dir.path(), "tokenizer_config.json", r#"{"eos_token": "<|im_end|>"}"#);
    write(
        dir.path(),
        "chat_template.jinja",
        "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}\n",
    );
    let reloaded = Tokenizer::from_hf_files(&json, Some(&config)).unwrap();
    let text = reloaded
        .chat_template()
        .unwrap()
        .render(&[ChatMessage::new("user", "x")], false)
        .unwrap();
    assert_eq!(text, "x<|im_end|>");
}
