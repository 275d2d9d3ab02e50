//! `Tokenizer::to_gguf_metadata`: a byte-level BPE tokenizer written as GGUF `tokenizer.*`
//! metadata and read back with `Tokenizer::from_gguf` tokenizes like the original — from a GGUF
//! file (SmolLM2), from its exported tokenizer.json, and from Llama 3 / Qwen2 style
//! tokenizer.json files — and a pre-tokenizer llama.cpp has no name for is refused.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use common::{assert_ids_eq, fixture, read_gguf, smollm2, SMOLLM2_FILE};
use hearth_tokenizer::{BosPolicy, Tokenizer};
use serde_json::json;

fn content(metadata: Vec<(String, Value)>) -> Content {
    Content {
        magic: VersionedMagic::GgufV3,
        metadata: metadata.into_iter().collect(),
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

fn round_trip(tokenizer: &Tokenizer) -> (Vec<(String, Value)>, Tokenizer) {
    let metadata = tokenizer.to_gguf_metadata().unwrap();
    let reloaded = Tokenizer::from_gguf(&content(metadata.clone())).unwrap();
    (metadata, reloaded)
}

fn strings(value: &Value) -> Vec<String> {
    value.to_vec().unwrap().iter().map(|v| v.to_string().unwrap().clone()).collect()
}

fn assert_same_tokenizer(original: &Tokenizer, reloaded: &Tokenizer, texts: &[&str]) {
    for text in texts {
        for bos in [BosPolicy::Never, BosPolicy::AddIfModelDoes] {
            let want = original.encode(text, bos).unwrap();
            assert_ids_eq(reloaded, &format!("{text:?} ({bos:?})"), &reloaded.encode(text, bos).unwrap(), &want);
        }
    }
    assert_eq!(reloaded.vocab_size(), original.vocab_size());
    assert_eq!(reloaded.bos_id(), original.bos_id());
    assert_eq!(reloaded.eos_ids(), original.eos_ids());
    assert_eq!(reloaded.adds_bos(), original.adds_bos());
    assert_eq!(
        reloaded.chat_template().map(|t| t.source().to_string()),
        original.chat_template().map(|t| t.source().to_string())
    );
}

const TEXTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!\nHow are you? I'm fine; they'll say 12345 apples weren't there.",
    "<|im_start|>user\nthe theme<|im_end|>",
];

#[test]
fn smollm2_gguf_metadata_round_trips_exactly() {
    let original = smollm2();
    let (metadata, reloaded) = round_trip(original);
    for case in &fixture("smollm2").cases {
        let ids = reloaded.encode(&case.text, BosPolicy::Never).unwrap();
        assert_ids_eq(&reloaded, &format!("case {:?}", case.name), &ids, &case.ids);
    }
    assert_same_tokenizer(original, &reloaded, TEXTS);
    // The arrays are the file's own.
    let source = read_gguf(SMOLLM2_FILE).metadata;
    let written: HashMap<String, Value> = metadata.into_iter().collect();
    assert_eq!(written["tokenizer.ggml.pre"].to_string().unwrap(), "smollm");
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges"] {
        assert!(strings(&written[key]) == strings(&source[key]), "{key} differs from {SMOLLM2_FILE}");
    }
    let types = |v: &Value| -> Vec<i32> { v.to_vec().unwrap().iter().map(|t| t.to_i32().unwrap()).collect() };
    assert_eq!(types(&written["tokenizer.ggml.token_type"]), types(&source["tokenizer.ggml.token_type"]));
}

#[test]
fn smollm2_exported_tokenizer_json_converts_to_the_same_tokenizer() {
    let original = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("tokenizer.json");
    std::fs::write(&json_path, original.to_hf_json().unwrap()).unwrap();
    let from_json = Tokenizer::from_hf_files(&json_path, None).unwrap();
    let (_, reloaded) = round_trip(&from_json);
    assert_same_tokenizer(&from_json, &reloaded, TEXTS);
}

/// A small byte-level BPE tokenizer.json in Hugging Face's Llama 3 / Qwen2 layout: the 256-byte
/// alphabet, a few merges, special tokens, and a config with BOS and a chat template.
fn write_hf_tokenizer(dir: &Path, regex: &str) -> Tokenizer {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut vocab: serde_json::Map<String, serde_json::Value> =
        alphabet.iter().enumerate().map(|(id, c)| (c.to_string(), json!(id))).collect();
    let merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("1", "2"), ("a", "p")];
    for (left, right) in merges {
        let id = vocab.len();
        vocab.insert(format!("{left}{right}"), json!(id));
    }
    let first_added = vocab.len();
    let tokenizer = json!({
        "version": "1.0",
        "added_tokens": [
            {"id": first_added, "content": "<|begin_of_text|>", "special": true, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
            {"id": first_added + 1, "content": "<|eot_id|>", "special": true, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
            {"id": first_added + 2, "content": "<custom>", "special": false, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
            {"id": first_added + 3, "content": "<|fim_prefix|>", "special": false, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": merges.iter().map(|(l, r)| format!("{l} {r}")).collect::<Vec<_>>()},
    });
    let config = json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "add_bos_token": true,
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}<|eot_id|>{% endfor %}",
    });
    let json_path = dir.join("tokenizer.json");
    let config_path = dir.join("tokenizer_config.json");
    std::fs::write(&json_path, tokenizer.to_string()).unwrap();
    std::fs::write(&config_path, config.to_string()).unwrap();
    Tokenizer::from_hf_files(&json_path, Some(&config_path)).unwrap()
}

#[test]
fn llama3_and_qwen2_style_tokenizer_json_convert_with_their_llama_cpp_pre_names() {
    let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let qwen2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    for (regex, pre) in [(llama3, "llama-bpe"), (qwen2, "qwen2")] {
        let dir = tempfile::tempdir().unwrap();
        let original = write_hf_tokenizer(dir.path(), regex);
        let (metadata, reloaded) = round_trip(&original);
        let written: HashMap<String, Value> = metadata.into_iter().collect();
        assert_eq!(written["tokenizer.ggml.pre"].to_string().unwrap(), pre);
        // 256 bytes + 5 merges, then <|begin_of_text|>, <|eot_id|> (control), <custom>
        // (user-defined) and <|fim_prefix|> (not special, but control as llama.cpp converts it).
        let types: Vec<i32> = written["tokenizer.ggml.token_type"].to_vec().unwrap().iter().map(|t| t.to_i32().unwrap()).collect();
        assert_eq!(&types[259..], &[1, 1, 3, 3, 4, 3]);
        assert_eq!(strings(&written["tokenizer.ggml.tokens"])[263], "<custom>");
        let texts = ["the theme 12345, they'll apply<custom> the<|eot_id|>", "  the\n\nthe  123 4567<|fim_prefix|>x"];
        assert_same_tokenizer(&original, &reloaded, &texts);
        assert_eq!(reloaded.encode("the", BosPolicy::AddIfModelDoes).unwrap()[0], 261, "BOS first");
    }
}

#[test]
fn a_pre_tokenizer_without_a_llama_cpp_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let original = write_hf_tokenizer(dir.path(), r"\w+|[^\w\s]+");
    let err = original.to_gguf_metadata().unwrap_err().to_string();
    assert!(err.contains("pre_tokenizer") && err.contains("llama-bpe"), "{err}");
}
