//! Shared helpers for the integration tests: locating the real GGUF assets (`$HEARTH_ASSETS`,
//! default `~/.cache/hearth/assets`; a missing asset fails the test and says how to fetch it),
//! loading the golden fixtures from `tests/fixtures/tokenizer/`, and comparing id sequences with
//! a readable report.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use hearth_tokenizer::Tokenizer;
use serde::Deserialize;

pub const SMOLLM2_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";
pub const GEMMA3_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

pub fn assets_dir() -> PathBuf {
    match std::env::var_os("HEARTH_ASSETS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hearth/assets"),
    }
}

/// Path of a test asset; panics (fails the test) with the fix when it is missing.
pub fn asset(name: &str) -> PathBuf {
    let path = assets_dir().join(name);
    assert!(
        path.is_file(),
        "test asset {} is missing: run scripts/fetch-assets.sh (it downloads the models and Hamlet into $HEARTH_ASSETS, default ~/.cache/hearth/assets)",
        path.display()
    );
    path
}

pub fn read_gguf(name: &str) -> candle_core::quantized::gguf_file::Content {
    let path = asset(name);
    let mut file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    candle_core::quantized::gguf_file::Content::read(&mut file)
        .unwrap_or_else(|e| panic!("reading GGUF {}: {e}", path.display()))
}

fn load(name: &str) -> Tokenizer {
    Tokenizer::from_gguf(&read_gguf(name)).unwrap_or_else(|e| panic!("building the tokenizer of {name}: {e}"))
}

pub fn smollm2() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| load(SMOLLM2_FILE))
}

pub fn gemma3() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| load(GEMMA3_FILE))
}

/// Hamlet with `#`, `*`, `_` removed, as the perplexity protocol uses it.
pub fn hamlet() -> String {
    let path = asset("hamlet.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.chars().filter(|c| !matches!(c, '#' | '*' | '_')).collect()
}

#[derive(Debug, Deserialize)]
pub struct Fixture {
    pub model_file: String,
    pub bos_id: Option<u32>,
    pub chat_template: Option<String>,
    pub cases: Vec<Case>,
    pub chats: Vec<Chat>,
    /// Seeded random texts (scripts, emoji, control characters, special tokens, runs over tiny
    /// alphabets that stress merge ties).
    pub random_cases: Vec<RandomCase>,
    pub hamlet: Hamlet,
}

#[derive(Debug, Deserialize)]
pub struct RandomCase {
    pub text: String,
    pub ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub text: String,
    pub ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub struct Chat {
    pub messages: Vec<hearth_tokenizer::ChatMessage>,
    pub add_generation_prompt: bool,
    pub text: String,
    pub ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub struct Hamlet {
    pub text_prefix_chars: usize,
    pub prefix_ids: Vec<u32>,
    pub num_tokens: usize,
    pub first_tokens: Vec<u32>,
}

pub fn fixture(name: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing fixture {}: {e}", path.display()))
}

/// Asserts `actual == expected`; on failure shows the first mismatch with token texts around it.
pub fn assert_ids_eq(tokenizer: &Tokenizer, what: &str, actual: &[u32], expected: &[u32]) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    let show = |ids: &[u32]| -> String {
        let lo = first.saturating_sub(3);
        let hi = (first + 5).min(ids.len());
        ids.get(lo..hi)
            .unwrap_or_default()
            .iter()
            .map(|&id| format!("{id}:{:?}", tokenizer.token_str(id).unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    panic!(
        "{what}: ids differ from the reference (llama.cpp)\n  lengths: actual {} expected {}\n  first mismatch at index {first}\n  actual:   ... {}\n  expected: ... {}",
        actual.len(),
        expected.len(),
        show(actual),
        show(expected)
    );
}
