//! Special-token facts shared by both builders: which ids are BOS and the stop (end-of-generation)
//! set, and whether the model adds BOS.
//!
//! Invariants: `eos_ids` has no duplicates and keeps the declared EOS first; every id in it is
//! inside the vocabulary (builders only add ids they looked up).

/// Token texts that end a turn in common chat formats. A vocabulary that has one of these as a
/// special token stops generation on it, as llama.cpp's end-of-generation set does.
pub(crate) const END_OF_TURN_TOKENS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "<|return|>",
    "<|call|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
];

/// BOS / stop ids and the BOS policy of the model, as read from GGUF metadata or
/// `tokenizer_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Specials {
    pub bos_id: Option<u32>,
    /// Declared EOS first, then end-of-turn tokens.
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
}

impl Specials {
    /// Appends `id` to the stop set unless it is already there.
    pub fn push_eos(&mut self, id: u32) {
        if !self.eos_ids.contains(&id) {
            self.eos_ids.push(id);
        }
    }
}
