//! `hearth plan` through the binary, on described hardware (no measurement, so the output is
//! deterministic): the golden Llama fixture on an H100 + RTX 4090 (a single node, the split
//! refused), Llama-3-70B at Q4_K_M over two RTX 4090s (a pipeline: GeForce cards are too
//! slowly joined for tensor parallelism), Llama-3-70B on one machine with two NVLinked H100s
//! (tensor parallel) against two separate H100 machines (a pipeline), and clear errors.

use std::process::Command;

fn hearth(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn golden_llama() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/llama/model.gguf");
    path.to_str().unwrap().to_string()
}

#[test]
fn golden_model_on_described_hardware_stays_on_the_fastest_node() {
    let model = golden_llama();
    let (ok, stdout, stderr) =
        hearth(&["plan", "--model", &model, "--hardware", "h100-sxm,rtx-4090"]);
    assert!(ok, "{stderr}");
    for expected in [
        "placement   single node",
        "  0     h100-sxm             0..2 ",
        "refused 2-stage split: predicted",
        "tok/s on h100-sxm alone, and the model fits there",
        "quantization (highest quality that fits: bf16)",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }

    let (ok, stdout, stderr) = hearth(&[
        "plan",
        "--model",
        &model,
        "--hardware",
        "h100-sxm,rtx-4090",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let plan = &report["plan"];
    assert_eq!(plan["placement"]["kind"], "single_node");
    assert_eq!(plan["placement"]["stage"]["node_name"], "h100-sxm");
    assert_eq!(
        plan["placement"]["stage"]["layers"],
        serde_json::json!({"start": 0, "end": 2})
    );
    // The fixture: 2 layers, 2 KV heads of 16, BF16 KV on a GPU; context 512 (the model's).
    assert_eq!(report["model"]["kv_bytes_per_token"], 2 * 2 * 2 * 16 * 2);
    assert_eq!(report["options"]["context_tokens"], 512);
    assert_eq!(report["nodes_are_this_machine"], false);
    let tokens_per_second = plan["prediction"]["tokens_per_second"].as_f64().unwrap();
    let seconds_per_token = plan["prediction"]["seconds_per_token"].as_f64().unwrap();
    assert!((tokens_per_second * seconds_per_token - 1.0).abs() < 1e-9);
    assert_eq!(report["quantization"]["chosen"], "bf16");
    assert_eq!(report["prefill_split"]["decode_node"], "h100-sxm");
}

#[test]
fn seventy_b_over_two_gaming_gpus_is_a_two_stage_pipeline() {
    let (ok, stdout, stderr) = hearth(&[
        "plan",
        "--shape",
        "llama3-70b",
        "--quant",
        "q4_k_m",
        "--hardware",
        "2xrtx-4090",
        "--ctx",
        "4096",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let placement = &report["plan"]["placement"];
    assert_eq!(placement["kind"], "pipeline");
    let stages = placement["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0]["layers"]["start"], 0);
    assert_eq!(stages[0]["layers"]["end"], stages[1]["layers"]["start"]);
    assert_eq!(stages[1]["layers"]["end"], 80);
    for stage in stages {
        assert!(
            stage["memory_bytes"].as_u64().unwrap()
                <= stage["usable_memory_bytes"].as_u64().unwrap()
        );
    }
    let reasons = report["reasons"].as_array().unwrap();
    assert!(
        reasons.iter().any(|r| r
            .as_str()
            .unwrap()
            .starts_with("no single node holds the model")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r
            .as_str()
            .unwrap()
            .starts_with("no tensor parallelism on 2xrtx-4090: its GPUs are joined at 12.00 GB/s")),
        "{reasons:?}"
    );
}

#[test]
fn seventy_b_on_two_nvlinked_h100s_is_tensor_parallel() {
    let (ok, stdout, stderr) = hearth(&[
        "plan",
        "--shape",
        "llama3-70b",
        "--hardware",
        "2xh100-sxm",
        "--ctx",
        "4096",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["hosts"][0]["name"], "2xh100-sxm");
    assert_eq!(report["hosts"][0]["nodes"], serde_json::json!([0, 1]));
    let placement = &report["plan"]["placement"];
    assert_eq!(placement["kind"], "tensor_parallel", "{stdout}");
    assert_eq!(placement["host"], "2xh100-sxm");
    assert_eq!(placement["all_reduces_per_token"], 160);
    assert_eq!(placement["interconnect"]["bandwidth_bytes_per_s"], 450e9);
    let ranks = placement["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 2);
    for (idx, rank) in ranks.iter().enumerate() {
        assert_eq!(rank["rank"], idx);
        assert_eq!(rank["attention_heads"], 32);
        assert_eq!(rank["kv_heads"], 4);
        assert!(rank["memory_bytes"].as_u64().unwrap() <= rank["usable_memory_bytes"].as_u64().unwrap());
    }
    let prediction = &report["plan"]["prediction"];
    assert!(prediction["link_seconds_per_token"].as_f64().unwrap() > 0.0);
    let tensor_parallel = prediction["tokens_per_second"].as_f64().unwrap();
    let reasons = report["reasons"].to_string();
    assert!(
        reasons.contains("tensor parallel over 2 GPUs of 2xh100-sxm: link 450 GB/s makes the 160 all-reduces per token cost"),
        "{reasons}"
    );
    assert!(reasons.contains("the best pipeline would be"), "{reasons}");

    // The same GPUs as two machines over 10 GbE: a pipeline, slower, and no tensor parallelism.
    let (ok, stdout, stderr) = hearth(&[
        "plan",
        "--shape",
        "llama3-70b",
        "--quant",
        report["quantization"]["chosen"].as_str().unwrap(),
        "--hardware",
        "h100-sxm,h100-sxm",
        "--ctx",
        "4096",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let separate: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(separate["plan"]["placement"]["kind"], "pipeline", "{stdout}");
    assert_eq!(separate["hosts"], serde_json::json!([]));
    assert!(!separate["reasons"].to_string().contains("tensor parallel"));
    let pipeline = separate["plan"]["prediction"]["tokens_per_second"].as_f64().unwrap();
    assert!(tensor_parallel > pipeline, "{tensor_parallel} vs {pipeline}");

    // The table shows the ranks and the collectives.
    let (ok, text, stderr) = hearth(&["plan", "--shape", "llama3-70b", "--hardware", "2xh100-sxm", "--ctx", "4096"]);
    assert!(ok, "{stderr}");
    assert!(text.contains("host        2xh100-sxm: h100-sxm#1, h100-sxm#2 on one machine, joined at 450 GB/s"), "{text}");
    assert!(text.contains("placement   tensor parallel x2"), "{text}");
    assert!(text.contains("all-reduces          160/token"), "{text}");
    assert!(text.contains("why         no single node holds the model"), "{text}");
}

#[test]
fn a_tiny_model_on_two_nvlinked_gpus_refuses_tensor_parallelism() {
    let model = golden_llama();
    let (ok, stdout, stderr) = hearth(&["plan", "--model", &model, "--hardware", "2xh100-sxm", "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["plan"]["placement"]["kind"], "single_node", "{stdout}");
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("refused tensor parallel over 2 GPUs of 2xh100-sxm"), "{reasons}");
}

#[test]
fn bad_plan_arguments_are_clear_errors() {
    let (ok, _, stderr) = hearth(&["plan", "--shape", "llama3-8b", "--hardware", "tpu-v9"]);
    assert!(
        !ok && stderr.contains("unknown hardware `tpu-v9`") && stderr.contains("h100-sxm"),
        "{stderr}"
    );
    let (ok, _, stderr) = hearth(&[
        "plan",
        "--shape",
        "llama3-8b",
        "--nodes",
        "box:mem=24GiB,tflops=100",
    ]);
    assert!(!ok && stderr.contains("`bw=` is missing"), "{stderr}");
    let (ok, _, stderr) = hearth(&["plan", "--shape", "gpt-9", "--hardware", "l4"]);
    assert!(
        !ok && stderr.contains("unknown --shape `gpt-9`"),
        "{stderr}"
    );
    let (ok, _, stderr) = hearth(&[
        "plan",
        "--shape",
        "llama3-8b",
        "--hardware",
        "l4",
        "--ctx",
        "100000",
    ]);
    assert!(
        !ok && stderr.contains("exceeds the model's context length (8192)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn a_placement_given_with_stages_is_predicted_not_searched_or_refused() {
    let model = golden_llama();
    let (ok, stdout, stderr) = hearth(&[
        "plan", "--model", &model, "--hardware", "h100-sxm,h100-sxm", "--stages", "0..1,1..2", "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let stages = report["plan"]["placement"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{stdout}");
    assert_eq!(stages[1]["layers"], serde_json::json!({"start": 1, "end": 2}));
    assert!(report["plan"]["prediction"]["link_seconds_per_token"].as_f64().unwrap() > 0.0);
    assert!(report["reasons"].to_string().contains("placement given by --stages"), "{stdout}");

    let (ok, _, stderr) = hearth(&["plan", "--model", &model, "--hardware", "h100-sxm", "--stages", "0..1,2..2"]);
    assert!(!ok && stderr.contains("contiguously"), "{stderr}");
    let (ok, _, stderr) = hearth(&["plan", "--model", &model, "--hardware", "h100-sxm,l4", "--stages", "0..1,1..1,1..2"]);
    assert!(!ok && stderr.contains("3 stages for 2 nodes"), "{stderr}");
}
