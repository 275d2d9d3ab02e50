#!/usr/bin/env bash
# Runs hearth's GPU checks and benchmarks on a GPU machine, from a checkout's root holding the
# packed binaries of scripts/cuda-build.sh in .device-bin/ (unpacked here). Logs go to $OUT (the
# device tool's output folder) or /tmp/hearth-device; a summary prints last. What runs is chosen
# by the environment:
#
#   TESTS=1   the kernels' CUDA tests, golden logits (CPU, CUDA F32 and BF16), gpu_layers and the
#             engine's batch invariance, with HEARTH_REQUIRE_GPU=1 (a missing GPU fails them;
#             batch invariance also needs SmolLM2's GGUF in ~/.cache/hearth/assets, which a GPU
#             machine without network has only if it was carried there)
#   TP=1      with two or more GPUs: the tensor-parallel test (a group through NCCL against the
#             CPU model), then `hearth serve --tensor-parallel 2` on a random-weight Llama-3.2-1B
#             Q4_K_M answering two completions over HTTP, and `hearth bench --tensor-parallel 2`
#   BENCH     benchmarks separated by `;`, each `shape:quant:env:args`: a random-weight model of
#             `hearth bench-model --shape shape --quant quant` (written once per run), benched by
#             `hearth bench --device cuda args` with `env` (`A=1,B=2`, or `-` for none) set, e.g.
#             BENCH="llama3-8b:q4_k_m:-:-p none --batch 1;llama3-8b:q4_k_m:HEARTH_MMA_MIN_ROWS=3:-p none --batch 3"
#   VOCAB     the vocabulary bench-model takes (`--vocab-from`; a GGUF with the tokenizer, or a
#             tokenizer.json); default .device-model/vocab-smollm2.gguf
#
# The CUDA 13 libraries come from the machine's PyTorch wheels (nvidia/cu13/lib).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/hearth-device}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

nvidia_lib="$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null)/cu13/lib"
export LD_LIBRARY_PATH="$nvidia_lib:${LD_LIBRARY_PATH:-}"
# NCCL (tensor parallelism) from the same wheels, where it lies apart from cu13/lib.
nccl="$(find "$(dirname "$nvidia_lib")/.." -name 'libnccl.so.2' 2>/dev/null | head -n1)"
[ -n "$nccl" ] && export LD_LIBRARY_PATH="$(dirname "$nccl"):$LD_LIBRARY_PATH"
bash scripts/device-unpack.sh > /dev/null
BIN=.device-bin

note() { echo "$*" | tee -a "$SUMMARY"; }

# name command...: runs a test binary, keeps its log, notes its result line.
run_test() {
  local name="$1"
  shift
  local log="$OUT/test-$name.log"
  HEARTH_REQUIRE_GPU=1 "$@" > "$log" 2>&1
  local rc=$?
  note "test $name: exit $rc, $(grep -E '^test result' "$log" | tail -n1)"
}

if [ "${TESTS:-0}" = 1 ]; then
  run_test kernels "$BIN/hearth-kernels-tests"
  run_test golden "$BIN/hearth-models-golden"
  run_test gpu-layers "$BIN/hearth-models-gpu-layers"
  run_test batch-invariance "$BIN/hearth-engine-batch-invariance" gpu_
fi

vocab="${VOCAB:-.device-model/vocab-smollm2.gguf}"

if [ "${TP:-0}" = 1 ]; then
  run_test tensor-parallel "$BIN/hearth-models-tp" a_group_on_cuda --nocapture
  grep -E 'rank\(s\) on CUDA' "$OUT/test-tensor-parallel.log" | tee -a "$SUMMARY"
  model="$(mktemp -d)/llama3-1b.gguf"
  "$BIN/hearth" bench-model --shape llama3.2-1b --quant q4_k_m --out "$model" --vocab-from "$vocab" > "$OUT/tp-bench-model.log" 2>&1
  "$BIN/hearth" serve --model "$model" --device cuda --tensor-parallel 2 --port 18080 > "$OUT/tp-serve.log" 2>&1 &
  server=$!
  # GET or POST (with a JSON body) on the server; prints the reply, fails on an HTTP error.
  http() {
    python3 -c 'import sys, urllib.request as u
body = sys.argv[2].encode() if len(sys.argv) > 2 else None
req = u.Request("http://127.0.0.1:18080" + sys.argv[1], data=body, headers={"content-type": "application/json"})
print(u.urlopen(req, timeout=120).read().decode())' "$@"
  }
  for _ in $(seq 120); do http /health > /dev/null 2>&1 && break; sleep 1; done
  name="$(http /health | python3 -c 'import json, sys; print(json.load(sys.stdin)["model"])')"
  for prompt in "Hello" "The quick brown fox"; do
    body="{\"model\": \"$name\", \"prompt\": \"$prompt\", \"max_tokens\": 16, \"temperature\": 0}"
    reply="$(http /v1/completions "$body" 2>&1)"
    note "serve --tensor-parallel 2, \"$prompt\": $(echo "$reply" | head -c 300)"
  done
  kill "$server"; wait "$server"
  note "serve --tensor-parallel 2, stopped by SIGTERM: exit $? (log: tp-serve.log)"
  "$BIN/hearth" bench --model "$model" --device cuda --tensor-parallel 2 -p 512 -n 64 -r 2 > "$OUT/tp-bench.log" 2>&1
  note "bench --tensor-parallel 2: exit $?"
  grep -E '[|] (tg|pp)[0-9]+' "$OUT/tp-bench.log" | tee -a "$SUMMARY"
fi

if [ -n "${BENCH:-}" ]; then
  models="$(mktemp -d)"
  IFS=';' read -ra benches <<< "$BENCH"
  for i in "${!benches[@]}"; do
    IFS=':' read -r shape quant env args <<< "${benches[$i]}"
    model="$models/$shape-$quant.gguf"
    if [ ! -f "$model" ]; then
      "$BIN/hearth" bench-model --shape "$shape" --quant "$quant" --out "$model" --vocab-from "$vocab" \
        > "$OUT/bench-model-$shape-$quant.log" 2>&1 || { note "bench-model $shape $quant failed"; continue; }
    fi
    envs=()
    [ "$env" != "-" ] && IFS=',' read -ra envs <<< "$env"
    log="$OUT/bench-$i.log"
    # shellcheck disable=SC2086 # args are words on purpose
    env "${envs[@]}" "$BIN/hearth" bench --model "$model" --device cuda $args --json "$OUT/bench-$i.json" > "$log" 2>&1
    note "bench $i: $shape $quant [$env] $args: exit $?"
    grep -E '[|] (tg|pp)[0-9]+' "$log" | tee -a "$SUMMARY"
  done
  rm -rf "$models"
fi

echo "---- summary"
cat "$SUMMARY"
