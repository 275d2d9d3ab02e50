//! Malformed model files give errors that name the problem — never a panic. Each case damages
//! a copy of a golden fixture (small, committed) in a temporary directory.

use std::path::{Path, PathBuf};

use hearth_models::{LoadOptions, ModelFiles};

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden").join(arch)
}

fn load_error(path: &Path) -> String {
    match ModelFiles::open(path).and_then(|f| f.load(&LoadOptions::default())) {
        Ok(_) => panic!("{} loaded but should have failed", path.display()),
        Err(e) => e.to_string(),
    }
}

fn copy_dir(arch: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(arch).join(name), dir.path().join(name)).unwrap();
    }
    dir
}

#[test]
fn truncated_gguf_is_reported_as_truncated() {
    let bytes = std::fs::read(fixture("llama").join("model.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_error(&path);
    assert!(err.contains("truncated"), "{err}");
    // Cut inside the header too.
    std::fs::write(&path, &bytes[..200]).unwrap();
    let err = load_error(&path);
    assert!(err.contains("not a valid GGUF file"), "{err}");
}

#[test]
fn bad_magic_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, b"NOPE\x03\x00\x00\x00 and some more bytes").unwrap();
    let err = load_error(&path);
    assert!(err.contains("bad magic"), "{err}");
}

#[test]
fn unknown_architecture_is_named() {
    let dir = copy_dir("llama");
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replace("\"llama\"", "\"mamba9\"")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("unsupported architecture `mamba9`"), "{err}");
}

#[test]
fn every_missing_and_misshapen_tensor_is_listed_at_once() {
    let dir = copy_dir("qwen2");
    // One more layer than the file has, and a wider MLP than the weights.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    let mut config = config;
    let layers = config["num_hidden_layers"].as_u64().unwrap();
    config["num_hidden_layers"] = (layers + 1).into();
    config["intermediate_size"] = 130.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains(&format!("missing tensor `model.layers.{layers}.self_attn.q_proj.weight`")), "{err}");
    assert!(err.contains(&format!("missing tensor `model.layers.{layers}.mlp.down_proj.weight`")), "{err}");
    assert!(err.contains("tensor `model.layers.0.mlp.gate_proj.weight` has shape [128, 64], expected [130, 64]"), "{err}");
}

#[test]
fn unexpected_tensors_are_listed() {
    let dir = copy_dir("llama");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    let mut config = config;
    config["num_hidden_layers"] = 1.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("unexpected tensor `model.layers.1.self_attn.q_proj.weight`"), "{err}");
}

#[test]
fn malformed_config_json_is_reported() {
    let dir = copy_dir("llama");
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("invalid config.json"), "{err}");
}

#[test]
fn directory_without_config_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("without config.json"), "{err}");
}

#[test]
fn missing_file_is_reported_with_its_path() {
    let err = load_error(Path::new("/nonexistent/model.gguf"));
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}
