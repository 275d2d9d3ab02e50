//! `hearth bench` through the binary on the golden tiny llama (tests/fixtures/golden): the
//! table and the JSON hold a row per test with sane numbers and every header field, and bad
//! flags fail with one clear line before anything is measured.

use std::process::Command;

fn golden_llama() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/llama/model.gguf");
    path.to_str().unwrap().to_string()
}

fn hearth(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn bench_writes_a_row_per_test_with_roofline_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let model = golden_llama();
    let args = [
        "bench",
        "--model",
        &model,
        "-p",
        "16",
        "-n",
        "4",
        "--batch",
        "1,2",
        "--reps",
        "1",
        "--copy-mib",
        "16",
        "--json",
    ];
    let (ok, stdout, stderr) = hearth(&[&args[..], &[json_path.to_str().unwrap()]].concat());
    assert!(ok, "hearth bench failed:\n{stderr}");
    for needle in ["| pp16 ", "| tg4 ", "roofline t/s", "bandwidth", "J/tok"] {
        assert!(stdout.contains(needle), "table lacks `{needle}`:\n{stdout}");
    }

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert!(!report["commit"].as_str().unwrap().is_empty());
    assert!(!report["hardware"]["cpu_model"].as_str().unwrap().is_empty());
    assert!(report["hardware"]["num_cpus"].as_u64().unwrap() >= 1);
    assert_eq!(report["hardware"]["device"], "cpu");
    let m = &report["model"];
    assert_eq!(
        (m["architecture"].as_str(), m["num_layers"].as_u64(), m["hidden_size"].as_u64()),
        (Some("llama"), Some(2), Some(64))
    );
    assert_eq!((m["vocab_size"].as_u64(), m["tied_embeddings"].as_bool()), (Some(256), Some(true)));
    assert_eq!(m["quant"][0]["storage_type"], "F32");
    assert_eq!(m["loaded"]["block_bytes"], 296_192);
    let s = &report["settings"];
    assert_eq!(
        (s["timed_runs"].as_u64(), s["warmup_runs"].as_u64(), s["prompt_chunk"].as_u64()),
        (Some(1), Some(1), Some(512))
    );
    assert_eq!((s["kv_dtype"].as_str(), s["tg_context"].as_u64()), (Some("F32"), Some(1)));
    let bw = &report["bandwidth"];
    assert_eq!(bw["bytes_per_copy"], 16 << 20);
    assert!(bw["bytes_per_second"].as_f64().unwrap() > 1e8);
    assert!(bw["convention"].as_str().unwrap().contains("read + write"));
    assert!(report["energy"]["source"].is_string() || report["energy"]["unavailable_reason"].is_string());

    let rows = report["results"].as_array().unwrap();
    let tests: Vec<(&str, u64)> =
        rows.iter().map(|r| (r["test"].as_str().unwrap(), r["batch_size"].as_u64().unwrap())).collect();
    assert_eq!(tests, [("pp16", 1), ("tg4", 1), ("tg4", 2)]);
    for row in rows {
        let tps = row["tokens_per_second_mean"].as_f64().unwrap();
        assert!(tps > 0.0 && tps.is_finite(), "{row}");
        assert_eq!(row["run_seconds"].as_array().unwrap().len(), 1);
        assert!(row["achieved_tflops"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert_eq!(rows[0]["tokens_per_run"], 16);
    assert!(rows[0]["bytes_per_token"].is_null() && rows[0]["roofline_fraction"].is_null());
    assert_eq!(rows[2]["tokens_per_run"], 8);
    // tg4 at batch 2 from one token: (361,728 weight bytes + 2 × 512 × 3.5 KV bytes) ÷ 2.
    assert_eq!(rows[2]["bytes_per_token"].as_f64(), Some(182_656.0));
    let fraction = rows[2]["roofline_fraction"].as_f64().unwrap();
    let expected =
        rows[2]["tokens_per_second_mean"].as_f64().unwrap() / rows[2]["roofline_tokens_per_second"].as_f64().unwrap();
    assert!((fraction - expected).abs() < 1e-9 * expected.max(1.0), "{fraction} vs {expected}");
}

#[test]
fn bad_bench_flags_fail_with_a_clear_error() {
    let model = golden_llama();
    let cases: [(&[&str], &str); 6] = [
        (&["--batch", "0"], "at least 1"),
        (&["-p", "0"], "at least 1"),
        (&["-p", "1000"], "context is 512"),
        (&["-p", "none", "-n", "500", "--tg-context", "13"], "513 tokens"),
        (&["--reps", "0"], "--reps"),
        (&["-p", "none", "-n", "none"], "nothing to run"),
    ];
    for (flags, expected) in cases {
        let args = [&["bench", "--model", model.as_str(), "--copy-mib", "16"][..], flags].concat();
        let (ok, _, stderr) = hearth(&args);
        assert!(!ok, "{flags:?} succeeded");
        assert!(!stderr.contains("panicked"), "{flags:?} panicked:\n{stderr}");
        assert!(stderr.contains(expected), "{flags:?}: expected `{expected}` in:\n{stderr}");
    }
}

/// `--tensor-parallel 2` on the CPU runs the same tests through a two-rank group; the roofline
/// then counts two ranks' bandwidth; a group that cannot split the model fails with the reason.
#[test]
fn bench_with_two_tensor_parallel_ranks_reports_them() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let model = golden_llama();
    let args = ["bench", "--model", &model, "-p", "16", "-n", "4", "--reps", "1", "--copy-mib", "16", "--tensor-parallel", "2", "--json"];
    let (ok, stdout, stderr) = hearth(&[&args[..], &[json_path.to_str().unwrap()]].concat());
    assert!(ok, "hearth bench --tensor-parallel 2 failed:\n{stderr}");
    assert!(stdout.contains("| tg4 ") && stdout.contains("× 2 ranks"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(report["settings"]["tensor_parallel"], 2);
    assert!(report["results"].as_array().unwrap().iter().all(|r| r["tokens_per_second_mean"].as_f64().unwrap() > 0.0), "{report}");

    // The golden llama has 2 KV heads: 4 ranks cannot split them.
    let (ok, _, stderr) = hearth(&["bench", "--model", &model, "-p", "16", "-n", "none", "--tensor-parallel", "4", "--copy-mib", "16"]);
    assert!(!ok && stderr.contains("key/value heads are not divisible by 4"), "{stderr}");
}
