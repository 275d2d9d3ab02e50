//! Building a [`Tokenizer`] from GGUF metadata, following llama.cpp's reading of the same keys.
//!
//! Owns: the vocabulary arrays (`tokenizer.ggml.tokens`, `token_type`, `scores`), token types
//! (control / user-defined tokens become added tokens matched in raw text, as llama.cpp's
//! special-token partition does), BOS/EOS/end-of-turn ids, `add_bos_token` defaults, and the
//! chat template. The two vocabulary kinds live in `bpe.rs` (`gpt2`) and `spm.rs` (`llama`);
//! `export.rs` goes the other way (a byte-level BPE tokenizer to `tokenizer.*` metadata).
//!
//! Invariants: token ids equal their index in `tokenizer.ggml.tokens`; every id read from
//! metadata is checked against the vocabulary size; an unknown `tokenizer.ggml.model` or
//! `tokenizer.ggml.pre` is an error, never a silent fallback to a different split.

mod bpe;
mod export;
mod meta;
mod spm;

pub(crate) use export::to_gguf_metadata;

use candle_core::quantized::gguf_file::Content;
use tokenizers::AddedToken;

use crate::chat::ChatTemplate;
use crate::error::{Result, TokenizerError};
use crate::specials::{Specials, END_OF_TURN_TOKENS};
use crate::tokenizer::Tokenizer;
use meta::Meta;

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";

/// llama.cpp's `llama_token_type` as stored in `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_raw(raw: i32) -> Self {
        match raw {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            // 0 (undefined) and 1 (normal); llama.cpp treats unknown codes as normal text too.
            _ => Self::Normal,
        }
    }
}

/// The vocabulary as stored in the file: `tokens[id]`, `types[id]`.
pub(crate) struct GgufVocab<'a> {
    pub tokens: Vec<&'a str>,
    pub types: Vec<TokenType>,
}

impl<'a> GgufVocab<'a> {
    fn read(meta: &Meta<'a>) -> Result<Self> {
        let tokens = meta.require_strings(KEY_TOKENS)?;
        if tokens.is_empty() {
            return Err(TokenizerError::invalid_metadata(KEY_TOKENS, "the vocabulary is empty"));
        }
        let types = match meta.i32s(KEY_TOKEN_TYPE)? {
            Some(raw) if raw.len() != tokens.len() => {
                return Err(TokenizerError::invalid_metadata(
                    KEY_TOKEN_TYPE,
                    format!("has {} entries for {} tokens", raw.len(), tokens.len()),
                ))
            }
            Some(raw) => raw.into_iter().map(TokenType::from_raw).collect(),
            None => vec![TokenType::Normal; tokens.len()],
        };
        Ok(Self { tokens, types })
    }

    /// Control and unknown tokens become special added tokens (skipped by `SkipSpecial::Yes`),
    /// user-defined ones plain added tokens; all are matched in the raw text before the model
    /// runs, longest first, as llama.cpp does.
    fn added_tokens(&self) -> Vec<AddedToken> {
        self.tokens
            .iter()
            .zip(&self.types)
            .filter(|(text, _)| !text.is_empty())
            .filter_map(|(text, ty)| match ty {
                TokenType::Control | TokenType::Unknown => Some(AddedToken::from(*text, true)),
                TokenType::UserDefined => Some(AddedToken::from(*text, false)),
                _ => None,
            })
            .map(|t| t.normalized(false))
            .collect()
    }

    /// Token text -> id, the map both BPE builders hand to `tokenizers`.
    fn token_ids(&self) -> tokenizers::models::bpe::Vocab {
        self.tokens.iter().enumerate().map(|(id, text)| (text.to_string(), id as u32)).collect()
    }

    fn checked_id(&self, key: &str, id: Option<u32>) -> Result<Option<u32>> {
        match id {
            Some(id) if id as usize >= self.tokens.len() => Err(TokenizerError::invalid_metadata(
                key,
                format!(
                    "token id {id} is outside the vocabulary of {} tokens",
                    self.tokens.len()
                ),
            )),
            other => Ok(other),
        }
    }
}

/// Which vocabulary kind the file declares.
enum VocabKind {
    /// `gpt2`: byte-level BPE with explicit merges.
    Bpe,
    /// `llama`: SentencePiece with scores, byte fallback and `▁` for spaces.
    Spm,
}

