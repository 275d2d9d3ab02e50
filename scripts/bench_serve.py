#!/usr/bin/env python3
"""Serving benchmark of `hearth serve` (a command, not a test): plain Python 3 (stdlib only, a
small asyncio HTTP/SSE client so the client's own cost stays low next to the server's).

Two workloads, both seeded:

1. throughput: for each concurrency N (default 1, 4, 16, 64), N clients each send
   --requests-per-client streamed requests one after another; each prompt is --input-len random
   words (a fresh random text per request, so no prefix is shared), max_tokens --output-len,
   temperature 1 with a per-request seed. There is no way in the OpenAI API to ignore EOS, so the
   actual number of generated tokens (usage.completion_tokens) is what is counted and reported.
   Reports aggregate generated tokens/s, requests/s, TTFT p50/p99 and TPOT (time per output
   token after the first) p50/p99.
2. agents: K agents share one long system prompt (--system-len words) and each grows its own
   conversation over T turns (user message of --turn-len words, reply of --agent-output-len
   tokens, appended to the history). Reports per turn the prefix-cache hit rate
   (sum cached_tokens / sum prompt_tokens from usage) and TTFT.

Prints a table and writes JSON (hardware from /proc/cpuinfo, git commit, settings, server's
model, results). Either point it at a running server (--url) or let it start one (--launch PATH
to the `hearth` binary; it passes --kv-memory and any --serve-arg, and stops it with SIGTERM).

  python3 scripts/bench_serve.py --launch target/release/hearth --kv-memory 1GiB
  python3 scripts/bench_serve.py --url http://127.0.0.1:8080 --concurrency 1,8 --output-len 64
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

WORDS = """
the of and to in is was he for it with as his on be at by had are but from or have an they
which one you were all her she there would their we him been has when who will no more if out
so up said what its about than into them can only other time new some could these two may first
then do any like my now over such our man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go
came right used take three river stone lantern harbor meadow copper violet thunder orchard candle
whisper granite falcon maple silver harvest compass ember glacier willow beacon saffron marble
canyon ivory thistle cobalt prairie summit quarry lagoon juniper pebble cinder tundra mosaic
garden bridge forest window mountain ocean village market winter summer autumn spring teacher
doctor farmer sailor painter baker writer singer hunter weaver potter miner engine signal
""".split()


def words(rng, count):
    return " ".join(rng.choice(WORDS) for _ in range(count))


def percentile(values, q):
    """Linear-interpolated percentile, q in [0, 100]; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


async def stream_request(url, path, body, api_key=None, timeout=600.0):
    """POSTs `body` with stream=true; returns (events, usage): events are (time, payload dict)
    for every SSE data event except [DONE]; usage is the include_usage chunk's usage."""
    parsed = urllib.parse.urlparse(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parsed.hostname, parsed.port or 80), 30)
    try:
        payload = json.dumps(body).encode()
        auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        head = (f"POST {path} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{auth}"
                f"Content-Length: {len(payload)}\r\n\r\n")
        writer.write(head.encode() + payload)
        await writer.drain()
        return await asyncio.wait_for(_read_sse(reader), timeout)
    finally:
        writer.close()


async def _read_sse(reader):
    status_line = await reader.readline()
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 else 0
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    if status != 200:
        rest = await reader.read()
        raise HttpError(status, rest.decode("utf-8", "replace"))

    events, usage, buffer = [], None, b""

    def feed(data):
        nonlocal buffer, usage
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            text = line[5:].strip()
            if text == b"[DONE]":
                continue
            event = json.loads(text)
            if "error" in event:
                raise HttpError(200, json.dumps(event))
            if event.get("usage"):
                usage = event["usage"]
            events.append((time.perf_counter(), event))

    if chunked:
        while True:
            size_line = await reader.readline()
            if not size_line:
                break
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            feed(await reader.readexactly(size))
            await reader.readexactly(2)
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            feed(data)
    return events, usage


def event_text(event):
    text = ""
    for choice in event.get("choices") or []:
        text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return text


def event_finished(event):
    return any(choice.get("finish_reason") for choice in event.get("choices") or [])


