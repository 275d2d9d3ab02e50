//! `tokenizer.ggml.model = "gpt2"`: byte-level BPE with the file's merges. The pre-tokenizer
//! (how text is split before merging) is chosen by `tokenizer.ggml.pre` with the same regexes
//! llama.cpp uses for that name (`llama-vocab.cpp`, `llm_tokenizer_bpe`).
//!
//! Invariants: merge ranks are the order of `tokenizer.ggml.merges`; an unknown pre-tokenizer
//! name is an error (a wrong split silently changes every token id).

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use super::meta::Meta;
use super::{with_added_tokens, GgufVocab};
use crate::error::{Result, TokenizerError};

const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_PRE: &str = "tokenizer.ggml.pre";

pub(super) const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(super) const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT` splits, applied one after another.
const REGEXES_DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", REGEX_GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];

/// Pre-tokenizer families: llama.cpp maps many `tokenizer.ggml.pre` names onto one regex set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreFamily {
    /// GPT-2's regex.
    Gpt2,
    /// Single digits, then GPT-2's regex (SmolLM, StarCoder).
    DigitsThenGpt2,
    /// Llama 3's regex (digits in groups of up to three); whole words in the vocabulary skip
    /// merging.
    Llama3,
    /// Qwen2's regex (single digits).
    Qwen2,
    /// llama.cpp's default BPE splits.
    Default,
}

const PRE_NAMES: &[(&str, PreFamily)] = &[
    ("gpt2", PreFamily::Gpt2),
    ("gpt-2", PreFamily::Gpt2),
    ("phi-2", PreFamily::Gpt2),
    ("smollm", PreFamily::DigitsThenGpt2),
    ("starcoder", PreFamily::DigitsThenGpt2),
    ("refact", PreFamily::DigitsThenGpt2),
    ("command-r", PreFamily::DigitsThenGpt2),
    ("codeshell", PreFamily::DigitsThenGpt2),
    ("llama-bpe", PreFamily::Llama3),
    ("llama3", PreFamily::Llama3),
    ("llama-v3", PreFamily::Llama3),
    ("falcon3", PreFamily::Llama3),
    ("pixtral", PreFamily::Llama3),
    ("qwen2", PreFamily::Qwen2),
    ("deepseek-r1-qwen", PreFamily::Qwen2),
    ("stablelm2", PreFamily::Qwen2),
    ("default", PreFamily::Default),
];

impl PreFamily {
    fn from_name(pre: &str) -> Result<Self> {
        PRE_NAMES
            .iter()
            .find(|(name, _)| *name == pre)
            .map(|(_, family)| *family)
            .ok_or_else(|| {
                let supported: Vec<String> = PRE_NAMES.iter().map(|(name, _)| format!("\"{name}\"")).collect();
                TokenizerError::UnsupportedPreTokenizer {
                    pre: pre.to_string(),
                    supported: supported.join(", "),
                }
            })
    }

    fn pre_tokenizer(self) -> Result<PreTokenizerWrapper> {
        // The regexes do the splitting; ByteLevel only maps bytes to its printable alphabet.
        let byte_level = |use_regex| PreTokenizerWrapper::from(ByteLevel::new(false, true, use_regex));
        let splits = |regexes: &[&str]| -> Result<Vec<PreTokenizerWrapper>> {
            regexes
                .iter()
                .map(|re| {
                    Split::new(
                        SplitPattern::Regex((*re).to_string()),
                        SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .map(PreTokenizerWrapper::from)
                    .map_err(|e| TokenizerError::backend(format!("compiling pre-tokenizer regex {re}"), e))
                })
                .collect()
        };
        let steps = match self {
            // Same as Hugging Face's GPT-2 / SmolLM2 tokenizer.json.
            Self::Gpt2 => vec![byte_level(true)],
            Self::DigitsThenGpt2 => vec![Digits::new(true).into(), byte_level(true)],
            Self::Llama3 => [splits(&[REGEX_LLAMA3])?, vec![byte_level(false)]].concat(),
            Self::Qwen2 => [splits(&[REGEX_QWEN2])?, vec![byte_level(false)]].concat(),
            Self::Default => [splits(REGEXES_DEFAULT)?, vec![byte_level(false)]].concat(),
        };
        Ok(Sequence::new(steps).into())
    }
}

/// Builds the pipeline; returns it with the model's default for `add_bos_token`.
pub(super) fn build(meta: &Meta<'_>, vocab: &GgufVocab<'_>) -> Result<(tokenizers::Tokenizer, bool)> {
    let pre = meta.string(KEY_PRE)?.unwrap_or("default");
    let family = PreFamily::from_name(pre)?;
    let merges = meta
        .require_strings(KEY_MERGES)?
        .into_iter()
        .enumerate()
        .map(|(idx, merge)| {
            // llama.cpp splits at the first space after the first byte (a merge may start with one).
            let bytes = merge.as_bytes();
            (1..bytes.len())
                .find(|&pos| bytes[pos] == b' ')
                .map(|pos| (merge[..pos].to_string(), merge[pos + 1..].to_string()))
                .ok_or_else(|| {
                    TokenizerError::invalid_metadata(
                        KEY_MERGES,
                        format!("entry {idx} \"{merge}\" is not \"left right\""),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let vocab_map = vocab.token_ids();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map, merges)
        .ignore_merges(family == PreFamily::Llama3)
        .build()
        .map_err(|e| TokenizerError::backend(format!("building the BPE model from {KEY_MERGES}"), e))?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(family.pre_tokenizer()?))
        .with_decoder(Some(ByteLevelDecoder::new(false, true, true)))
        .with_post_processor(Some(ByteLevelProcessor::new(false, true, true)));
    let tokenizer = with_added_tokens(tokenizer, vocab)?;
    let default_add_bos = family == PreFamily::Llama3;
    Ok((tokenizer, default_add_bos))
}
