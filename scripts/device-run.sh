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

if [ -n "${BENCH:-}" ]; then
  vocab="${VOCAB:-.device-model/vocab-smollm2.gguf}"
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
