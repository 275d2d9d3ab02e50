#!/usr/bin/env bash
# Split prefill/decode between two processes on one GPU: `hearth serve --device cuda` alone vs
# with `--prefill-node` (a full-model `hearth stage --device cuda` on the same GPU, every fresh
# prompt sent there: --prefill-min-tokens 1), measured over HTTP by scripts/bench_serve.py,
# then the planner's prediction for the same prompt length (`decide_prefill_split`'s rule:
# prompt time + KV bytes / link bandwidth + latency).
#   HEARTH   the hearth binary built with --features cuda (default .device-bin/hearth)
#   MODEL    a GGUF file (default: an 8B Q4_K_M bench model made from VOCAB's tokenizer)
#   OUT      where logs and JSON go (default a temporary folder); CONC client counts (1,8)
set -euo pipefail
cd "$(dirname "$0")/.."
HEARTH=${HEARTH:-.device-bin/hearth}
VOCAB=${VOCAB:-.device-model/vocab-smollm2.gguf}
MODEL=${MODEL:-/tmp/m/8b-q4.gguf}
OUT=${OUT:-$(mktemp -d)}
export HEARTH_CLUSTER_KEY=${HEARTH_CLUSTER_KEY:-gpu-split-bench-key-0123456789}
mkdir -p "$(dirname "$MODEL")"
[ -f "$MODEL" ] || "$HEARTH" bench-model --shape llama3-8b --quant q4_k_m --vocab-from "$VOCAB" --out "$MODEL" >"$OUT/gen.log"
"$HEARTH" stage -m "$MODEL" --device cuda --layers 0..32 --listen 127.0.0.1:0 --kv-memory 8GiB >"$OUT/stage.out" 2>"$OUT/stage.err" &
stage_pid=$!
trap 'kill $stage_pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "listening on" "$OUT/stage.out" 2>/dev/null && break; sleep 0.2; done
address=$(sed -n 's/.*listening on //p' "$OUT/stage.out" | head -1)
[ -n "$address" ] || { echo "the prefill stage did not start:" >&2; cat "$OUT/stage.err" >&2; exit 1; }
for mode in single split; do
  extra=()
  [ "$mode" = split ] && extra=(--serve-arg=--prefill-node "--serve-arg=$address" --serve-arg=--prefill-min-tokens --serve-arg=1)
  python3 scripts/bench_serve.py --launch "$HEARTH" --launch-model "$MODEL" --kv-memory 8GiB --serve-arg=--device --serve-arg=cuda \
    "${extra[@]}" --concurrency "${CONC:-1,8}" --requests-per-client 2 --input-len 800 --output-len 128 --skip-agents \
    --json "$OUT/serve-$mode.json" >"$OUT/serve-$mode.txt"
  echo "== $mode"; tail -4 "$OUT/serve-$mode.txt"
done
"$HEARTH" plan -m "$MODEL" --hardware h100-sxm --ctx 1024 --prompt 800 --link latency=0.03ms,bw=40Gbit/s --json >"$OUT/plan.json"
python3 - "$OUT/plan.json" <<'PY'
import json, sys
plan = json.load(open(sys.argv[1])); pred, link = plan["plan"]["prediction"], plan["link"]
kv = plan["model"]["kv_bytes_per_token"] * 800
transfer = link["latency_s"] + kv / link["bandwidth_bytes_per_s"]
print(f"planner: tg {pred['tokens_per_second']:.1f} tok/s, TTFT one node {pred['ttft_seconds'] * 1e3:.1f} ms, "
      f"split {(pred['ttft_seconds'] + transfer) * 1e3:.1f} ms (KV {kv / 2**20:.1f} MiB, {transfer * 1e3:.1f} ms over the link)")
PY
