//! `TokenHistory`: the tokens a request has seen, in the shapes the penalties need.
//!
//! Owns: prompt ids, generated ids, per-token counts over *generated* tokens (OpenAI
//! presence/frequency semantics) and the set of every seen id, prompt and generated
//! (HF/llama.cpp repetition-penalty semantics). Does not own: applying penalties (`common`).
//! Invariants: `generated_counts` sums to `generated_ids.len()`; every id in `prompt_ids` or
//! `generated_ids` is in `seen_ids`; `max_id` is the largest id in either list.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Default)]
pub struct TokenHistory {
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    generated_counts: HashMap<u32, u32>,
    seen_ids: HashSet<u32>,
    max_id: Option<u32>,
}

impl TokenHistory {
    /// A history holding the prompt and no generated tokens yet.
    pub fn new(prompt_ids: &[u32]) -> Self {
        Self {
            prompt_ids: prompt_ids.to_vec(),
            seen_ids: prompt_ids.iter().copied().collect(),
            max_id: prompt_ids.iter().copied().max(),
            ..Self::default()
        }
    }

    /// Records one generated token.
    pub fn push(&mut self, token_id: u32) {
        self.generated_ids.push(token_id);
        let count = self.generated_counts.entry(token_id).or_insert(0);
        *count = count.saturating_add(1);
        self.seen_ids.insert(token_id);
        self.max_id = self.max_id.max(Some(token_id));
    }

    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    pub fn generated_ids(&self) -> &[u32] {
        &self.generated_ids
    }

    /// How many times `token_id` was generated (prompt occurrences do not count).
    pub fn generated_count(&self, token_id: u32) -> u32 {
        self.generated_counts.get(&token_id).copied().unwrap_or(0)
    }

    /// Whether `token_id` appeared in the prompt or was generated.
    pub fn is_seen(&self, token_id: u32) -> bool {
        self.seen_ids.contains(&token_id)
    }

    /// Every distinct seen id, in no particular order.
    pub fn seen_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.seen_ids.iter().copied()
    }

    pub fn num_seen_ids(&self) -> usize {
        self.seen_ids.len()
    }

    /// The largest id seen, for a cheap vocabulary-range check.
    pub fn max_id(&self) -> Option<u32> {
        self.max_id
    }
}
