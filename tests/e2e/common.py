"""Shared helpers of hearth's end-to-end scripts (tests/e2e/*.py).

Each script is plain Python run with the venv of scripts/python-env.sh, takes the server's base
URL (e.g. http://127.0.0.1:8080) as its first argument, prints what it checks, and exits
non-zero with a readable message on the first failure. Every wait is bounded in time.

Owns: argument parsing, the `check` assertion, curl-based raw HTTP, /metrics parsing and the
bounded wait for an idle server. Does not start or stop servers (the Rust test does).
"""

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

MODEL = "smollm2-135m-instruct"


class CheckFailed(Exception):
    pass


def check(condition, message):
    """Fails the script with `message` (a string or a callable giving one) unless `condition`."""
    if not condition:
        raise CheckFailed(message() if callable(message) else message)


def check_eq(got, want, what):
    check(got == want, lambda: f"{what}: expected {want!r}, got {got!r}")


def main(run):
    """Runs `run(base_url, *rest)` and turns failures into a message and exit status 1."""
    if len(sys.argv) < 2:
        print(f"usage: {sys.argv[0]} BASE_URL [ARGS...]", file=sys.stderr)
        sys.exit(2)
    base_url = sys.argv[1].rstrip("/")
    name = os.path.basename(sys.argv[0])
    started = time.monotonic()
    try:
        run(base_url, *sys.argv[2:])
    except CheckFailed as failure:
        print(f"FAILED {name}: {failure}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"ok {name} ({time.monotonic() - started:.1f} s)", flush=True)


def step(message):
    print(f"- {message}", flush=True)


def openai_client(base_url, api_key="unused", timeout=120.0):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=timeout)


def async_openai_client(base_url, api_key="unused", timeout=180.0):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=timeout)


class Response:
    def __init__(self, status, content_type, body):
        self.status = status
        self.content_type = content_type
        self.body = body

    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise CheckFailed(f"HTTP {self.status}: body is not JSON: {self.text()[:500]!r}")

    def __repr__(self):
        return f"HTTP {self.status} ({self.content_type}): {self.text()[:500]}"


def curl(base_url, method, path, body=None, headers=None, timeout=120):
    """One request through the `curl` binary. `body`: bytes, str, or an object sent as JSON."""
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    with tempfile.NamedTemporaryFile(prefix="hearth-e2e-") as out:
        cmd = ["curl", "-sS", "--max-time", str(timeout), "-X", method, "-o", out.name,
               "-w", "%{http_code}\n%{content_type}"]
        all_headers = {"Content-Type": "application/json"} if body is not None else {}
        all_headers.update(headers or {})
        for key, value in all_headers.items():
            cmd += ["-H", f"{key}: {value}"]
        if body is not None:
            cmd += ["--data-binary", "@-"]
        cmd.append(f"{base_url}{path}")
        done = subprocess.run(cmd, input=body or b"", capture_output=True, timeout=timeout + 10)
        written = done.stdout.decode().split("\n")
        status = int(written[0]) if written and written[0].isdigit() else 0
        check(status != 0, lambda: f"curl {method} {path} failed (exit {done.returncode}): {done.stderr.decode().strip()}")
        with open(out.name, "rb") as f:
            return Response(status, written[1] if len(written) > 1 else "", f.read())


def check_openai_error(response, status, what):
    """The response is an OpenAI-style error: the status and {"error": {message, type, param, code}}."""
    check(response.status == status, lambda: f"{what}: expected HTTP {status}, got {response!r}")
    check("json" in response.content_type, lambda: f"{what}: error content type is {response.content_type!r}, not JSON")
    body = response.json()
    check(isinstance(body, dict) and isinstance(body.get("error"), dict), lambda: f"{what}: no error object in {body!r}")
    error = body["error"]
    for key in ("message", "type", "param", "code"):
        check(key in error, lambda: f"{what}: error object lacks {key!r}: {error!r}")
    check(isinstance(error["message"], str) and error["message"], lambda: f"{what}: empty error message: {error!r}")
    check(isinstance(error["type"], str) and error["type"], lambda: f"{what}: error type is not a string: {error!r}")
    return error


def mentions(error, word):
    """The error names `word` in its param or message."""
    return word in str(error.get("param") or "") or word in error["message"]


def metrics(base_url):
    """GET /metrics as {name: value} for unlabelled samples (labelled ones keep their labels)."""
    response = curl(base_url, "GET", "/metrics", timeout=30)
    check(response.status == 200, lambda: f"/metrics: {response!r}")
    values = {}
    for line in response.text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^(\S+)\s+(\S+)", line)
        if match:
            try:
                values[match.group(1)] = float(match.group(2))
            except ValueError:
                pass
    return values


def metric(values, name):
    check(name in values, lambda: f"/metrics has no sample {name!r}; it has {sorted(values)[:40]}")
    return values[name]


def wait_until_idle(base_url, timeout=30.0, what="server"):
    """Polls /metrics until no request runs or waits and no KV block is used; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    last = {}
    while time.monotonic() < deadline:
        last = metrics(base_url)
        busy = [name for name in ("hearth_kv_blocks_used", "hearth_requests_running", "hearth_requests_waiting")
                if metric(last, name) != 0]
        if not busy:
            return last
        time.sleep(0.2)
    summary = {k: last.get(k) for k in ("hearth_kv_blocks_used", "hearth_requests_running", "hearth_requests_waiting")}
    raise CheckFailed(f"{what}: not idle {timeout:.0f} s later: {summary}")


WORDS = (
    "river stone lantern harbor meadow copper violet thunder orchard candle whisper granite "
    "falcon maple silver harvest compass ember glacier willow beacon saffron marble canyon "
    "ivory thistle cobalt prairie summit quarry lagoon juniper pebble cinder tundra mosaic "
    "garden bridge forest window mountain ocean village market winter summer autumn spring "
    "teacher doctor farmer sailor painter baker writer singer hunter weaver potter miner"
).split()


def words(count, seed):
    """`count` random words from a fixed list, reproducible for `seed`."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))
