//! The CLI turns bad input into one clear error line and a non-zero exit — never a panic.

use std::process::Command;

fn hearth_fails(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth")).args(args).envs(envs.iter().copied()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "hearth {args:?} succeeded; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "hearth {args:?} panicked:\n{stderr}");
    stderr
}

fn fixture(arch: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden").join(arch)
}

#[test]
fn unknown_model_name_explains_where_it_looked() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap();
    let err = hearth_fails(&["run", "--model", "no-such-model", "hi"], &[("HEARTH_HOME", home), ("HF_HUB_CACHE", home)]);
    assert!(err.contains("model `no-such-model` not found"), "{err}");
}

#[test]
fn missing_default_model_says_how_to_fetch_it() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap();
    let err = hearth_fails(&["run", "hi"], &[("HEARTH_HOME", home), ("HF_HUB_CACHE", home)]);
    assert!(err.contains("fetch-assets.sh"), "{err}");
}

#[test]
fn hf_directory_without_tokenizer_is_reported() {
    // The golden fixture directories have weights and config but no tokenizer.json.
    let err = hearth_fails(&["run", "--model", fixture("llama").to_str().unwrap(), "hi"], &[]);
    assert!(err.contains("no tokenizer.json"), "{err}");
}

#[test]
fn invalid_chat_template_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("llama").join(name), dir.path().join(name)).unwrap();
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"hi": 0, "<unk>": 1}, "unk_token": "<unk>"}
    });
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let config = serde_json::json!({"chat_template": "{% for m in messages %}{{ m.content }", "bos_token": "hi", "eos_token": "hi"});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let err = hearth_fails(&["run", "--model", dir.path().to_str().unwrap(), "hi"], &[]);
    assert!(err.to_lowercase().contains("template"), "{err}");
}

#[test]
fn impossible_sampling_parameters_are_rejected() {
    let err = hearth_fails(&["run", "--model", fixture("llama").join("model.gguf").to_str().unwrap(), "--top-p", "1.5", "hi"], &[]);
    assert!(err.contains("top_p"), "{err}");
}

#[test]
fn prompt_longer_than_the_context_is_rejected() {
    let long = "a ".repeat(300);
    let err = hearth_fails(
        &["run", "--model", fixture("llama").join("model.gguf").to_str().unwrap(), "--raw", "--ctx-size", "64", "--max-tokens", "8", &long],
        &[],
    );
    assert!(err.contains("exceeds the model's context"), "{err}");
}

#[test]
fn pull_without_network_fails_clearly() {
    let home = tempfile::tempdir().unwrap();
    let err = hearth_fails(
        &["pull", "HuggingFaceTB/SmolLM2-135M-Instruct"],
        &[("HF_HUB_CACHE", home.path().to_str().unwrap()), ("HF_ENDPOINT", "http://127.0.0.1:9")],
    );
    assert!(err.contains("cannot reach the Hugging Face hub"), "{err}");
}

#[test]
fn batch_invariant_serving_refuses_setups_it_cannot_keep() {
    let model = fixture("llama").join("model.gguf");
    let model = model.to_str().unwrap();
    let err = hearth_fails(&["serve", "--model", model, "--batch-invariant", "--stages", "local=0..2"], &[]);
    assert!(err.contains("batch-invariant mode cannot be combined with pipeline stages"), "{err}");
    let err = hearth_fails(&["serve", "--model", model, "--prefill-node", "127.0.0.1:1"], &[("HEARTH_BATCH_INVARIANT", "1")]);
    assert!(err.contains("--prefill-node"), "{err}");
}
