//! End-to-end tests of `hearth serve`: each test starts the real binary with the default model
//! (SmolLM2-135M-Instruct from the store, `scripts/fetch-assets.sh`) on a free loopback port,
//! waits for `/health`, drives it with a script from `tests/e2e/` run by the venv's Python
//! (`scripts/python-env.sh`: the official `openai` client) or with raw HTTP, and stops it.
//!
//! Owns: starting/stopping servers, running the scripts with bounded time, the SIGTERM
//! behaviour. The HTTP assertions live in the scripts (each prints what it checks). Every wait
//! here is bounded; a failure prints the script's output and the server's stderr.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const KV_MEMORY: &str = "512MiB";
const HEALTH_TIMEOUT: Duration = Duration::from_secs(120);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn hearth_home() -> PathBuf {
    std::env::var_os("HEARTH_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME is not set")).join(".cache/hearth"))
}

/// The Python of the serving tests' venv, made by `scripts/python-env.sh`.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("HEARTH_SERVE_VENV").map(PathBuf::from).unwrap_or_else(|| hearth_home().join("venv-serve"));
    let python = venv.join("bin/python");
    assert!(python.exists(), "{} is missing: run scripts/python-env.sh (or scripts/setup.sh)", python.display());
    python
}

fn check_default_model() {
    let model = hearth_home().join("models/smollm2-135m-instruct.gguf");
    assert!(model.exists(), "{} is missing: run scripts/fetch-assets.sh", model.display());
}

/// A `hearth serve` child on a loopback port; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `hearth serve` with `extra` arguments and waits (bounded) until `/health` answers 200.
    fn start(extra: &[&str]) -> Server {
        check_default_model();
        const NUM_ATTEMPTS: usize = 3;
        for attempt in 1..=NUM_ATTEMPTS {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let port_text = port.to_string();
            let mut args = vec!["serve", "--host", "127.0.0.1", "--port", &port_text, "--kv-memory", KV_MEMORY];
            args.extend_from_slice(extra);
            let child = Command::new(env!("CARGO_BIN_EXE_hearth"))
                .args(&args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(File::create(dir.path().join("stdout")).unwrap())
                .stderr(File::create(dir.path().join("stderr")).unwrap())
                .spawn()
                .unwrap();
            let mut server = Server { child, port, dir };
            match server.wait_healthy() {
                Ok(()) => return server,
                // Another process took the port between our probe and the bind: try another.
                Err(stderr) if attempt < NUM_ATTEMPTS && stderr.to_lowercase().contains("address") => continue,
                Err(stderr) => panic!("hearth serve {args:?} did not become healthy:\n{stderr}"),
            }
        }
        unreachable!()
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < HEALTH_TIMEOUT {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("it exited with {status} during startup; stderr:\n{}", self.stderr()));
            }
            if matches!(http(self.port, "GET", "/health", None), Ok((200, _))) {
                return Ok(());
            }
            sleep(Duration::from_millis(100));
        }
        Err(format!("/health did not answer 200 within {HEALTH_TIMEOUT:?}; stderr:\n{}", self.stderr()))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        tail(&std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default(), 8000)
    }

    /// Waits (bounded) for the process to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        sleep(Duration::from_millis(50));
    }
    None
}

fn tail(text: &str, max_chars: usize) -> String {
    let num_chars = text.chars().count();
    if num_chars <= max_chars {
        return text.to_string();
    }
    let rest: String = text.chars().skip(num_chars - max_chars).collect();
    format!("[... {} characters cut ...]\n{rest}", num_chars - max_chars)
}

