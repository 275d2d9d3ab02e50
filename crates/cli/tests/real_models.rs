//! Real models from the asset cache (`scripts/fetch-assets.sh`), through the `hearth` binary:
//! Hamlet perplexities against llama.cpp's numbers (DESIGN.md §5), the greedy chat answer, and
//! the GGUF ↔ Hugging Face directory round trip. A missing asset fails with instructions.

use std::path::PathBuf;
use std::process::Command;

fn assets() -> PathBuf {
    std::env::var_os("HEARTH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hearth/assets"))
}

fn asset(name: &str) -> PathBuf {
    let path = assets().join(name);
    assert!(path.exists(), "{} is missing: run scripts/fetch-assets.sh", path.display());
    path
}

/// Runs `hearth ARGS`; returns stdout, failing with stderr when the command fails.
fn hearth(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hearth {args:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn perplexity(model: &str, extra: &[&str]) -> f64 {
    let hamlet = asset("hamlet.md");
    let mut args = vec!["perplexity", "--model", model, "--file", hamlet.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = hearth(&args);
    let value = out
        .lines()
        .find_map(|l| l.strip_prefix("perplexity: "))
        .unwrap_or_else(|| panic!("no perplexity line in {out:?}"));
    value.trim().parse().unwrap()
}

fn assert_within(got: f64, want: f64, rel: f64, what: &str) {
    let err = (got - want).abs() / want;
    assert!(err <= rel, "{what}: {got:.3} vs reference {want:.3} ({:.2}% off, limit {:.1}%)", err * 100.0, rel * 100.0);
}

#[test]
fn smollm2_q4_1_hamlet_perplexity_matches_llama_cpp() {
    let model = asset("smollm2-135m-instruct-q4_1.gguf");
    let ppl = perplexity(model.to_str().unwrap(), &[]);
    assert_within(ppl, 32.73, 0.01, "SmolLM2 Q4_1 Hamlet perplexity");
}

#[test]
fn gemma3_q4_k_m_hamlet_perplexity_matches_llama_cpp_and_needs_bos() {
    let model = asset("gemma-3-270m-q4_k_m.gguf");
    let with_bos = perplexity(model.to_str().unwrap(), &["--bos"]);
    assert_within(with_bos, 42.61, 0.01, "Gemma 3 Q4_K_M Hamlet perplexity with BOS");
    let without_bos = perplexity(model.to_str().unwrap(), &[]);
    assert!(without_bos > 1.5 * with_bos, "without BOS {without_bos:.2} should be far worse than with BOS {with_bos:.2}");
}

#[test]
fn smollm2_greedy_chat_answer_names_paris() {
    let model = asset("smollm2-135m-instruct-q4_1.gguf");
    let prompt = "What is the capital of France? Answer in one sentence.";
    let args = ["run", "--model", model.to_str().unwrap(), "--temperature", "0", "--max-tokens", "40", prompt];
    let answer = hearth(&args);
    assert!(answer.contains("Paris"), "answer was {answer:?}");
    // Greedy decoding is deterministic.
    assert_eq!(hearth(&args), answer);
}

#[test]
fn smollm2_as_hf_directory_matches_the_gguf() {
    let model = asset("smollm2-135m-instruct-q4_1.gguf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-hf");
    hearth(&["export", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out.join(file).exists(), "export wrote no {file}");
    }
    let gguf_top1 = dir.path().join("gguf.top1");
    let hf_top1 = dir.path().join("hf.top1");
    let ppl_gguf = perplexity(model.to_str().unwrap(), &["--top1-out", gguf_top1.to_str().unwrap()]);
    let ppl_hf = perplexity(out.to_str().unwrap(), &["--top1-out", hf_top1.to_str().unwrap()]);
    assert_within(ppl_hf, ppl_gguf, 0.01, "HF directory vs GGUF perplexity");
    let a = std::fs::read_to_string(gguf_top1).unwrap();
    let b = std::fs::read_to_string(hf_top1).unwrap();
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split_whitespace().collect(), b.split_whitespace().collect());
    assert_eq!(a.len(), b.len());
    let num_same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let agreement = num_same as f64 / a.len() as f64;
    assert!(agreement >= 0.95, "top-1 agreement {:.1}% < 95% over {} positions", agreement * 100.0, a.len());
    // The exported chat template still answers.
    let answer = hearth(&["run", "--model", out.to_str().unwrap(), "--temperature", "0", "--max-tokens", "40",
        "What is the capital of France? Answer in one sentence."]);
    assert!(answer.contains("Paris"), "answer from the exported model was {answer:?}");
}
