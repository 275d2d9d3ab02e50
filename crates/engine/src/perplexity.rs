//! The perplexity protocol of DESIGN.md §5: take the first `max_tokens` tokens of a text,
//! split them into non-overlapping windows of `window` tokens (with `Bos::Prepend`, each window
//! is BOS + `window - 1` text tokens), score every predicted position, and report
//! `exp(mean negative log-likelihood)`.

use candle_core::{DType, D};

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
        // [n, vocab] -> log-probabilities of each next token
        let log_probs = candle_nn::ops::log_softmax(&logits?.to_dtype(DType::F64)?, D::Minus1)?.to_dtype(DType::F32)?;
        let log_probs = log_probs.to_vec2::<f32>()?;
        for (pos, row) in log_probs.iter().enumerate().take(ids.len() - 1) {
            total_nll -= row[ids[pos + 1] as usize] as f64;
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


fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
