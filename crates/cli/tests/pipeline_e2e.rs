//! End to end through real processes on loopback: `hearth stage` workers and a `hearth serve
//! --stages …` coordinator answer OpenAI completions exactly like one `hearth serve` (greedy
//! text and per-token logprobs) on golden GGUF models (their tokenizers ride in the files), with
//! 2 remote stages and with 3 stages (stage 0 in the coordinator). A stage process killed with
//! SIGKILL makes the next request fail promptly with an error naming the stage, not hang.
//! `hearth bench --stages` runs through a stage process. `--pipeline-peers` lets the planner
//! place the layers on stages started without `--layers`, and `--prefill-node` splits prefill
//! from decode, both with the same output.
//!
//! Every wait is bounded; children are killed when their handles drop.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod pipeline_support;
use pipeline_support::*;

const COMPLETION: &str = r#"{"model": "model", "prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0, "logprobs": 1}"#;

fn completion(port: u16, server: &Process) -> serde_json::Value {
    let (status, text) = http(port, "POST", "/v1/completions", Some(COMPLETION)).unwrap();
    assert_eq!(status, 200, "{text}\n{}", server.stderr());
    serde_json::from_str(&text).unwrap()
}

fn text_and_logprobs(value: &serde_json::Value) -> (String, Vec<f64>) {
    let choice = &value["choices"][0];
    let logprobs = choice["logprobs"]["token_logprobs"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect();
    (choice["text"].as_str().unwrap().to_string(), logprobs)
}

fn assert_same_completion(model: &str, stages_arg: &str, processes: &[Process]) -> f64 {
    let (single_server, single_port) = start_server(model, &[]);
    let (want_text, want_logprobs) = text_and_logprobs(&completion(single_port, &single_server));
    drop(single_server);
    let (pipeline_server, pipeline_port) = start_server(model, &["--stages", stages_arg]);
    let (got_text, got_logprobs) = text_and_logprobs(&completion(pipeline_port, &pipeline_server));
    let stage_logs = || processes.iter().map(Process::stderr).collect::<Vec<_>>().join("\n---\n");
    assert_eq!(got_text, want_text, "greedy text differs; stage logs:\n{}", stage_logs());
    assert_eq!(got_logprobs.len(), 12);
    let max_diff = got_logprobs.iter().zip(&want_logprobs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(max_diff <= 1e-5, "logprobs differ by {max_diff}: {got_logprobs:?} vs {want_logprobs:?}");
    max_diff
}

#[test]
fn two_and_three_stage_processes_serve_the_single_process_completion() {
    let llama = golden_gguf("llama");
    let (first, first_address) = start_stage(&llama, "0..1");
    let (last, last_address) = start_stage(&llama, "1..2");
    let stages = format!("{first_address}=0..1,{last_address}=1..2");
    let diff = assert_same_completion(&llama, &stages, &[first, last]);
    eprintln!("llama, 2 stage processes: max logprob diff {diff:e}");

    let gemma = golden_gguf("gemma3");
    let (middle, middle_address) = start_stage(&gemma, "2..4");
    let (last, last_address) = start_stage(&gemma, "4..6");
    let stages = format!("local=0..2,{middle_address}=2..4,{last_address}=4..6");
    let diff = assert_same_completion(&gemma, &stages, &[middle, last]);
    eprintln!("gemma3, stage 0 in the coordinator + 2 stage processes: max logprob diff {diff:e}");
}

#[test]
fn a_killed_stage_process_fails_requests_promptly_naming_the_stage() {
    let llama = golden_gguf("llama");
    let (first, first_address) = start_stage(&llama, "0..1");
    let (mut last, last_address) = start_stage(&llama, "1..2");
    let (server, port) = start_server(&llama, &["--stages", &format!("{first_address}=0..1,{last_address}=1..2")]);
    completion(port, &server);
    last.kill();
    let started = Instant::now();
    let (status, text) = http(port, "POST", "/v1/completions", Some(COMPLETION)).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("pipeline stage 1 (layers 1..2") && text.contains(&last_address), "{text}");
    assert!(elapsed < Duration::from_secs(5), "the failure took {elapsed:?}: {text}");
    eprintln!("killed stage reported in {elapsed:?}: {text}");
    // The server itself stays up and says so.
    assert!(matches!(http(port, "GET", "/health", None), Ok((200, _))), "{}", server.stderr());
    drop(first);
}

#[test]
fn a_coordinator_with_the_wrong_key_or_a_gap_in_the_layers_is_refused_at_startup() {
    let llama = golden_gguf("llama");
    let (_first, first_address) = start_stage(&llama, "0..1");
    let run = |extra: &[&str], key: &str| {
        let port = free_port().to_string();
        let mut args = vec!["serve", "--model", llama.as_str(), "--port", port.as_str(), "--kv-memory", "64MiB"];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_hearth")).args(&args).env("HEARTH_CLUSTER_KEY", key).stdin(Stdio::null()).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let gap = run(&["--stages", &format!("{first_address}=0..1,local=2..2")], KEY);
    assert!(gap.contains("contiguous"), "{gap}");
    let wrong_key = run(&["--stages", &format!("{first_address}=0..1,local=1..2")], "some other cluster's key entirely");
    assert!(wrong_key.contains("pipeline stage 0") && wrong_key.contains("cannot connect") && wrong_key.contains("key"), "{wrong_key}");
}

#[test]
fn bench_runs_through_stage_processes() {
    let llama = golden_gguf("llama");
    let (_last, last_address) = start_stage(&llama, "1..2");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let stages = format!("local=0..1,{last_address}=1..2");
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["bench", "--model", &llama, "-p", "8", "-n", "4", "-r", "1", "--warmup", "0", "--copy-mib", "16"])
        .args(["--stages", &stages, "--json", json.to_str().unwrap()])
        .env("HEARTH_CLUSTER_KEY", KEY)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("pipeline stage 1: layers 1..2 at"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let tests: Vec<&str> = report["results"].as_array().unwrap().iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp8", "tg4"]);
    assert!(report["results"][1]["tokens_per_second_mean"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_planner_places_layers_on_stages_started_without_layers() {
    // Each stage offers 2 MiB (1.8 usable); the gemma3 fixture needs 2.6 MiB with its F32 KV
    // cache for 512 tokens, and the coordinator offers none: the plan must split the model over
    // both peers.
    let gemma = golden_gguf("gemma3");
    let offer = ["--memory", "2MiB", "--memory-bandwidth-gbps", "10"];
    let (first, first_address) = start_stage_with(&gemma, &offer);
    let (second, second_address) = start_stage_with(&gemma, &offer);
    let peers = format!("{first_address},{second_address}");
    let (single_server, single_port) = start_server(&gemma, &[]);
    let (want_text, want_logprobs) = text_and_logprobs(&completion(single_port, &single_server));
    drop(single_server);
    let (server, port) = start_server(&gemma, &["--pipeline-peers", &peers, "--coordinator-memory", "0"]);
    let (got_text, got_logprobs) = text_and_logprobs(&completion(port, &server));
    let log = server.stderr();
    assert!(log.contains("plan: 2-stage pipeline predicted"), "{log}");
    assert!(log.contains("pipeline stage 1: layers"), "{log}");
    assert_eq!(got_text, want_text, "greedy text differs; coordinator log:\n{log}\nstages:\n{}\n{}", first.stderr(), second.stderr());
    let max_diff = got_logprobs.iter().zip(&want_logprobs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(max_diff <= 1e-5, "logprobs differ by {max_diff}");
    eprintln!("planned pipeline: {}", log.lines().filter(|l| l.starts_with("plan:") || l.starts_with("pipeline stage")).collect::<Vec<_>>().join(" | "));

    // A stage started with fixed layers cannot be planned around.
    let (_fixed, fixed_address) = start_stage(&gemma, "0..6");
    let port = free_port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--model", &gemma, "--port", &port, "--pipeline-peers", &fixed_address, "--coordinator-memory", "0"])
        .env("HEARTH_CLUSTER_KEY", KEY)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("was started with --layers 0..6"), "{stderr}");
}

#[test]
fn split_prefill_and_decode_serve_the_single_process_completion() {
    let gemma = golden_gguf("gemma3");
    let (single_server, single_port) = start_server(&gemma, &[]);
    let (want_text, want_logprobs) = text_and_logprobs(&completion(single_port, &single_server));
    drop(single_server);

    // Every fresh prompt on the prefill node.
    let (prefill, prefill_address) = start_stage(&gemma, "0..6");
    let (server, port) = start_server(&gemma, &["--prefill-node", &prefill_address, "--prefill-min-tokens", "1"]);
    let (got_text, got_logprobs) = text_and_logprobs(&completion(port, &server));
    let log = server.stderr();
    assert!(log.contains(&format!("prompts of 1+ tokens with nothing cached are computed at {prefill_address}")), "{log}");
    assert_eq!(got_text, want_text, "greedy text differs; log:\n{log}\nprefill node:\n{}", prefill.stderr());
    let max_diff = got_logprobs.iter().zip(&want_logprobs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(max_diff <= 1e-4, "logprobs differ by {max_diff}");
    eprintln!("split prefill/decode: max logprob diff {max_diff:e}");
    drop(server);
    drop(prefill);

    // The planner picks the threshold from what the prefill node offers.
    let (_planned, planned_address) =
        start_stage_with(&gemma, &["--memory", "1GiB", "--memory-bandwidth-gbps", "10", "--tflops", "0.1"]);
    let (server, port) = start_server(&gemma, &["--prefill-node", &planned_address]);
    let (got_text, _) = text_and_logprobs(&completion(port, &server));
    let log = server.stderr();
    assert!(log.contains(&format!("plan: prefill on {planned_address}")), "{log}");
    assert_eq!(got_text, want_text, "{log}");
    eprintln!("{}", log.lines().filter(|l| l.starts_with("plan:") || l.starts_with("split")).collect::<Vec<_>>().join(" | "));
}
