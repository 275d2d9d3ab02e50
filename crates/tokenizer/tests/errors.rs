//! Bad inputs give errors that name the problem, never panics: missing or malformed GGUF
//! tokenizer metadata, unknown tokenizer models and pre-tokenizers, invalid chat templates,
//! unreadable or malformed tokenizer.json / tokenizer_config.json.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use hearth_tokenizer::{ChatMessage, ChatTemplate, Tokenizer, TokenizerError};

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A tiny valid gpt2-style vocabulary: bytes "a", "b", "ab", "Ġ" plus a control token.
fn gpt2_metadata() -> HashMap<String, Value> {
    HashMap::from([
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".to_string(),
            strings(&["<|endoftext|>", "a", "b", "ab", "Ġ"]),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array([3, 1, 1, 1, 1].map(Value::I32).to_vec()),
        ),
        ("tokenizer.ggml.merges".to_string(), strings(&["a b"])),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(0)),
    ])
}

fn content(metadata: HashMap<String, Value>) -> Content {
    Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

fn gguf_error(edit: impl FnOnce(&mut HashMap<String, Value>)) -> String {
    let mut metadata = gpt2_metadata();
    edit(&mut metadata);
    match Tokenizer::from_gguf(&content(metadata)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "error message {message:?} should mention {needle:?}"
        );
    }
}

#[test]
fn tiny_gpt2_vocabulary_builds_and_merges() {
    let t = Tokenizer::from_gguf(&content(gpt2_metadata())).unwrap();
    assert_eq!(
        t.encode("ab<|endoftext|>", hearth_tokenizer::BosPolicy::Never).unwrap(),
        [3, 0]
    );
    assert_eq!(t.eos_ids(), &[0]);
}

#[test]
fn missing_tokenizer_model_names_the_key() {
    let msg = gguf_error(|m| {
        m.remove("tokenizer.ggml.model");
    });
    assert_mentions(&msg, &["tokenizer.ggml.model"]);
}

#[test]
fn unknown_tokenizer_model_is_named() {
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.model".into(), Value::String("xyz".into()));
    });
    assert_mentions(&msg, &["unsupported tokenizer model \"xyz\""]);
}

#[test]
fn missing_tokens_names_the_key() {
    let msg = gguf_error(|m| {
        m.remove("tokenizer.ggml.tokens");
    });
    assert_mentions(&msg, &["tokenizer.ggml.tokens"]);
}

#[test]
fn missing_merges_of_a_bpe_vocabulary_names_the_key() {
    let msg = gguf_error(|m| {
        m.remove("tokenizer.ggml.merges");
    });
    assert_mentions(&msg, &["tokenizer.ggml.merges"]);
}

#[test]
fn missing_scores_of_a_sentencepiece_vocabulary_names_the_key() {
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    });
    assert_mentions(&msg, &["tokenizer.ggml.scores"]);
}

#[test]
fn tokens_of_the_wrong_type_are_reported() {
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.tokens".into(), Value::Array(vec![Value::U32(1)]));
    });
    assert_mentions(&msg, &["tokenizer.ggml.tokens", "strings"]);
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.tokens".into(), Value::String("a".into()));
    });
    assert_mentions(&msg, &["tokenizer.ggml.tokens", "array"]);
}

#[test]
fn token_type_length_mismatch_is_reported() {
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.token_type".into(), Value::Array(vec![Value::I32(1)]));
    });
    assert_mentions(&msg, &["tokenizer.ggml.token_type", "1 entries for 5 tokens"]);
}

#[test]
fn unknown_pre_tokenizer_is_named_with_the_supported_ones() {
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.pre".into(), Value::String("klingon".into()));
    });
    assert_mentions(&msg, &["\"klingon\"", "\"smollm\"", "\"llama-bpe\""]);
}

#[test]
fn merge_with_a_token_outside_the_vocabulary_is_reported() {
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.merges".into(), strings(&["a zz"]));
    });
    assert_mentions(&msg, &["tokenizer.ggml.merges"]);
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.merges".into(), strings(&["ab"]));
    });
    assert_mentions(&msg, &["entry 0 \"ab\""]);
}

