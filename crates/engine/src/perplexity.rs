//! The perplexity protocol of DESIGN.md §5: take the first `max_tokens` tokens of a text,
//! split them into non-overlapping windows of `window` tokens (with `Bos::Prepend`, each window
//! is BOS + `window - 1` text tokens), score every predicted position, and report
//! `exp(mean negative log-likelihood)`.

use crate::runner::ModelRunner;
use crate::{EngineError, Result};

/// Whether each window starts with the model's BOS token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowBos {
    Prepend(u32),
    None,
}

#[derive(Debug, Clone)]
pub struct PerplexityReport {
    pub perplexity: f64,
    pub num_windows: usize,
    /// Positions scored (each predicts the next token).
    pub num_scored: usize,
    /// Greedy prediction at every scored position, in order (to compare models).
    pub top1: Vec<u32>,
}

/// Removes the characters the protocol strips (`#`, `*`, `_`).
pub fn clean_text(text: &str) -> String {
    text.chars().filter(|c| !matches!(c, '#' | '*' | '_')).collect()
}

pub fn perplexity(
    runner: &mut ModelRunner,
    text_tokens: &[u32],
    window: usize,
    max_tokens: usize,
    bos: WindowBos,
) -> Result<PerplexityReport> {
    let text_per_window = match bos {
        WindowBos::Prepend(_) => window.saturating_sub(1),
        WindowBos::None => window,
    };
    if text_per_window < 1 || window < 2 {
        return Err(EngineError::Invalid(format!("window {window} is too small")));
    }
    let tokens = &text_tokens[..text_tokens.len().min(max_tokens)];
    let mut total_nll = 0f64;
    let mut num_scored = 0usize;
    let mut num_windows = 0usize;
    let mut top1 = Vec::new();
    for chunk in tokens.chunks(text_per_window) {
        let mut ids = Vec::with_capacity(window);
        if let WindowBos::Prepend(id) = bos {
            ids.push(id);
        }
        ids.extend_from_slice(chunk);
        if ids.len() < 2 {
            continue;
        }
        let mut seq = runner.new_sequence()?;
        seq.token_ids = ids.clone();
        let logits = runner.compute_all_logits(&mut seq);
        runner.release(&mut seq)?;
        // [n, vocab]
        let logits = logits?.to_vec2::<f32>()?;
        for (pos, row) in logits.iter().enumerate().take(ids.len() - 1) {
            total_nll += negative_log_likelihood(row, ids[pos + 1] as usize)?;
            top1.push(argmax(row));
        }
        num_scored += ids.len() - 1;
        num_windows += 1;
    }
    if num_scored == 0 {
        return Err(EngineError::Invalid("the text is too short to score any position".into()));
    }
    Ok(PerplexityReport { perplexity: (total_nll / num_scored as f64).exp(), num_windows, num_scored, top1 })
}


/// `-log softmax(row)[target]`, with the log-sum-exp taken around the row's maximum in f64.
fn negative_log_likelihood(row: &[f32], target: usize) -> Result<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum_exp: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    match row.get(target) {
        Some(&logit) => Ok(max + sum_exp.ln() - logit as f64),
        None => Err(EngineError::Invalid(format!("token {target} is outside the vocabulary of {}", row.len()))),
    }
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
