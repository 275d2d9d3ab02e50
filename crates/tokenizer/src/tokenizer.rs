//! [`Tokenizer`]: a `tokenizers::Tokenizer` pipeline plus the special-token facts (BOS, stop ids,
//! whether the model adds BOS) and the model's chat template.
//!
//! Owns encode/decode and the id -> token-text table. Does not own how the pipeline is built
//! (`gguf/` and `hf.rs` do that).
//!
//! Invariants: `tokens.len()` is the vocabulary size (model vocabulary plus added tokens; ids
//! above the largest id do not exist); `decode` rejects ids outside it instead of dropping them;
//! `encode` never yields two BOS tokens in a row at the start.

use std::path::Path;

use crate::chat::ChatTemplate;
use crate::error::{Result, TokenizerError};
use crate::specials::Specials;
use crate::{BosPolicy, SkipSpecial};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `tokens[id]` is the token's text as stored in the vocabulary (`None` for holes in the id
    /// space of a hand-written tokenizer.json).
    tokens: Vec<Option<String>>,
    specials: Specials,
    chat_template: Option<ChatTemplate>,
}

impl Tokenizer {
    /// Builds from a Hugging Face `tokenizer.json` and, when given, its `tokenizer_config.json`
    /// (chat template, BOS/EOS tokens, `add_bos_token`). Without a config, BOS/EOS come from the
    /// tokenizer's own post-processor and end-of-turn tokens.
    pub fn from_hf_files(tokenizer_json: &Path, tokenizer_config_json: Option<&Path>) -> Result<Self> {
        crate::hf::build(tokenizer_json, tokenizer_config_json)
    }

    /// Builds from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn from_gguf(content: &candle_core::quantized::gguf_file::Content) -> Result<Self> {
        crate::gguf::build(content)
    }

    /// The tokenizer as GGUF `tokenizer.*` metadata (`gpt2` model), readable by llama.cpp and
    /// [`Tokenizer::from_gguf`]. Byte-level BPE only; a pre-tokenizer without an exact llama.cpp
    /// name is an error.
    pub fn to_gguf_metadata(&self) -> Result<Vec<(String, candle_core::quantized::gguf_file::Value)>> {
        crate::gguf::to_gguf_metadata(self)
    }

    /// Puts the parts together; computes the id -> text table.
    pub(crate) fn assemble(
        inner: tokenizers::Tokenizer,
        specials: Specials,
        chat_template: Option<ChatTemplate>,
    ) -> Self {
        let vocab = inner.get_vocab(true);
        let num_tokens = vocab.values().max().map_or(0, |&max_id| max_id as usize + 1);
        let mut tokens = vec![None; num_tokens];
        for (text, id) in vocab {
            tokens[id as usize] = Some(text);
        }
        Self {
            inner,
            tokens,
            specials,
            chat_template,
        }
    }

    /// Encodes `text`. Special tokens written in the text (`<|im_start|>`) become their ids.
    /// BOS is added per `bos`, never twice: text that already starts with the BOS token keeps one.
    pub fn encode(&self, text: &str, bos: BosPolicy) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::backend("encoding text", e))?;
        let mut ids = encoding.get_ids().to_vec();
        let want_bos = match bos {
            BosPolicy::AddIfModelDoes => self.specials.add_bos,
            BosPolicy::Never => false,
            BosPolicy::Always => true,
        };
        if want_bos {
            let bos_id = self.specials.bos_id.ok_or(TokenizerError::NoBosToken)?;
            if ids.first() != Some(&bos_id) {
                ids.insert(0, bos_id);
            }
        }
        Ok(ids)
    }

    /// Decodes `ids` to text. Invalid UTF-8 (a sequence cut in the middle) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: SkipSpecial) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| self.token_str(id).is_none()) {
            return Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size(),
            });
        }
        self.inner
            .decode(ids, skip_special == SkipSpecial::Yes)
            .map_err(|e| TokenizerError::backend("decoding ids", e))
    }

    /// The token's text as stored in the vocabulary (`Ġthe`, `▁the`, `<0x0A>`, `<|im_end|>`).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)?.as_deref()
    }

    /// Number of token ids (model vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.specials.bos_id
    }

    /// Every id that ends generation: the declared EOS first, then end-of-turn tokens
    /// (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, ...) present in the vocabulary.
    pub fn eos_ids(&self) -> &[u32] {
        &self.specials.eos_ids
    }

    /// Whether the model's tokenizer puts BOS in front of a prompt.
    pub fn adds_bos(&self) -> bool {
        self.specials.add_bos
    }

    /// The chat template shipped with the model, if any.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Whether `id` is a special (control) token, i.e. dropped by `SkipSpecial::Yes`.
    pub fn is_special(&self, id: u32) -> bool {
        self.token_str(id)
            .is_some_and(|text| self.inner.get_added_vocabulary().is_special_token(text))
    }

    /// The underlying `tokenizers` pipeline.
    pub fn hf_tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The pipeline serialized as a Hugging Face `tokenizer.json`.
    pub fn to_hf_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| TokenizerError::backend("serializing tokenizer.json", e))
    }
}

impl AsRef<Tokenizer> for Tokenizer {
    fn as_ref(&self) -> &Tokenizer {
        self
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.specials.bos_id)
            .field("eos_ids", &self.specials.eos_ids)
            .field("adds_bos", &self.specials.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}
