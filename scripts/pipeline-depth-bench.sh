#!/usr/bin/env bash
# Steps in flight through pipeline stages on loopback: `hearth serve --stages` with stage 0 in
# the serving process and stage 1 a `hearth stage` process, serving CONC concurrent requests
# (GEN generated tokens each, ignore_eos) at `--pipeline-depth 1` (one step at a time) and 2
# (one step per stage), REPS times each, alternating. Prints the aggregate generation rate
# (all requests' completion tokens / wall time of the batch) per run.
#
# Processes of one machine share its cores: every process gets THREADS threads
# (RAYON_NUM_THREADS; default cores / 2). Stages on separate machines do not share cores; on
# one machine, depth 2 can at best let the two processes use their cores at the same time.
#
# Usage: scripts/pipeline-depth-bench.sh [MODEL]   (default: SmolLM2-135M from the assets)
# Env: CONC (4), GEN (64), REPS (3), THREADS, HEARTH (binary).
set -euo pipefail

MODEL=${1:-${HEARTH_ASSETS:-$HOME/.cache/hearth/assets}/smollm2-135m-instruct-q4_1.gguf}
CONC=${CONC:-4}
GEN=${GEN:-64}
REPS=${REPS:-3}
# The binary and model checks, the work folder, the processes stopped on exit, `num_layers`,
# `spawn`, `threads_for` and `wait_listening`.
source "$(dirname "${BASH_SOURCE[0]}")/pipeline-bench-lib.sh"
THREADS=$(threads_for 2)
export RAYON_NUM_THREADS=$THREADS

half=$(( num_layers / 2 ))
spawn "" "$work/stage.out" "$HEARTH" stage -m "$MODEL" --layers "$half..$num_layers" --listen 127.0.0.1:0 --kv-memory 1GiB
stage_address="127.0.0.1:$(wait_listening "$work/stage.out")"

printf '%-6s %-5s %10s %12s\n' depth run "wall s" "gen tok/s"
for rep in $(seq 1 "$REPS"); do
    for depth in 1 2; do
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        "$HEARTH" serve -m "$MODEL" --stages "local=0..$half,$stage_address=$half..$num_layers" --kv-memory 1GiB \
            --pipeline-depth "$depth" --port "$port" >"$work/serve.out" 2>&1 &
        serve_pid=$!
        pids+=($serve_pid)
        url=http://127.0.0.1:$port
        for _ in $(seq 1 600); do
            curl -sf "$url/health" >/dev/null && break
            sleep 0.1
        done
        python3 - "$url" "$CONC" "$GEN" "$depth" "$rep" <<'EOF'
import json, sys, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, conc, gen, depth, rep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
with urllib.request.urlopen(url + "/v1/models", timeout=60) as response:
    model = json.load(response)["data"][0]["id"]
def complete(i):
    body = json.dumps({"model": model, "prompt": f"Request {i}: a short story about the sea.", "max_tokens": gen,
                       "temperature": 0, "ignore_eos": True}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.load(response)["usage"]["completion_tokens"]
    except urllib.error.HTTPError as err:
        sys.exit(f"request {i}: HTTP {err.code}: {err.read().decode()}")
complete(-1)  # warm-up
started = time.perf_counter()
with ThreadPoolExecutor(conc) as pool:
    tokens = sum(pool.map(complete, range(conc)))
wall = time.perf_counter() - started
print(f"{depth:<6} {rep:<5} {wall:10.2f} {tokens / wall:12.1f}")
EOF
        kill "$serve_pid"
        wait "$serve_pid" 2>/dev/null || true
    done
done
echo "model $MODEL, layers 0..$half local + $half..$num_layers remote; $CONC concurrent requests x $GEN tokens; $THREADS threads per process"