/// Runs `tests/e2e/SCRIPT BASE_URL ARGS` with the venv's Python against `server`, bounded in
/// time; fails with the script's output and the server's stderr unless it exits 0.
fn run_script(server: &Server, script: &str, args: &[&str]) {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("output");
    let output_file = File::create(&output).unwrap();
    let mut child = Command::new(venv_python())
        .arg(root.join("tests/e2e").join(script))
        .arg(server.url())
        .args(args)
        .current_dir(&root)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(output_file.try_clone().unwrap())
        .stderr(output_file)
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, SCRIPT_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let printed = std::fs::read_to_string(&output).unwrap_or_default();
    match status {
        Some(status) if status.success() => print!("{printed}"),
        Some(status) => panic!(
            "{script} failed ({status}):\n{}\n--- hearth serve stderr ---\n{}",
            tail(&printed, 12000),
            server.stderr()
        ),
        None => panic!(
            "{script} ran past {SCRIPT_TIMEOUT:?} and was killed:\n{}\n--- hearth serve stderr ---\n{}",
            tail(&printed, 12000),
            server.stderr()
        ),
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the whole body
/// (chunked transfer decoded).
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = send_request(port, method, path, body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn send_request(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    Ok(stream)
}

fn parse_response(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| invalid("no status"))?;
    let body = &raw[head_end + 4..];
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_vec() };
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

/// Decodes a chunked body, as far as it is complete.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else { break };
        if size == 0 || raw.len() < line_end + 2 + size {
            break;
        }
        body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[(line_end + 4 + size).min(raw.len())..];
    }
    body
}

fn sigterm(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("running `kill`");
    assert!(status.success(), "kill -TERM {pid} failed: {status}");
}

#[test]
fn openai_client_chat_and_completions_stream_sample_stop_logprobs_and_cache() {
    let server = Server::start(&[]);
    run_script(&server, "openai_api.py", &[]);
}

#[test]
fn invalid_requests_get_openai_style_errors_and_too_large_bodies_413() {
    let server = Server::start(&["--max-body-bytes", "65536"]);
    run_script(&server, "errors.py", &["65536"]);
}

#[test]
fn api_key_is_required_on_api_routes_when_configured() {
    let server = Server::start(&["--api-key", "e2e-secret-key"]);
    run_script(&server, "auth.py", &["e2e-secret-key"]);
}

#[test]
fn ollama_chat_generate_tags_show_and_version_work_streamed_and_not() {
    let server = Server::start(&[]);
    run_script(&server, "ollama.py", &[]);
}

#[test]
fn client_disconnect_mid_stream_frees_its_kv_blocks() {
    let server = Server::start(&[]);
    run_script(&server, "disconnect.py", &[]);
}

#[test]
fn sixty_four_concurrent_streams_complete_and_leave_no_blocks_used() {
    let server = Server::start(&[]);
    run_script(&server, "load.py", &["64"]);
}

/// Counts SSE `data:` events in a raw (possibly chunked) byte stream.
fn count_events(raw: &[u8]) -> usize {
    raw.windows(5).filter(|w| w == b"data:").count()
}

