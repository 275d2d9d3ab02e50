//! Helpers for the cluster CLI tests: `hearth` child processes (optionally inside a network
//! namespace) whose stdout lines are collected, commands run to completion with a time limit,
//! and bounded polling. Every child is killed when its handle drops; every wait is bounded.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const KEY: &str = "cli-cluster-test-key-0123456789";
/// Short heartbeats so the tests finish in seconds; the timeout leaves room for a loaded CI.
pub const HEARTBEAT_INTERVAL_MS: &str = "200";
pub const HEARTBEAT_TIMEOUT_MS: &str = "1500";
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1500);
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn hearth_binary() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

/// Where a command runs: on this host, or inside a network namespace.
#[derive(Clone, Debug)]
pub enum Place {
    Host,
    Namespace(String),
}

impl Place {
    fn command(&self) -> Command {
        match self {
            Place::Host => Command::new(hearth_binary()),
            Place::Namespace(name) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", name, hearth_binary()]);
                command
            }
        }
    }
}

/// A `hearth` command with a clean environment: no inherited key or LeaderWorkerSet variables,
/// `HEARTH_HOME` in `home`, the key in `HEARTH_CLUSTER_KEY` when given.
pub fn hearth(place: &Place, home: &Path, args: &[&str], key: Option<&str>) -> Command {
    let mut command = place.command();
    command.args(args);
    for name in [
        "HEARTH_CLUSTER_KEY",
        "LWS_LEADER_ADDRESS",
        "LWS_WORKER_INDEX",
        "LWS_GROUP_SIZE",
    ] {
        command.env_remove(name);
    }
    command.env("HEARTH_HOME", home).env("HEARTH_LOG", "warn");
    if let Some(key) = key {
        command.env("HEARTH_CLUSTER_KEY", key);
    }
    command
}

/// A long-running `hearth` child; killed on drop.
pub struct Process {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Self {
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        {
            let lines = Arc::clone(&lines);
            // Ends when the child's stdout closes (the child exits or is killed).
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Self {
            name: name.to_string(),
            child,
            lines,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stdout line containing `needle`, waiting up to `limit`.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.contains(needle))
            {
                return Some(line.clone());
            }
            if Instant::now() >= deadline || self.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// (node id, listen address) from the "hearth <role> <id> listening on <addr>" line.
    pub fn identity(&mut self) -> (String, SocketAddr) {
        let line = self
            .wait_for_line("listening on", PATIENCE)
            .unwrap_or_else(|| {
                panic!(
                    "{} never said where it listens:\n{}",
                    self.name,
                    self.output()
                )
            });
        let words: Vec<&str> = line.split_whitespace().collect();
        let address = words.last().unwrap().parse().unwrap();
        (words[2].to_string(), address)
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn output(&self) -> String {
        let stdout = self.lines.lock().unwrap().join("\n");
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!(
            "--- {} stdout ---\n{stdout}\n--- {} stderr ---\n{stderr}",
            self.name, self.name
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion, killing it after `limit`.
pub fn run_bounded(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    panic!(
        "{command:?} ran longer than {limit:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `hearth cluster status --json` against `coordinator`; `None` when it fails.
pub fn status_json(
    place: &Place,
    home: &Path,
    coordinator: &str,
    key: &str,
) -> Option<serde_json::Value> {
    let command = hearth(
        place,
        home,
        &[
            "cluster",
            "status",
            "--coordinator",
            coordinator,
            "--json",
            "--no-mdns",
            "--timeout-ms",
            "2000",
        ],
        Some(key),
    );
    let output = run_bounded(command, Duration::from_secs(15));
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// The node entry with `node_id` in a status.
pub fn node<'a>(status: &'a serde_json::Value, node_id: &str) -> Option<&'a serde_json::Value> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|node| node["node_id"] == node_id)
}

pub fn alive_ids(status: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|node| node["state"] == "alive")
                .filter_map(|node| node["node_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Polls `check` every 100 ms until it returns `Some` or `limit` passes.
pub fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Arguments of a coordinator or node with the tests' timings, no mDNS unless asked.
pub fn node_args<'a>(
    base: &[&'a str],
    state_dir: &'a str,
    listen: &'a str,
    mdns: bool,
) -> Vec<&'a str> {
    let mut args = base.to_vec();
    args.extend([
        "--listen",
        listen,
        "--state-dir",
        state_dir,
        "--memory-bandwidth-gbps",
        "10",
        "--heartbeat-interval-ms",
        HEARTBEAT_INTERVAL_MS,
        "--heartbeat-timeout-ms",
        HEARTBEAT_TIMEOUT_MS,
    ]);
    if !mdns {
        args.push("--no-mdns");
    }
    args
}
