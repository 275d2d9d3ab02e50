//! Output processing against SmolLM2's real tokenizer: stop strings split across tokens, held
//! text released when it stops being a possible stop-string start, EOS, `max_tokens`.

use std::path::PathBuf;
use std::sync::Arc;

use hearth_models::ModelFiles;
use hearth_tokenizer::{BosPolicy, Tokenizer};

use super::output::OutputProcessor;
use super::request::{Delta, EngineRequest, FinishReason};

pub(super) fn tokenizer() -> Arc<Tokenizer> {
    let assets = std::env::var_os("HEARTH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/hearth/assets"));
    let files = ModelFiles::open(&assets.join("smollm2-135m-instruct-q4_1.gguf")).expect("run scripts/fetch-assets.sh");
    Arc::new(Tokenizer::from_gguf(&files.gguf.as_ref().unwrap().content).unwrap())
}

/// Feeds `text`'s tokens one at a time; returns every delta up to and including the final one.
fn feed(tokenizer: &Arc<Tokenizer>, text: &str, request: &EngineRequest, extra_ids: &[u32]) -> Vec<Delta> {
    let mut ids = tokenizer.encode(text, BosPolicy::Never).unwrap();
    ids.extend_from_slice(extra_ids);
    let mut output = OutputProcessor::new(tokenizer.clone(), request);
    let mut deltas = Vec::new();
    for id in ids {
        let delta = output.push(id, None).unwrap();
        let done = delta.finish.is_some();
        deltas.push(delta);
        if done {
            break;
        }
    }
    deltas
}

fn joined(deltas: &[Delta]) -> String {
    deltas.iter().map(|d| d.text.as_str()).collect()
}

fn request(stop_strings: &[&str], max_tokens: usize) -> EngineRequest {
    let mut request = EngineRequest::greedy(vec![1], max_tokens);
    request.stop_strings = stop_strings.iter().map(|s| s.to_string()).collect();
    request
}

#[test]
fn stop_string_split_across_tokens_ends_generation_before_it() {
    let tokenizer = tokenizer();
    let text = "The quick brown fox jumps over the lazy dog. And then it sleeps.";
    let deltas = feed(&tokenizer, text, &request(&["ps over"], 100), &[]);
    let last = deltas.last().unwrap();
    assert_eq!(last.finish.as_ref().unwrap().reason, FinishReason::Stop);
    assert_eq!(joined(&deltas), "The quick brown fox jum");
    // No delta ever carried part of the stop string.
    assert!(deltas.iter().all(|d| !d.text.contains("ps")), "{deltas:?}");
}

#[test]
fn text_that_might_start_a_stop_string_is_held_then_released() {
    let tokenizer = tokenizer();
    let text = "Hello world, hello there.";
    let num_tokens = tokenizer.encode(text, BosPolicy::Never).unwrap().len();
    let deltas = feed(&tokenizer, text, &request(&["world!"], num_tokens), &[]);
    assert_eq!(deltas.last().unwrap().finish.as_ref().unwrap().reason, FinishReason::Length);
    assert_eq!(joined(&deltas), text);
    let world_delta = deltas.iter().position(|d| d.text.contains("world")).unwrap();
    assert!(deltas[world_delta].text.contains(','), "\"world\" was sent before it could be ruled out: {deltas:?}");
}

#[test]
fn eos_stops_without_emitting_the_token_and_counts_it() {
    let tokenizer = tokenizer();
    let eos = tokenizer.eos_ids()[0];
    let deltas = feed(&tokenizer, "Paris.", &request(&[], 100), &[eos, 42]);
    let finish = deltas.last().unwrap().finish.clone().unwrap();
    assert_eq!(finish.reason, FinishReason::Stop);
    assert_eq!(joined(&deltas), "Paris.");
    assert!(!deltas.iter().any(|d| d.token_ids.contains(&eos)));
    let num_text_tokens = tokenizer.encode("Paris.", BosPolicy::Never).unwrap().len();
    assert_eq!(finish.usage.completion_tokens, num_text_tokens + 1);
}

#[test]
fn max_tokens_ends_with_length_and_flushes_held_text() {
    let tokenizer = tokenizer();
    let text = "one two three four five six";
    let ids = tokenizer.encode(text, BosPolicy::Never).unwrap();
    let deltas = feed(&tokenizer, text, &request(&["three four!"], 3), &[]);
    let finish = deltas.last().unwrap().finish.clone().unwrap();
    assert_eq!(finish.reason, FinishReason::Length);
    assert_eq!(finish.usage.completion_tokens, 3);
    assert_eq!(joined(&deltas), tokenizer.decode(&ids[..3], hearth_tokenizer::SkipSpecial::Yes).unwrap());
}
