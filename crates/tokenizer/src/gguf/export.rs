//! A byte-level BPE [`Tokenizer`] written back as GGUF `tokenizer.*` metadata — the reverse of
//! `gguf::build` — so a tokenizer.json can ride in a GGUF file (benchmark models) and both
//! llama.cpp and hearth tokenize with it.
//!
//! Owns: token list and types (added tokens that are special or look special are control
//! tokens, other added tokens user-defined, id holes `[PAD{id}]` unused, as llama.cpp's
//! converter writes), merges, naming the pre-tokenizer by its llama.cpp name, BOS/EOS/add_bos
//! and the chat template.
//!
//! Invariant: a pre-tokenizer we cannot name exactly is an error, never a guess — a wrong
//! `tokenizer.ggml.pre` silently changes every token id. Only byte-level BPE is supported
//! (SentencePiece tokenizer.json files are refused).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use super::bpe::{REGEX_LLAMA3, REGEX_QWEN2};
use crate::error::{Result, TokenizerError};
use crate::tokenizer::Tokenizer;

/// Hugging Face's spelling of the Llama 3 and Qwen2 split regexes (case-insensitive group).
const HF_REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const HF_REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `llama_token_type` codes.
const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;

pub(crate) fn to_gguf_metadata(tokenizer: &Tokenizer) -> Result<Vec<(String, Value)>> {
    let unsupported = |reason: String| TokenizerError::NotGgufConvertible { reason };
    let json: Json = serde_json::from_str(&tokenizer.to_hf_json()?)
        .map_err(|e| unsupported(format!("re-reading the serialized pipeline: {e}")))?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(unsupported(format!("the model is {}, not BPE", model["type"])));
    }
    let pre = pre_name(&json["pre_tokenizer"])?;

    // Added token id -> whether it is special.
    let added: HashMap<u64, bool> = json["added_tokens"]
        .as_array()
        .map(|items| items.iter().filter_map(|t| Some((t["id"].as_u64()?, t["special"].as_bool()?))).collect())
        .unwrap_or_default();
    let mut tokens = Vec::with_capacity(tokenizer.vocab_size());
    let mut types = Vec::with_capacity(tokenizer.vocab_size());
    for id in 0..tokenizer.vocab_size() as u32 {
        let (text, ty) = match (tokenizer.token_str(id), added.get(&u64::from(id))) {
            (Some(text), Some(&special)) if special || looks_special(text) => (text.to_string(), TYPE_CONTROL),
            (Some(text), Some(_)) => (text.to_string(), TYPE_USER_DEFINED),
            (Some(text), None) => (text.to_string(), TYPE_NORMAL),
            (None, _) => (format!("[PAD{id}]"), TYPE_UNUSED),
        };
        tokens.push(Value::String(text));
        types.push(Value::I32(ty));
    }

    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| unsupported("the BPE model has no merges".into()))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) => match (pair.first().and_then(Json::as_str), pair.get(1).and_then(Json::as_str)) {
                (Some(left), Some(right)) if pair.len() == 2 => Ok(format!("{left} {right}")),
                _ => Err(unsupported(format!("merge {m} is not a pair of strings"))),
            },
            other => Err(unsupported(format!("merge {other} is neither \"a b\" nor [\"a\", \"b\"]"))),
        })
        .map(|m| m.map(Value::String))
        .collect::<Result<Vec<_>>>()?;

    let mut meta = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
        ("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(tokenizer.adds_bos())),
    ];
    if let Some(bos) = tokenizer.bos_id() {
        meta.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
    }
    if let Some(&eos) = tokenizer.eos_ids().first() {
        meta.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)));
    }
    if let Some(template) = tokenizer.chat_template() {
        meta.push(("tokenizer.chat_template".into(), Value::String(template.source().to_string())));
    }
    Ok(meta)
}

/// llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json `pre_tokenizer`.
fn pre_name(pre: &Json) -> Result<&'static str> {
    let steps: Vec<&Json> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"].as_array().map(|s| s.iter().collect()).unwrap_or_default(),
        _ => vec![pre],
    };
    let byte_level = |step: &Json, use_regex: bool| {
        step["type"].as_str() == Some("ByteLevel") && step["use_regex"].as_bool() == Some(use_regex)
    };
    fn split_regex(step: &Json) -> Option<&str> {
        let isolated = step["type"].as_str() == Some("Split")
            && step["behavior"].as_str() == Some("Isolated")
            && step["invert"].as_bool() == Some(false);
        step["pattern"]["Regex"].as_str().filter(|_| isolated)
    }
    let name = match steps.as_slice() {
        [only] if byte_level(only, true) => Some("gpt2"),
        [digits, bl] if digits["type"].as_str() == Some("Digits") && digits["individual_digits"].as_bool() == Some(true) && byte_level(bl, true) => {
            Some("smollm")
        }
        [split, bl] if byte_level(bl, false) => match split_regex(split) {
            Some(re) if re == REGEX_LLAMA3 || re == HF_REGEX_LLAMA3 => Some("llama-bpe"),
            Some(re) if re == REGEX_QWEN2 || re == HF_REGEX_QWEN2 => Some("qwen2"),
            _ => None,
        },
        _ => None,
    };
    name.ok_or_else(|| TokenizerError::NotGgufConvertible {
        reason: format!(
            "its pre_tokenizer matches none of llama.cpp's gpt2, smollm, llama-bpe or qwen2 splits: {}",
            truncate(&pre.to_string(), 300)
        ),
    })
}

/// llama.cpp's converter (`does_token_look_special`) makes these added tokens control tokens
/// even when tokenizer.json does not mark them special (Qwen's `<|fim_prefix|>`).
fn looks_special(text: &str) -> bool {
    matches!(text, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (text.starts_with("<|") && text.ends_with("|>"))
        || (text.starts_with("<｜") && text.ends_with("｜>"))
        || (text.starts_with("<unused") && text.ends_with('>'))
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((idx, _)) => format!("{}…", &s[..idx]),
        None => s.to_string(),
    }
}
