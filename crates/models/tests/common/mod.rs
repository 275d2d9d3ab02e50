//! Test support shared by the equality suites (`pipeline_stages.rs`, `tensor_parallel.rs`):
//! the step script they run against the single model.

use candle_core::{Device, Tensor};
use hearth_models::{ForwardBatch, SequenceInput};

/// Two sequences with interleaved, non-identity block tables (both cross block boundaries):
/// a prompt step whose compared rows are every position of sequence 0 and the last of sequence
/// 1, then `num_decode_steps` steps of one greedy token each. `step(batch, name)` runs the
/// compared paths on `batch` and returns each logit row's greedy token. Needs `num_blocks`
/// blocks of `block_size` (at least 24 of 4 for the default lengths and 8 decode steps).
pub fn two_sequence_script(
    vocab: u32,
    num_blocks: usize,
    block_size: usize,
    num_decode_steps: usize,
    mut step: impl FnMut(&ForwardBatch, &str) -> Vec<u32>,
) {
    let half = num_blocks as u32 / 2;
    let tables: [Vec<u32>; 2] = [(0..half).rev().map(|b| 2 * b).collect(), (0..half).map(|b| 2 * b + 1).collect()];
    let mut contexts: [Vec<u32>; 2] = [(0..11).map(|i| (i * 37 + 5) % vocab).collect(), (0..6).map(|i| (i * 53 + 11) % vocab).collect()];
    let prompts: Vec<SequenceInput> = (0..2)
        .map(|s| SequenceInput { new_token_ids: contexts[s].clone(), num_cached_tokens: 0, block_table: tables[s].clone(), wants_logits: true })
        .collect();
    let mut batch = ForwardBatch::new(&prompts, block_size, &Device::Cpu).unwrap();
    let num_first = contexts[0].len() as u32;
    let rows: Vec<u32> = (0..num_first).chain([num_first + contexts[1].len() as u32 - 1]).collect();
    batch.logit_rows = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
    batch.num_logit_rows = rows.len();
    let mut next = step(&batch, "prompt step")[rows.len() - 2..].to_vec();
    for decode_step in 0..num_decode_steps {
        let inputs: Vec<SequenceInput> = (0..2)
            .map(|s| {
                let input =
                    SequenceInput { new_token_ids: vec![next[s]], num_cached_tokens: contexts[s].len(), block_table: tables[s].clone(), wants_logits: true };
                contexts[s].push(next[s]);
                input
            })
            .collect();
        let batch = ForwardBatch::new(&inputs, block_size, &Device::Cpu).unwrap();
        next = step(&batch, &format!("decode step {decode_step}"));
    }
}
