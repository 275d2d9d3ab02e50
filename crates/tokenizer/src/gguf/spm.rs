//! `tokenizer.ggml.model = "llama"`: SentencePiece vocabularies (Llama 2, Gemma) expressed as a
//! Hugging Face BPE pipeline that reproduces llama.cpp's SPM tokenizer.
//!
//! llama.cpp tokenizes SPM text by starting from single characters and repeatedly merging the
//! adjacent pair whose concatenation is a vocabulary token with the highest score (ties: leftmost),
//! then spelling leftover characters as `<0xNN>` byte tokens. A BPE model whose merge list holds
//! every split `(left, right)` of every token (both halves in the vocabulary), ranked by the merged
//! token's score, makes the same choices: Hugging Face's BPE also merges the best-ranked pair,
//! leftmost first. This is how Hugging Face's `SentencePieceExtractor` derives merges too.
//!
//! Spaces become `▁` (and one is prepended to each text fragment when
//! `tokenizer.ggml.add_space_prefix` is true); decoding reverses both.
//!
//! Invariants: merge ranks follow score descending, then token id ascending (deterministic);
//! no merge is listed twice.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{DecoderWrapper, NormalizerWrapper};

use super::meta::Meta;
use super::{with_added_tokens, GgufVocab};
use crate::error::{Result, TokenizerError};

const KEY_SCORES: &str = "tokenizer.ggml.scores";
const SPACE_MARK: &str = "\u{2581}";

pub(super) fn build(meta: &Meta<'_>, vocab: &GgufVocab<'_>) -> Result<tokenizers::Tokenizer> {
    let scores = meta.require_f32s(KEY_SCORES)?;
    if scores.len() != vocab.tokens.len() {
        return Err(TokenizerError::invalid_metadata(
            KEY_SCORES,
            format!("has {} entries for {} tokens", scores.len(), vocab.tokens.len()),
        ));
    }
    let add_space_prefix = meta.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let unk_token = match meta.u32("tokenizer.ggml.unknown_token_id")? {
        Some(id) => Some(vocab.tokens.get(id as usize).ok_or_else(|| {
            TokenizerError::invalid_metadata(
                "tokenizer.ggml.unknown_token_id",
                format!("{id} is outside the vocabulary"),
            )
        })?),
        None => None,
    };

    let vocab_map = vocab.token_ids();
    let merges = merges_from_scores(&vocab.tokens, &scores, &vocab_map);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab_map, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk_token {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| TokenizerError::backend("building the SentencePiece model", e))?;

    let space_to_mark = Replace::new(" ", SPACE_MARK).map_err(|e| TokenizerError::backend("building normalizer", e))?;
    let mark_to_space = Replace::new(SPACE_MARK, " ").map_err(|e| TokenizerError::backend("building decoder", e))?;
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    let mut decoders: Vec<DecoderWrapper> = vec![mark_to_space.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        normalizers.push(Prepend::new(SPACE_MARK.to_string()).into());
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    normalizers.push(space_to_mark.into());

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| TokenizerError::backend("setting normalizer", e))?;
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    with_added_tokens(tokenizer, vocab)
}

/// Every `(left, right)` split of every token whose halves are both tokens, best score first.
/// `ids` maps token text to id (the last id of a duplicated text, as in llama.cpp).
pub(crate) fn merges_from_scores(tokens: &[&str], scores: &[f32], ids: &Vocab) -> Vec<(String, String)> {
    // (score, merged id, split byte offset)
    let mut ranked: Vec<(f32, u32, usize)> = Vec::new();
    for (id, text) in tokens.iter().enumerate() {
        // Only tokens that are their own id: a duplicated text belongs to its last id, as in
        // llama.cpp's text -> id map.
        if ids.get(*text) != Some(&(id as u32)) {
            continue;
        }
        for (split, _) in text.char_indices().skip(1) {
            if ids.contains_key(&text[..split]) && ids.contains_key(&text[split..]) {
                ranked.push((scores[id], id as u32, split));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, id, split)| {
            let text = tokens[id as usize];
            (text[..split].to_string(), text[split..].to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(tokens: &[&str]) -> Vocab {
        tokens
            .iter()
            .enumerate()
            .map(|(id, text)| (text.to_string(), id as u32))
            .collect()
    }

    #[test]
    fn merges_rank_by_merged_token_score() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let merges = merges_from_scores(&tokens, &scores, &ids(&tokens));
        let as_str: Vec<(&str, &str)> = merges.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(as_str, [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]);
    }

    #[test]
    fn merges_skip_splits_with_a_half_outside_the_vocabulary() {
        let tokens = ["x", "xyz", "yz"];
        let merges = merges_from_scores(&tokens, &[0.0, -1.0, -2.0], &ids(&tokens));
        assert_eq!(merges, [("x".to_string(), "yz".to_string())]);
    }
}
