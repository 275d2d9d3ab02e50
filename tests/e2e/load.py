"""Load: N (default 64) concurrent streaming clients (asyncio + the official AsyncOpenAI), each
one chat request of 32–64 tokens at once, bounded in time. Every stream completes without error
with a finish reason and usage that agree with its chunks; the server batches (more than one
request running at once, seen in /metrics); afterwards /metrics shows no KV block used and no
request running or waiting; the TTFT/ITL histograms counted the requests.

usage: load.py BASE_URL [NUM_CLIENTS]
"""

import asyncio
import random
import time

from common import MODEL, async_openai_client, check, main, metric, metrics, step, wait_until_idle, words

TIME_LIMIT_S = 300


async def one_client(client, idx, rng):
    max_tokens = rng.randint(32, 64)
    if idx == 0:  # a greedy question with a known answer, in the middle of the crowd
        messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
        params = dict(temperature=0)
    else:
        messages = [{"role": "user", "content": f"Write a few sentences about {words(rng.randint(3, 12), seed=idx)}."}]
        params = dict(temperature=0.7, seed=idx)
    started = time.monotonic()
    first_token_at = None
    text, finish, usage, num_chunks = "", None, None, 0
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True}, **params)
    async for chunk in stream:
        num_chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                first_token_at = first_token_at or time.monotonic()
                text += choice.delta.content
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    what = f"client {idx} (max_tokens {max_tokens})"
    check(finish in ("stop", "length"), f"{what}: finish_reason {finish!r} after {num_chunks} chunks, text {text!r}")
    check(usage is not None, f"{what}: no usage chunk")
    check(1 <= usage.completion_tokens <= max_tokens, f"{what}: completion_tokens {usage.completion_tokens}")
    if finish == "length":
        check(usage.completion_tokens == max_tokens, f"{what}: finish length at {usage.completion_tokens} tokens")
        check(text, f"{what}: {usage.completion_tokens} tokens but no text")
    if idx == 0:
        check("Paris" in text, f"{what}: greedy answer under load {text!r} does not name Paris")
    ttft = (first_token_at or time.monotonic()) - started
    return usage.completion_tokens, ttft


async def watch(base_url, stop, peaks):
    while not stop.is_set():
        values = await asyncio.to_thread(metrics, base_url)
        peaks["running"] = max(peaks["running"], metric(values, "hearth_requests_running"))
        peaks["blocks"] = max(peaks["blocks"], metric(values, "hearth_kv_blocks_used"))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass


async def load(base_url, num_clients):
    client = async_openai_client(base_url, timeout=TIME_LIMIT_S)
    rng = random.Random(1234)
    rngs = [random.Random(rng.random()) for _ in range(num_clients)]
    stop, peaks = asyncio.Event(), {"running": 0, "blocks": 0}
    watcher = asyncio.create_task(watch(base_url, stop, peaks))
    started = time.monotonic()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(one_client(client, idx, rngs[idx]) for idx in range(num_clients)), return_exceptions=True),
            TIME_LIMIT_S)
    except asyncio.TimeoutError:
        check(False, f"{num_clients} clients did not all finish within {TIME_LIMIT_S} s")
    finally:
        stop.set()
        await watcher
        await client.close()
    elapsed = time.monotonic() - started
    failures = [(idx, r) for idx, r in enumerate(results) if isinstance(r, BaseException)]
    check(not failures, lambda: f"{len(failures)} of {num_clients} clients failed; first: "
          f"client {failures[0][0]}: {type(failures[0][1]).__name__}: {failures[0][1]}")
    num_tokens = sum(r[0] for r in results)
    ttfts = sorted(r[1] for r in results)
    print(f"  {num_clients} streams, {num_tokens} tokens in {elapsed:.1f} s = {num_tokens / elapsed:.0f} tok/s; "
          f"TTFT median {ttfts[len(ttfts) // 2]:.2f} s, max {ttfts[-1]:.2f} s; "
          f"peak running {peaks['running']:.0f}, peak blocks {peaks['blocks']:.0f}", flush=True)
    return peaks


def run(base_url, num_clients="64"):
    num_clients = int(num_clients)
    before = wait_until_idle(base_url, timeout=20, what="before the load")
    step(f"{num_clients} concurrent streaming chat clients, 32-64 tokens each")
    peaks = asyncio.run(load(base_url, num_clients))
    check(peaks["running"] > 1, f"never more than {peaks['running']:.0f} request running with {num_clients} clients")
    step("afterwards: hearth_kv_blocks_used 0, nothing running or waiting")
    after = wait_until_idle(base_url, timeout=30, what="after the load")
    check(metric(after, "hearth_kv_blocks_used") == 0, "blocks still used")
    counts = {name: value for name, value in after.items()
              if name.endswith("_count") and ("ttft" in name or "first_token" in name)}
    check(counts, f"/metrics has no TTFT histogram count; samples: {sorted(after)[:60]}")
    check(any(after[name] - before.get(name, 0) >= num_clients for name in counts),
          f"TTFT histogram counted fewer than {num_clients} requests: {counts}")


if __name__ == "__main__":
    main(run)