#[test]
fn sigterm_lets_a_running_stream_finish_then_exits_zero() {
    const MAX_TOKENS: usize = 160;
    let mut server = Server::start(&["--shutdown-timeout", "60"]);
    let body = format!(
        r#"{{"model":"smollm2-135m-instruct","prompt":"1, 2, 3, 4, 5,","max_tokens":{MAX_TOKENS},"temperature":0,"stream":true,"stream_options":{{"include_usage":true}}}}"#
    );
    let mut stream = send_request(server.port, "POST", "/v1/completions", Some(&body)).unwrap();

    // Read until a few tokens have arrived, so the request is running when the signal comes.
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while count_events(&raw) < 4 {
        assert!(started.elapsed() < Duration::from_secs(60), "no tokens within 60 s; got {:?}", String::from_utf8_lossy(&raw));
        let num_read = stream.read(&mut buf).unwrap();
        assert!(num_read > 0, "the stream ended early: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..num_read]);
    }
    let num_events_at_signal = count_events(&raw);
    sigterm(server.pid());
    let signalled = Instant::now();

    // New work is not accepted once shutdown began (refused connection, or an error status).
    sleep(Duration::from_millis(300));
    if let Ok((status, text)) = http(server.port, "POST", "/v1/completions", Some(r#"{"model":"smollm2-135m-instruct","prompt":"Hi","max_tokens":2}"#)) {
        assert_ne!(status, 200, "a new request was served after SIGTERM: {text}");
    }

    // The running request completes: every token, a finish reason, usage and [DONE].
    loop {
        assert!(signalled.elapsed() < Duration::from_secs(90), "the stream did not end within 90 s of SIGTERM");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(num_read) => raw.extend_from_slice(&buf[..num_read]),
            Err(e) => panic!("reading the stream after SIGTERM failed: {e}; so far {:?}", String::from_utf8_lossy(&raw)),
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    let (status, text) = parse_response(&raw).unwrap();
    assert_eq!(status, 200, "{text}");
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "the stream did not end with [DONE]:\n{}", tail(&text, 2000));
    // Greedy counting from 5 runs to max_tokens: the request is not cut short by the shutdown.
    let finish = events.iter().find_map(|e| {
        let value: serde_json::Value = serde_json::from_str(e).ok()?;
        value["choices"][0]["finish_reason"].as_str().map(str::to_string)
    });
    assert_eq!(finish.as_deref(), Some("length"), "finish_reason of the stream running through SIGTERM:\n{}", tail(&text, 2000));
    let usage = events.iter().find_map(|e| {
        let value: serde_json::Value = serde_json::from_str(e).ok()?;
        value["usage"]["completion_tokens"].as_u64()
    });
    assert_eq!(usage, Some(MAX_TOKENS as u64), "usage of the stream that ran through SIGTERM:\n{}", tail(&text, 2000));
    assert!(
        count_events(&raw) > num_events_at_signal + 20,
        "only {} events after SIGTERM (the request was already nearly done?)",
        count_events(&raw) - num_events_at_signal
    );

    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.is_some(), "hearth serve still runs 30 s after its last request finished; stderr:\n{}", server.stderr());
    let status = status.unwrap();
    assert!(status.success(), "hearth serve exited with {status} after SIGTERM; stderr:\n{}", server.stderr());
}

#[test]
fn sigterm_on_an_idle_server_exits_zero_promptly() {
    let mut server = Server::start(&[]);
    sigterm(server.pid());
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "an idle hearth serve still runs 10 s after SIGTERM; stderr:\n{}", server.stderr());
    let status = status.unwrap();
    assert!(status.success(), "hearth serve exited with {status} after SIGTERM; stderr:\n{}", server.stderr());
}

/// `hearth serve --tensor-parallel 2` on the CPU (two ranks on threads) answers like one
/// process: the same greedy completion and per-token logprobs within F32 tolerance, on the
/// golden llama GGUF (its tokenizer rides in the file). SmolLM2-135M's 9 heads / 3 KV heads
/// do not divide by 2, which the server refuses with the numbers.
#[test]
fn tensor_parallel_two_ranks_on_the_cpu_serve_the_single_process_completion() {
    let model = repo_root().join("tests/fixtures/golden/llama/model.gguf");
    let model = model.to_str().unwrap();
    let body = r#"{"model": "model", "prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0, "logprobs": 1}"#;
    let completion = |extra: &[&str]| -> serde_json::Value {
        let server = Server::start(&[&["--model", model], extra].concat());
        let (status, text) = http(server.port, "POST", "/v1/completions", Some(body)).unwrap();
        assert_eq!(status, 200, "{text}\n{}", server.stderr());
        serde_json::from_str(&text).unwrap()
    };
    let single = completion(&[]);
    let split = completion(&["--tensor-parallel", "2"]);
    let choice = |v: &serde_json::Value| v["choices"][0].clone();
    assert_eq!(choice(&split)["text"], choice(&single)["text"], "greedy text differs");
    let logprobs = |v: &serde_json::Value| -> Vec<f64> {
        choice(v)["logprobs"]["token_logprobs"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect()
    };
    let (a, b) = (logprobs(&single), logprobs(&split));
    assert_eq!(a.len(), 12);
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(max_diff < 1e-4, "logprobs differ by {max_diff}: {a:?} vs {b:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--port", "0", "--tensor-parallel", "2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("attention heads are not divisible by 2"), "{stderr}");
}
