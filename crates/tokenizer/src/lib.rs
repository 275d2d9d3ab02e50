//! hearth-tokenizer: text <-> token ids, chat templates, and streaming detokenization.
//!
//! Owns: building a [`Tokenizer`] from a GGUF file's metadata (`gpt2` byte-level BPE and `llama`
//! SentencePiece vocabularies) or from Hugging Face `tokenizer.json` + `tokenizer_config.json`;
//! BOS policy; stop (end-of-generation) ids; rendering chat templates like Hugging Face's jinja2
//! setup ([`ChatTemplate`]); incremental decoding that never emits a broken UTF-8 sequence
//! ([`IncrementalDecoder`]).
//!
//! Does not own: model weights, requests, sampling or stop *strings* (callers check those on the
//! text this crate produces).
//!
//! Invariants:
//! - Encoding matches llama.cpp's tokenizer for GGUF vocabularies (golden tests in `tests/`).
//! - Special tokens written in the text (`<|im_start|>`, `<start_of_turn>`) encode to their ids.
//! - Concatenating everything an [`IncrementalDecoder`] emits equals [`Tokenizer::decode`] of all
//!   pushed ids.
//! - No panics on malformed input: every failure is a [`TokenizerError`].

mod chat;
mod error;
mod gguf;
mod hf;
mod incremental;
mod specials;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate, GenerationPrompt};
pub use error::{Result, TokenizerError};
pub use incremental::IncrementalDecoder;
pub use tokenizer::Tokenizer;

/// Whether [`Tokenizer::encode`] puts the BOS token in front of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BosPolicy {
    /// Add BOS when the model's tokenizer adds it (GGUF `tokenizer.ggml.add_bos_token`,
    /// `add_bos_token` in `tokenizer_config.json`).
    AddIfModelDoes,
    /// Never add BOS.
    Never,
    /// Always add BOS; an error if the vocabulary has none.
    Always,
}

/// Whether [`Tokenizer::decode`] drops special (control) tokens such as `<|im_end|>` or `<bos>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipSpecial {
    /// Drop special tokens from the text.
    Yes,
    /// Render special tokens as their text.
    No,
}
