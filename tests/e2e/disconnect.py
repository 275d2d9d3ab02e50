"""A client that goes away mid-stream frees its request: for a streamed OpenAI chat (official
client, `stream.close()`), a streamed /v1/completions and a streamed Ollama /api/generate (raw
sockets shut down), each a long generation, /metrics shows the request running with blocks in
use while it streams, and after the disconnect `hearth_kv_blocks_used` and
`hearth_requests_running` return to 0 well before the generation could have finished.

usage: disconnect.py BASE_URL
"""

import http.client
import json
import socket
import time
import urllib.parse

from common import MODEL, check, check_eq, main, metric, metrics, openai_client, step, wait_until_idle

COUNT = "Count from 1 to 1000, separated by commas."
MAX_TOKENS = 3000  # far more than the few seconds the test waits: finishing naturally is not freeing
NUM_CHUNKS = 6


def check_busy(base_url, what):
    values = metrics(base_url)
    check_eq(metric(values, "hearth_requests_running"), 1, f"{what}: hearth_requests_running while streaming")
    used = metric(values, "hearth_kv_blocks_used")
    check(used > 0, f"{what}: hearth_kv_blocks_used is {used} while a request streams")
    check(used <= metric(values, "hearth_kv_blocks_total"), f"{what}: more blocks used than exist: {values}")


def check_freed(base_url, what, closed_at):
    wait_until_idle(base_url, timeout=20, what=f"after {what} disconnected")
    print(f"  freed {time.monotonic() - closed_at:.2f} s after the disconnect", flush=True)


def openai_chat(base_url):
    step("official client: streamed chat closed after a few chunks")
    client = openai_client(base_url)
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": COUNT}],
                                            temperature=0, max_tokens=MAX_TOKENS, stream=True)
    received = []
    for chunk in stream:
        received.append(chunk)
        check(not any(c.finish_reason for c in chunk.choices), f"the stream finished after {len(received)} chunks")
        if len(received) >= NUM_CHUNKS:
            break
    check_busy(base_url, "chat stream")
    stream.close()
    check_freed(base_url, "the chat stream", time.monotonic())


def raw_stream(base_url, path, body, marker, what):
    step(f"raw socket: {what} shut down after a few events")
    url = urllib.parse.urlparse(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    check_eq(response.status, 200, f"{what}: status")
    seen, deadline = b"", time.monotonic() + 60
    while seen.count(marker) < NUM_CHUNKS and time.monotonic() < deadline:
        piece = response.read1(4096)
        check(piece, f"{what}: the stream ended after {seen.count(marker)} events: {seen[-300:]!r}")
        seen += piece
    check(seen.count(marker) >= NUM_CHUNKS, f"{what}: only {seen.count(marker)} events in 60 s")
    check_busy(base_url, what)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    check_freed(base_url, what, time.monotonic())


def run(base_url):
    values = wait_until_idle(base_url, timeout=20, what="at start")
    total = metric(values, "hearth_kv_blocks_total")
    check(total > 0, f"hearth_kv_blocks_total is {total}")
    openai_chat(base_url)
    raw_stream(base_url, "/v1/completions",
               {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True},
               b"data:", "streamed /v1/completions")
    raw_stream(base_url, "/api/generate",
               {"model": MODEL, "prompt": COUNT, "options": {"temperature": 0, "num_predict": MAX_TOKENS}},
               b"\n", "streamed Ollama /api/generate")
    step("the server still serves, and the pool is whole")
    reply = openai_client(base_url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    check(reply.choices[0].message.content is not None, "no content after the disconnects")
    values = wait_until_idle(base_url, timeout=20, what="at the end")
    check_eq(metric(values, "hearth_kv_blocks_total"), total, "hearth_kv_blocks_total at the end")


if __name__ == "__main__":
    main(run)