pub(crate) fn build(content: &Content) -> Result<Tokenizer> {
    let meta = Meta::new(&content.metadata);
    let kind = match meta.require_string(KEY_MODEL)? {
        "gpt2" => VocabKind::Bpe,
        "llama" => VocabKind::Spm,
        other => {
            return Err(TokenizerError::UnsupportedModel {
                model: other.to_string(),
            })
        }
    };
    let vocab = GgufVocab::read(&meta)?;
    let (inner, default_add_bos) = match kind {
        VocabKind::Bpe => bpe::build(&meta, &vocab)?,
        VocabKind::Spm => (spm::build(&meta, &vocab)?, true),
    };
    let specials = read_specials(&meta, &vocab, default_add_bos)?;
    let mut inner = inner;
    if specials.add_bos {
        // Only for the exported tokenizer.json: `Tokenizer::encode` adds BOS itself.
        let bos_id = specials.bos_id.ok_or(TokenizerError::NoBosToken)?;
        let bos_text = vocab.tokens[bos_id as usize];
        let post_processor = bos_post_processor(inner.get_post_processor(), bos_text, bos_id)?;
        inner.with_post_processor(Some(post_processor));
    }
    let chat_template = match meta.string("tokenizer.chat_template")? {
        Some(source) => {
            let token_text = |id: Option<u32>| id.map_or("", |id| vocab.tokens[id as usize]);
            let eos_text = token_text(specials.eos_ids.first().copied());
            Some(ChatTemplate::new(source, token_text(specials.bos_id), eos_text)?)
        }
        None => None,
    };
    Ok(Tokenizer::assemble(inner, specials, chat_template))
}

fn read_specials(meta: &Meta<'_>, vocab: &GgufVocab<'_>, default_add_bos: bool) -> Result<Specials> {
    let id = |key: &str| -> Result<Option<u32>> { vocab.checked_id(key, meta.u32(key)?) };
    let bos_id = id("tokenizer.ggml.bos_token_id")?;
    let mut specials = Specials {
        bos_id,
        eos_ids: Vec::new(),
        add_bos: meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos),
    };
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(eos) = id(key)? {
            specials.push_eos(eos);
        }
    }
    for (idx, (text, ty)) in vocab.tokens.iter().zip(&vocab.types).enumerate() {
        if *ty == TokenType::Control && END_OF_TURN_TOKENS.contains(text) {
            specials.push_eos(idx as u32);
        }
    }
    if specials.add_bos && specials.bos_id.is_none() {
        return Err(TokenizerError::invalid_metadata(
            "tokenizer.ggml.add_bos_token",
            "is true but tokenizer.ggml.bos_token_id is missing",
        ));
    }
    Ok(specials)
}

/// `existing` (if any) followed by a template that puts BOS in front of each sequence.
fn bos_post_processor(
    existing: Option<&tokenizers::PostProcessorWrapper>,
    bos_text: &str,
    bos_id: u32,
) -> Result<tokenizers::PostProcessorWrapper> {
    use tokenizers::processors::{sequence::Sequence, template::TemplateProcessing};
    let template = TemplateProcessing::builder()
        .try_single(vec![bos_text.to_string(), "$A".to_string()])
        .and_then(|b| {
            b.try_pair(vec![
                bos_text.to_string(),
                "$A".into(),
                bos_text.to_string(),
                "$B:1".into(),
            ])
        })
        .map_err(|e| TokenizerError::backend("building the BOS post-processor", e))?
        .special_tokens(vec![(bos_text.to_string(), bos_id)])
        .build()
        .map_err(|e| TokenizerError::backend("building the BOS post-processor", e))?;
    Ok(match existing {
        Some(first) => Sequence::new(vec![first.clone(), template.into()]).into(),
        None => template.into(),
    })
}

/// Wraps `model` with the added tokens of `vocab` (see [`GgufVocab::added_tokens`]).
pub(crate) fn with_added_tokens(
    mut tokenizer: tokenizers::Tokenizer,
    vocab: &GgufVocab<'_>,
) -> Result<tokenizers::Tokenizer> {
    let (special, plain): (Vec<AddedToken>, Vec<AddedToken>) =
        vocab.added_tokens().into_iter().partition(|t| t.special);
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| TokenizerError::backend("adding control tokens", e))?;
    tokenizer
        .add_tokens(plain)
        .map_err(|e| TokenizerError::backend("adding user-defined tokens", e))?;
    Ok(tokenizer)
}
