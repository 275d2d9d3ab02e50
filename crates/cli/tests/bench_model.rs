//! `hearth bench-model` through the binary: the planned file sizes of all nine shape × quant
//! combinations with the default vocabulary (SmolLM2's, 49,152 tokens) — llama.cpp's files of
//! the same shape are 4.47 GB (8B Q4_K_M) and 14.8 GB (8B F16) — and clear errors for bad
//! arguments. Writing real shapes takes minutes; the writer is tested on tiny shapes in
//! `hearth-models` and in the command's unit tests.

use std::process::Command;

fn hearth(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn dry_run_predicts_the_file_size_of_every_shape_and_quant() {
    let expected: [(&str, &str, u64); 9] = [
        ("llama3-8b", "q4_k_m", 4_466_639_616),
        ("llama3-8b", "q8_0", 7_846_200_064),
        ("llama3-8b", "bf16", 14_766_801_664),
        ("llama3.2-1b", "q4_k_m", 668_746_208),
        ("llama3.2-1b", "q8_0", 1_142_899_168),
        ("llama3.2-1b", "bf16", 2_149_532_128),
        ("qwen2.5-7b", "q4_k_m", 4_168_876_704),
        ("qwen2.5-7b", "q8_0", 7_310_582_432),
        ("qwen2.5-7b", "bf16", 13_758_341_792),
    ];
    for (shape, quant, bytes) in expected {
        let (ok, stdout, stderr) = hearth(&["bench-model", "--shape", shape, "--quant", quant, "--dry-run"]);
        assert!(ok, "{shape} {quant}: {stderr}");
        let line = stdout.lines().find(|l| l.starts_with("file size")).unwrap_or_else(|| panic!("no size in {stdout}"));
        assert!(line.contains(&format!(" {bytes} bytes")), "{shape} {quant}: {line}, expected {bytes} bytes");
    }
}

#[test]
fn unknown_shape_and_missing_out_are_clear_errors() {
    let (ok, _, stderr) = hearth(&["bench-model", "--shape", "llama3-70b", "--quant", "q8_0", "--dry-run"]);
    assert!(!ok && stderr.contains("llama3-70b") && stderr.contains("llama3.2-1b"), "{stderr}");
    let (ok, _, stderr) = hearth(&["bench-model", "--shape", "llama3-8b", "--quant", "q8_0"]);
    assert!(!ok && stderr.contains("--out"), "{stderr}");
    let (ok, _, stderr) = hearth(&["bench-model", "--shape", "llama3-8b", "--quant", "q2_k", "--dry-run"]);
    assert!(!ok && stderr.contains("q4_k_m"), "{stderr}");
}