#[test]
fn special_token_id_outside_the_vocabulary_is_reported() {
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(99));
    });
    assert_mentions(&msg, &["tokenizer.ggml.bos_token_id", "99"]);
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.eos_token_id".into(), Value::I32(-1));
    });
    assert_mentions(&msg, &["tokenizer.ggml.eos_token_id", "-1"]);
}

#[test]
fn add_bos_without_a_bos_id_is_reported() {
    let msg = gguf_error(|m| {
        m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    });
    assert_mentions(&msg, &["add_bos_token", "bos_token_id"]);
}

#[test]
fn invalid_chat_template_in_metadata_is_reported_with_minijinja_message() {
    let msg = gguf_error(|m| {
        m.insert(
            "tokenizer.chat_template".into(),
            Value::String("{% for m in messages %}{{ m.content }}".into()),
        );
    });
    assert_mentions(&msg, &["invalid chat template", "unexpected end of input"]);
}

#[test]
fn chat_template_syntax_error_names_the_problem() {
    let err = ChatTemplate::new("{{ messages[0]['content'] ", "", "").unwrap_err();
    assert!(matches!(err, TokenizerError::InvalidChatTemplate { .. }), "{err:?}");
    assert_mentions(&err.to_string(), &["invalid chat template", "syntax error"]);
}

#[test]
fn chat_template_raise_exception_becomes_a_render_error_with_its_message() {
    let template = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
    let err = template.render(&[ChatMessage::new("user", "hi")], true).unwrap_err();
    assert!(matches!(err, TokenizerError::ChatTemplateRender { .. }), "{err:?}");
    assert_mentions(&err.to_string(), &["roles must alternate"]);
}

#[test]
fn nonexistent_tokenizer_json_names_the_path() {
    let err = Tokenizer::from_hf_files(std::path::Path::new("/nonexistent/dir/tokenizer.json"), None).unwrap_err();
    assert_mentions(&err.to_string(), &["/nonexistent/dir/tokenizer.json"]);
}

#[test]
fn malformed_tokenizer_json_names_the_path_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{\"model\": [1, 2,").unwrap();
    let msg = Tokenizer::from_hf_files(&path, None).unwrap_err().to_string();
    assert_mentions(&msg, &["tokenizer.json", "not valid JSON", "line 1"]);
}

#[test]
fn json_that_is_not_a_tokenizer_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{\"hello\": 1}").unwrap();
    let msg = Tokenizer::from_hf_files(&path, None).unwrap_err().to_string();
    assert_mentions(&msg, &["tokenizer.json", "not a valid tokenizer.json"]);
}

/// Writes the tiny gpt2 tokenizer as tokenizer.json and `config` as tokenizer_config.json.
fn hf_error_with_config(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("tokenizer.json");
    let tokenizer = Tokenizer::from_gguf(&content(gpt2_metadata())).unwrap();
    std::fs::write(&json, tokenizer.to_hf_json().unwrap()).unwrap();
    let config_path = dir.path().join("tokenizer_config.json");
    std::fs::write(&config_path, config).unwrap();
    Tokenizer::from_hf_files(&json, Some(&config_path))
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_tokenizer_config_values_are_named() {
    assert_mentions(
        &hf_error_with_config("{\"add_bos_token\": \"yes\"}"),
        &["tokenizer_config.json", "add_bos_token"],
    );
    assert_mentions(&hf_error_with_config("{\"chat_template\": 3}"), &["chat_template"]);
    assert_mentions(
        &hf_error_with_config("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"x\"}, {\"name\": \"rag\", \"template\": \"y\"}]}"),
        &["no \"default\"", "tool_use, rag"],
    );
    assert_mentions(
        &hf_error_with_config("{\"eos_token\": \"<|nope|>\"}"),
        &["eos_token", "<|nope|>", "not in the vocabulary"],
    );
    assert_mentions(&hf_error_with_config("[1, 2]"), &["expected a JSON object"]);
    assert_mentions(
        &hf_error_with_config("{\"chat_template\": \"{% if %}\"}"),
        &["invalid chat template"],
    );
}
