//! Processes and HTTP for the pipeline tests through real `hearth` processes on loopback
//! (`pipeline_e2e.rs`, `pipeline_replan.rs`): every wait bounded, children killed on drop.
#![allow(dead_code)] // each test binary uses its own subset

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const KEY: &str = "pipeline end-to-end test key 0123456789";
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub fn golden_gguf(arch: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden").join(arch).join("model.gguf");
    path.canonicalize().unwrap().to_str().unwrap().to_string()
}

/// A child process, killed on drop; stderr kept in a temporary file for failure messages.
pub struct Process {
    pub child: Child,
    dir: tempfile::TempDir,
}

impl Process {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn spawn(args: &[&str], stdout: Stdio) -> Process {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_CLUSTER_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    Process { child, dir }
}

/// Starts `hearth stage` for `layers` on an ephemeral loopback port; returns it and its address
/// (read from its first stdout line, bounded).
pub fn start_stage(model: &str, layers: &str) -> (Process, String) {
    start_stage_with(model, &["--layers", layers])
}

pub fn start_stage_with(model: &str, extra: &[&str]) -> (Process, String) {
    start_stage_at(model, "127.0.0.1:0", extra)
}

/// `hearth stage` listening on `listen` (e.g. a port an earlier stage had) with `extra` flags.
pub fn start_stage_at(model: &str, listen: &str, extra: &[&str]) -> (Process, String) {
    let layers = extra.join(" ");
    let mut args = vec!["stage", "--model", model, "--listen", listen, "--kv-memory", "256MiB"];
    args.extend_from_slice(extra);
    let mut stage = spawn(&args, Stdio::piped());
    let stdout = stage.child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver.recv_timeout(STARTUP_TIMEOUT).unwrap_or_default();
    let Some(address) = line.trim().rsplit_once("listening on ").map(|(_, a)| a.to_string()) else {
        panic!("hearth stage {layers} did not announce its address (got {line:?}); stderr:\n{}", stage.stderr());
    };
    (stage, address)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `hearth serve` with `extra` arguments and waits (bounded) for `/health`.
pub fn start_server(model: &str, extra: &[&str]) -> (Process, u16) {
    let port = free_port();
    let port_text = port.to_string();
    let mut args = vec!["serve", "--model", model, "--host", "127.0.0.1", "--port", &port_text, "--kv-memory", "64MiB"];
    args.extend_from_slice(extra);
    let mut server = spawn(&args, Stdio::null());
    let started = Instant::now();
    while started.elapsed() < STARTUP_TIMEOUT {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("hearth serve {extra:?} exited with {status}; stderr:\n{}", server.stderr());
        }
        if matches!(http(port, "GET", "/health", None), Ok((200, _))) {
            return (server, port);
        }
        sleep(Duration::from_millis(100));
    }
    panic!("hearth serve {extra:?} was not healthy within {STARTUP_TIMEOUT:?}; stderr:\n{}", server.stderr());
}

pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(invalid)?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(invalid)?;
    Ok((status, body.to_string()))
}
