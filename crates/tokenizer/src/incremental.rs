//! [`IncrementalDecoder`]: turns a stream of generated ids into text pieces as soon as they are
//! final.
//!
//! Method (as in vLLM / text-generation-inference): decode a small window of recent ids twice —
//! without and with the new ids — and emit the difference. A piece is held back while
//! - the window's text ends in U+FFFD (a multi-byte character is still incomplete: byte-level
//!   BPE pieces or `<0xNN>` byte tokens of an emoji), or
//! - the last visible token is a `<0xNN>` byte token (a byte run that is still open: SentencePiece
//!   byte fallback decodes a whole run at once, so a run must not be cut), or
//! - the new ids add no text (a skipped special token).
//!
//! Invariant (tested with proptest): the concatenation of every piece returned by `push` and
//! `finish` equals `Tokenizer::decode` of all pushed ids with the same [`SkipSpecial`].
//! The window start only moves to a point whose emitted text is non-empty, so decoders that strip
//! one leading space (SentencePiece with `add_space_prefix`) strip the same character in both
//! decodes.

use crate::error::{Result, TokenizerError};
use crate::tokenizer::Tokenizer;
use crate::SkipSpecial;

/// Streaming detokenizer over a borrowed (`&Tokenizer`) or shared (`Arc<Tokenizer>`) tokenizer.
pub struct IncrementalDecoder<T: AsRef<Tokenizer>> {
    tokenizer: T,
    skip_special: SkipSpecial,
    ids: Vec<u32>,
    /// Start of the decode window; `ids[..prefix_offset]` are emitted and never decoded again.
    prefix_offset: usize,
    /// `ids[..read_offset]` are emitted.
    read_offset: usize,
}

impl<T: AsRef<Tokenizer>> IncrementalDecoder<T> {
    /// A decoder that drops special tokens (`<|im_end|>`, `<eos>`) from the text.
    pub fn new(tokenizer: T) -> Self {
        Self::with_skip_special(tokenizer, SkipSpecial::Yes)
    }

    pub fn with_skip_special(tokenizer: T, skip_special: SkipSpecial) -> Self {
        Self {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one id; returns the text that became final, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        let tokenizer = self.tokenizer.as_ref();
        if tokenizer.token_str(id).is_none() {
            return Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: tokenizer.vocab_size(),
            });
        }
        self.ids.push(id);
        if self.last_visible_is_byte_token() {
            return Ok(None);
        }
        let (prefix_text, full_text) = self.window_texts()?;
        let ready = full_text.len() > prefix_text.len()
            && full_text.starts_with(&prefix_text)
            && !full_text.ends_with(char::REPLACEMENT_CHARACTER);
        if !ready {
            return Ok(None);
        }
        let piece = full_text[prefix_text.len()..].to_string();
        self.advance()?;
        Ok(Some(piece))
    }

    /// Flushes whatever is held back (an incomplete character becomes U+FFFD, as in `decode`).
    pub fn finish(&mut self) -> Result<Option<String>> {
        if self.read_offset == self.ids.len() {
            return Ok(None);
        }
        let (prefix_text, full_text) = self.window_texts()?;
        self.advance()?;
        let piece = match full_text.strip_prefix(prefix_text.as_str()) {
            Some(rest) => rest.to_string(),
            None => full_text,
        };
        Ok((!piece.is_empty()).then_some(piece))
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Text of `ids[prefix..read]` and of `ids[prefix..]`.
    fn window_texts(&self) -> Result<(String, String)> {
        let tokenizer = self.tokenizer.as_ref();
        let prefix_text = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special)?;
        let full_text = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        Ok((prefix_text, full_text))
    }

    /// Marks everything pushed as emitted; moves the window start to the old read point when
    /// the ids emitted since then have text of their own.
    fn advance(&mut self) -> Result<()> {
        let tokenizer = self.tokenizer.as_ref();
        let newly_emitted = tokenizer.decode(&self.ids[self.read_offset..], self.skip_special)?;
        if !newly_emitted.is_empty() {
            self.prefix_offset = self.read_offset;
        }
        self.read_offset = self.ids.len();
        Ok(())
    }

    /// Whether the last id that shows up in the text is a `<0xNN>` byte-fallback token.
    fn last_visible_is_byte_token(&self) -> bool {
        let tokenizer = self.tokenizer.as_ref();
        let skip = self.skip_special == SkipSpecial::Yes;
        self.ids[self.read_offset..]
            .iter()
            .rev()
            .find(|&&id| !(skip && tokenizer.is_special(id)))
            .and_then(|&id| tokenizer.token_str(id))
            .is_some_and(is_byte_token)
    }
}

/// `<0xNN>`, the form Hugging Face's `ByteFallback` decoder and llama.cpp read as a raw byte.
fn is_byte_token(text: &str) -> bool {
    text.len() == 6 && text.starts_with("<0x") && text.ends_with('>') && u8::from_str_radix(&text[3..5], 16).is_ok()
}
