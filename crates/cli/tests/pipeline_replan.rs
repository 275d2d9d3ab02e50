//! Re-planning a planned pipeline through real processes on loopback: three `hearth stage` peers
//! started without `--layers` (each offers too little memory to hold the golden gemma3 model
//! alone, any two hold it) and a `hearth serve --pipeline-peers` coordinator holding no layers.
//!
//! - A used stage killed: the request that meets it fails naming it, the coordinator re-plans
//!   over the peers that answer, and the next request gets the single process's greedy text.
//! - Another used stage killed: one peer cannot hold the model, so requests fail with the
//!   planner's reason and the server stays up; the first killed peer restarted at its address
//!   is used again at a later step's re-plan and the same text comes back.
//!
//! Every wait is bounded; children are killed when their handles drop.

use std::thread::sleep;
use std::time::{Duration, Instant};

mod pipeline_support;
use pipeline_support::*;

const REJOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Each peer offers 2 MiB (1.8 usable); the model needs 2.6 MiB with its KV cache.
const OFFER: [&str; 4] = ["--memory", "2MiB", "--memory-bandwidth-gbps", "10"];
const COMPLETION: &str = r#"{"model": "model", "prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0}"#;

fn golden_gemma() -> String {
    golden_gguf("gemma3")
}

/// `hearth stage` without `--layers` on `listen`; returns it and its address (read from its
/// first stdout line, bounded).
fn start_peer(model: &str, listen: &str) -> (Process, String) {
    start_stage_at(model, listen, &OFFER)
}

fn complete(port: u16) -> (u16, String) {
    let (status, body) = http(port, "POST", "/v1/completions", Some(COMPLETION)).unwrap();
    if status != 200 {
        return (status, body);
    }
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    (status, value["choices"][0]["text"].as_str().unwrap().to_string())
}

/// The addresses of the remote stages in the coordinator's latest placement lines
/// (`pipeline stage K: layers A..B at ADDRESS`), in stage order.
fn placed_addresses(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().filter(|line| line.starts_with("pipeline stage ")).collect();
    let last_start = lines.iter().rposition(|line| line.starts_with("pipeline stage 0:")).unwrap_or(0);
    lines[last_start..].iter().filter_map(|line| line.rsplit_once(" at ").map(|(_, address)| address.to_string())).collect()
}

#[test]
fn a_gone_stage_is_planned_around_and_a_returning_peer_restores_service() {
    let gemma = golden_gemma();
    let (single, single_port) = start_server(&gemma, &[]);
    let (status, want) = complete(single_port);
    assert_eq!(status, 200, "{want}\n{}", single.stderr());
    drop(single);

    let mut peers: Vec<(Process, String)> = (0..3).map(|_| start_peer(&gemma, "127.0.0.1:0")).collect();
    let peer_list = peers.iter().map(|(_, address)| address.as_str()).collect::<Vec<_>>().join(",");
    let (server, port) = start_server(&gemma, &["--pipeline-peers", &peer_list, "--coordinator-memory", "0"]);
    let placed = placed_addresses(&server.stderr());
    assert!(placed.len() >= 2, "expected a pipeline over at least two peers:\n{}", server.stderr());
    assert_eq!(complete(port), (200, want.clone()), "{}", server.stderr());

    // A used stage dies: the request that meets it fails naming it, then the model is placed
    // over the peers that answer.
    let first_gone = placed[1].clone();
    let first_idx = peers.iter().position(|(_, address)| *address == first_gone).unwrap();
    peers[first_idx].0.kill();
    let started = Instant::now();
    let (status, error) = complete(port);
    assert_eq!(status, 500, "{error}");
    assert!(error.contains(&first_gone) && error.contains("gone") && error.contains("re-planned"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(15), "the failure took {:?}", started.elapsed());
    let log = server.stderr();
    let replaced = placed_addresses(&log);
    assert!(!replaced.contains(&first_gone) && replaced.len() >= 2, "re-planned placement {replaced:?}:\n{log}");
    assert_eq!(complete(port), (200, want.clone()), "after the re-plan:\n{}", server.stderr());

    // A second used stage dies: the last peer alone cannot hold the model.
    let second_gone = replaced[0].clone();
    let second_idx = peers.iter().position(|(_, address)| *address == second_gone).unwrap();
    peers[second_idx].0.kill();
    let (status, error) = complete(port);
    assert_eq!(status, 500, "{error}");
    assert!(error.contains(&second_gone) && error.contains("no placement fits"), "{error}");
    let (status, error) = complete(port);
    assert_eq!(status, 500, "{error}");
    assert!(error.contains("no pipeline placement"), "{error}");
    assert!(matches!(http(port, "GET", "/health", None), Ok((200, _))), "{}", server.stderr());

    // The first peer comes back at its address: a later step's re-plan uses it again.
    peers[first_idx] = start_peer(&gemma, &first_gone);
    let started = Instant::now();
    let restored = loop {
        let (status, text) = complete(port);
        if status == 200 || started.elapsed() > REJOIN_TIMEOUT {
            break (status, text);
        }
        sleep(Duration::from_millis(500));
    };
    let log = server.stderr();
    assert_eq!(restored, (200, want), "the returning peer did not restore service within {REJOIN_TIMEOUT:?}:\n{log}");
    assert!(placed_addresses(&log).contains(&first_gone), "the returning peer is not in the placement:\n{log}");
    eprintln!("re-plan log:\n{}", log.lines().filter(|l| l.contains("plan") || l.starts_with("pipeline stage")).collect::<Vec<_>>().join("\n"));
}