async def timed_request(args, api, prompt_or_messages, max_tokens, seed):
    """One streamed request; returns a record with ttft, tpot, latency, token counts and text."""
    if api == "chat":
        path = "/v1/chat/completions"
        body = {"model": args.model, "messages": prompt_or_messages}
    else:
        path = "/v1/completions"
        body = {"model": args.model, "prompt": prompt_or_messages}
    body.update(max_tokens=max_tokens, temperature=args.temperature, seed=seed, stream=True,
                stream_options={"include_usage": True})
    started = time.perf_counter()
    events, usage = await stream_request(args.url, path, body, args.api_key)
    ended = time.perf_counter()
    if usage is None:
        raise RuntimeError(f"no usage in the stream ({len(events)} events); the server must honour include_usage")
    token_times = [t for t, e in events if event_text(e) or event_finished(e)]
    first = next((t for t, e in events if event_text(e)), token_times[0] if token_times else ended)
    last = token_times[-1] if token_times else ended
    num_tokens = usage.get("completion_tokens", 0)
    details = usage.get("prompt_tokens_details") or {}
    return {
        "ttft_s": first - started,
        "tpot_s": (last - first) / (num_tokens - 1) if num_tokens > 1 else None,
        "latency_s": ended - started,
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "cached_tokens": details.get("cached_tokens") or 0,
        "completion_tokens": num_tokens,
        "text": "".join(event_text(e) for _, e in events),
    }


async def throughput_level(args, concurrency, level_seed):
    rng = random.Random(level_seed)
    num_requests = concurrency * args.requests_per_client
    prompts = [words(random.Random(rng.random()), args.input_len) for _ in range(num_requests)]
    seeds = [rng.randrange(1 << 31) for _ in range(num_requests)]
    queue = list(range(num_requests))
    records = []

    async def worker():
        while queue:
            idx = queue.pop()
            prompt = prompts[idx] if args.api == "completions" else [{"role": "user", "content": prompts[idx]}]
            records.append(await timed_request(args, args.api, prompt, args.output_len, seeds[idx]))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    num_tokens = sum(r["completion_tokens"] for r in records)
    ttfts = [r["ttft_s"] for r in records]
    tpots = [r["tpot_s"] for r in records if r["tpot_s"] is not None]
    return {
        "concurrency": concurrency,
        "num_requests": num_requests,
        "wall_s": wall,
        "generated_tokens": num_tokens,
        "mean_prompt_tokens": sum(r["prompt_tokens"] for r in records) / num_requests,
        "mean_output_tokens": num_tokens / num_requests,
        "output_tokens_per_s": num_tokens / wall,
        "requests_per_s": num_requests / wall,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "tpot_p50_s": percentile(tpots, 50),
        "tpot_p99_s": percentile(tpots, 99),
        "latency_p50_s": percentile([r["latency_s"] for r in records], 50),
    }


async def agents_workload(args):
    rng = random.Random(args.seed + 7)
    system = "You are a helpful agent working on a long project. Project notes: " + words(rng, args.system_len)
    conversations = [[{"role": "system", "content": system}] for _ in range(args.agents)]
    agent_rngs = [random.Random(rng.random()) for _ in range(args.agents)]
    per_turn = [[] for _ in range(args.turns)]

    async def agent(idx):
        for turn in range(args.turns):
            conversations[idx].append({"role": "user", "content": f"Step {turn + 1}: " + words(agent_rngs[idx], args.turn_len)})
            record = await timed_request(args, "chat", list(conversations[idx]), args.agent_output_len,
                                         args.seed * 1000 + idx * 100 + turn)
            conversations[idx].append({"role": "assistant", "content": record["text"]})
            per_turn[turn].append(record)

    started = time.perf_counter()
    await asyncio.gather(*(agent(idx) for idx in range(args.agents)))
    wall = time.perf_counter() - started
    turns = []
    for turn, records in enumerate(per_turn):
        prompt = sum(r["prompt_tokens"] for r in records)
        cached = sum(r["cached_tokens"] for r in records)
        turns.append({
            "turn": turn + 1,
            "mean_prompt_tokens": prompt / len(records),
            "mean_cached_tokens": cached / len(records),
            "cache_hit_rate": cached / prompt if prompt else 0.0,
            "ttft_p50_s": percentile([r["ttft_s"] for r in records], 50),
            "ttft_max_s": max(r["ttft_s"] for r in records),
        })
    return {"agents": args.agents, "turns": turns, "wall_s": wall}


def http_get(url, path, api_key=None, timeout=10):
    request = urllib.request.Request(url + path)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read().decode()


