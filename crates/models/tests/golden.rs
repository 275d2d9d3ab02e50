//! Golden logits: tiny random-weight models made by `scripts/golden/make_golden.py` with
//! PyTorch/transformers, loaded here from both their safetensors and their GGUF forms. The
//! prompt's logits (every position) and 16 greedy steps must match the reference within
//! 1e-4 (F32) with identical greedy tokens. Decoding goes through the paged KV cache with a
//! small block size, so block boundaries are crossed many times.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hearth_models::{ForwardBatch, LoadOptions, ModelFiles, PagedKvCache, SequenceInput};

const TOLERANCE: f32 = 1e-4;
const BLOCK_SIZE: usize = 4;

#[derive(serde::Deserialize)]
struct Reference {
    prompt_ids: Vec<u32>,
    prompt_logits: Vec<Vec<f32>>,
    greedy_ids: Vec<u32>,
    greedy_logits: Vec<Vec<f32>>,
}

fn fixture_dir(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden").join(arch)
}

/// Max |a - b| and the first index where they differ by more than the tolerance.
fn compare(got: &[f32], want: &[f32]) -> (f32, Option<usize>) {
    assert_eq!(got.len(), want.len(), "vocabulary sizes differ");
    let mut max = 0f32;
    let mut first_bad = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if !(d <= TOLERANCE) && first_bad.is_none() {
            first_bad = Some(i);
        }
        max = if d.is_nan() { f32::NAN } else { max.max(d) };
    }
    (max, first_bad)
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best }) as u32
}

fn check(arch: &str, model_path: &Path) {
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir(arch).join("reference.json")).unwrap()).unwrap();
    let device = Device::Cpu;
    let loaded = ModelFiles::open(model_path).unwrap().load(&LoadOptions::default()).unwrap();
    let model = &loaded.model;
    let num_tokens = reference.prompt_ids.len() + reference.greedy_ids.len();
    let num_blocks = num_tokens.div_ceil(BLOCK_SIZE) + 2;
    let kv = PagedKvCache::new(&model.config, num_blocks, BLOCK_SIZE, candle_core::DType::F32, &device).unwrap();
    // Blocks in reverse order so the table is not the identity.
    let block_table: Vec<u32> = (0..num_blocks as u32).rev().collect();

    let prompt = SequenceInput {
        new_token_ids: reference.prompt_ids.clone(),
        num_cached_tokens: 0,
        block_table: block_table.clone(),
        wants_logits: true,
    };
    let logits = model.forward(&ForwardBatch::all_logits(&prompt, BLOCK_SIZE, &device).unwrap(), &kv).unwrap();
    let logits: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    for (pos, (got, want)) in logits.iter().zip(&reference.prompt_logits).enumerate() {
        let (max, first_bad) = compare(got, want);
        assert!(first_bad.is_none(), "{arch} {}: prompt position {pos}: max abs diff {max} > {TOLERANCE} (first at vocab {first_bad:?})", model_path.display());
    }

    let mut context: Vec<u32> = reference.prompt_ids.clone();
    let mut step_logits = logits.last().unwrap().clone();
    for (step, (&want_id, want_logits)) in reference.greedy_ids.iter().zip(&reference.greedy_logits).enumerate() {
        let (max, first_bad) = compare(&step_logits, want_logits);
        assert!(first_bad.is_none(), "{arch} {}: greedy step {step}: max abs diff {max} > {TOLERANCE}", model_path.display());
        let got_id = argmax(&step_logits);
        assert_eq!(got_id, want_id, "{arch} {}: greedy step {step} picked {got_id}, reference {want_id}", model_path.display());
        let input = SequenceInput {
            new_token_ids: vec![got_id],
            num_cached_tokens: context.len(),
            block_table: block_table.clone(),
            wants_logits: true,
        };
        context.push(got_id);
        let out: Tensor = model.forward(&ForwardBatch::new(&[input], BLOCK_SIZE, &device).unwrap(), &kv).unwrap();
        step_logits = out.squeeze(0).unwrap().to_vec1().unwrap();
    }
}

macro_rules! golden {
    ($arch:ident) => {
        mod $arch {
            use super::*;
            #[test]
            fn safetensors_matches_transformers_logits_and_greedy_tokens() {
                check(stringify!($arch), &fixture_dir(stringify!($arch)));
            }
            #[test]
            fn gguf_matches_transformers_logits_and_greedy_tokens() {
                check(stringify!($arch), &fixture_dir(stringify!($arch)).join("model.gguf"));
            }
        }
    };
}

golden!(llama);
golden!(qwen2);
golden!(qwen3);
golden!(gemma3);
golden!(phi3);