def server_metrics(url, api_key=None):
    values = {}
    for line in http_get(url, "/metrics", api_key).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name.strip()] = float(value)
            except ValueError:
                pass
    return values


def hardware():
    info = {"machine": platform.machine(), "cpu": None, "num_cpus": os.cpu_count(), "mem_total_gib": None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_total_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return info


def git_commit():
    """The checkout's commit, read from .git without running git; None outside a checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git = os.path.join(root, ".git")
    try:
        if os.path.isfile(git):  # a worktree: "gitdir: PATH"
            with open(git) as f:
                git = os.path.join(root, f.read().split(":", 1)[1].strip())
        with open(os.path.join(git, "HEAD")) as f:
            head = f.read().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        common = git
        if os.path.exists(os.path.join(git, "commondir")):
            with open(os.path.join(git, "commondir")) as f:
                common = os.path.join(git, f.read().strip())
        for base in (git, common):
            path = os.path.join(base, ref)
            if os.path.exists(path):
                with open(path) as f:
                    return f.read().strip()
        with open(os.path.join(common, "packed-refs")) as f:
            for line in f:
                if line.strip().endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        pass
    return None


class Launched:
    """A `hearth serve` started by the benchmark; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, binary, args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [binary, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--kv-memory", args.kv_memory]
        if args.launch_model:
            cmd += ["--model", args.launch_model]
        for extra in args.serve_arg:
            cmd += extra.split()
        self.log = tempfile.NamedTemporaryFile(prefix="hearth-bench-serve-", suffix=".log", delete=False)
        print(f"starting: {' '.join(cmd)} (log {self.log.name})", file=sys.stderr)
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = cmd
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"hearth serve exited ({self.process.returncode}):\n{self.log_text()}")
            try:
                http_get(self.url, "/health", timeout=2)
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"hearth serve did not become healthy in 180 s:\n{self.log_text()}")

    def log_text(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def fmt_ms(seconds):
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def print_tables(result):
    levels = result.get("throughput") or []
    if levels:
        print(f"\nthroughput ({result['settings']['api']}, ~{result['settings']['input_len']} prompt words, "
              f"max_tokens {result['settings']['output_len']})")
        print(f"{'N':>4} {'reqs':>5} {'prompt tok':>10} {'out tok':>8} {'tok/s':>8} {'req/s':>6} "
              f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9}   (ms)")
        for lv in levels:
            print(f"{lv['concurrency']:>4} {lv['num_requests']:>5} {lv['mean_prompt_tokens']:>10.0f} "
                  f"{lv['mean_output_tokens']:>8.1f} {lv['output_tokens_per_s']:>8.1f} {lv['requests_per_s']:>6.2f} "
                  f"{fmt_ms(lv['ttft_p50_s']):>9} {fmt_ms(lv['ttft_p99_s']):>9} "
                  f"{fmt_ms(lv['tpot_p50_s']):>9} {fmt_ms(lv['tpot_p99_s']):>9}")
        roofline = result.get("roofline")
        if roofline:
            print(f"single-stream roofline {roofline['tokens_per_s']:.0f} tok/s "
                  f"({roofline['model_bytes'] / 1e6:.0f} MB weights / {roofline['bandwidth_gb_s']} GB/s); "
                  f"N=1 achieved {roofline['achieved_fraction'] * 100:.0f} %")
    agents = result.get("agents")
    if agents:
        print(f"\nagents ({agents['agents']} agents, shared system prompt of ~{result['settings']['system_len']} words)")
        print(f"{'turn':>4} {'prompt tok':>10} {'cached tok':>10} {'hit rate':>8} {'TTFT p50':>9} {'TTFT max':>9}   (ms)")
        for turn in agents["turns"]:
            print(f"{turn['turn']:>4} {turn['mean_prompt_tokens']:>10.0f} {turn['mean_cached_tokens']:>10.0f} "
                  f"{turn['cache_hit_rate'] * 100:>7.1f}% {fmt_ms(turn['ttft_p50_s']):>9} {fmt_ms(turn['ttft_max_s']):>9}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="base URL of a running server, e.g. http://127.0.0.1:8080")
    target.add_argument("--launch", metavar="PATH", help="start this `hearth` binary (serve) and stop it afterwards")
    p.add_argument("--launch-model", help="--model for the launched server (default: its default model)")
    p.add_argument("--kv-memory", default="1GiB", help="--kv-memory for the launched server (default 1GiB)")
    p.add_argument("--serve-arg", action="append", default=[], help="extra arguments for the launched server")
    p.add_argument("--model", default=None, help="model name in requests (default: the first of /v1/models)")
    p.add_argument("--api-key", default=os.environ.get("HEARTH_API_KEY"))
    p.add_argument("--api", choices=["completions", "chat"], default="completions")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--input-len", type=int, default=128, help="prompt length in words")
    p.add_argument("--output-len", type=int, default=128, help="max_tokens of each request")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--system-len", type=int, default=800, help="shared system prompt length in words")
    p.add_argument("--turn-len", type=int, default=48, help="each user message's length in words")
    p.add_argument("--agent-output-len", type=int, default=32)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-agents", action="store_true")
    p.add_argument("--mem-bandwidth-gb-s", type=float, help="memory bandwidth, for the single-stream roofline")
    p.add_argument("--model-bytes", type=int, help="weight bytes read per token (default: /api/tags size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="where to write the results (default ~/.cache/hearth/bench/serve-TIMESTAMP.json)")
    return p.parse_args(argv)


async def run(args):
    result = {"throughput": [], "agents": None}
    if not args.skip_throughput:
        for level_idx, concurrency in enumerate(int(c) for c in args.concurrency.split(",") if c.strip()):
            print(f"throughput: {concurrency} clients x {args.requests_per_client} requests ...", file=sys.stderr, flush=True)
            result["throughput"].append(await throughput_level(args, concurrency, args.seed * 100 + level_idx))
    if not args.skip_agents and args.agents > 0 and args.turns > 0:
        print(f"agents: {args.agents} agents x {args.turns} turns ...", file=sys.stderr, flush=True)
        result["agents"] = await agents_workload(args)
    return result


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    launched = Launched(args.launch, args) if args.launch else None
    if launched:
        args.url = launched.url
    args.url = args.url.rstrip("/")
    try:
        models = json.loads(http_get(args.url, "/v1/models", args.api_key))["data"]
        args.model = args.model or models[0]["id"]
        model_bytes = args.model_bytes
        try:
            tags = json.loads(http_get(args.url, "/api/tags", args.api_key)).get("models", [])
            model_bytes = model_bytes or next(
                (t.get("size") for t in tags if t.get("name", "").split(":")[0] == args.model), None)
        except (OSError, ValueError):
            pass
        # Warm up (first-request costs, allocator growth) outside the measurements.
        asyncio.run(timed_request(args, "completions", "Hello", 4, 0))
        before = server_metrics(args.url, args.api_key)
        started = datetime.datetime.now(datetime.timezone.utc)
        result = asyncio.run(run(args))
        after = server_metrics(args.url, args.api_key)
    finally:
        if launched:
            launched.stop()
    settings = {k: v for k, v in vars(args).items() if k not in ("api_key",)}
    result.update(
        benchmark="serve",
        started_at=started.isoformat(timespec="seconds"),
        git_commit=git_commit(),
        hardware=hardware(),
        settings=settings,
        server={"url": args.url, "model": args.model, "model_bytes": model_bytes,
                "command": launched.command if launched else None,
                "preemptions": after.get("hearth_preemptions_total", 0) - before.get("hearth_preemptions_total", 0),
                "kv_blocks_total": after.get("hearth_kv_blocks_total"),
                "prefix_cache_hit_rate_since_start": after.get("hearth_prefix_cache_hit_rate")},
        roofline=None,
    )
    if args.mem_bandwidth_gb_s and model_bytes and result["throughput"] and result["throughput"][0]["concurrency"] == 1:
        ceiling = args.mem_bandwidth_gb_s * 1e9 / model_bytes
        result["roofline"] = {"bandwidth_gb_s": args.mem_bandwidth_gb_s, "model_bytes": model_bytes, "tokens_per_s": ceiling,
                              "achieved_fraction": result["throughput"][0]["output_tokens_per_s"] / ceiling}
    print(f"\nhearth serve benchmark: {args.model} at {args.url}; {result['hardware']['cpu']} "
          f"({result['hardware']['num_cpus']} CPUs); commit {(result['git_commit'] or 'unknown')[:12]}; "
          f"preemptions {result['server']['preemptions']:.0f}")
    print_tables(result)
    path = args.json or os.path.join(os.path.expanduser(os.environ.get("HEARTH_HOME", "~/.cache/hearth")), "bench",
                                     f"serve-{started.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
