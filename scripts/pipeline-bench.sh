#!/usr/bin/env bash
# Pipeline stages on loopback: generation tokens/s and time to first token for 1, 2 and 3
# stages, each beside the planner's prediction for the same placement on this machine.
#
# Stage 0 runs in the benchmarking process (as `hearth serve --stages local=…` would); the
# others are `hearth stage` processes on 127.0.0.1, started here and stopped (by their PIDs) on
# exit. Measured: `hearth bench` tgN (tokens/s of one sequence) and ppN (the prompt's compute
# time: the time to first token less sampling and HTTP). Predicted: `hearth plan --stages` with
# this machine's measured copy bandwidth for every stage and LINK for the loopback hops.
#
#
# Processes of one machine share its cores: each row gives every process of an N-stage row
# cores / N threads (RAYON_NUM_THREADS, which bounds hearth's pools too) unless THREADS is set.
# Without that, the idle stages' spinning worker threads take cores from the one computing (on
# 16 cores, 2 stages: 19 tok/s vs 45 for one process; with 8 threads each: 39 vs 38 for one
# process on 8 threads). Stages on different machines do not have this problem.
#
# Usage: scripts/pipeline-bench.sh [MODEL]   (default: SmolLM2-135M from the assets)
# Env: PROMPT (128), GEN (32), REPS (2), LINK ("latency=0.05ms,bw=20Gbit/s"), HEARTH (binary),
#      THREADS (threads per process; default cores / stages).
set -euo pipefail

MODEL=${1:-${HEARTH_ASSETS:-$HOME/.cache/hearth/assets}/smollm2-135m-instruct-q4_1.gguf}
PROMPT=${PROMPT:-128}
GEN=${GEN:-32}
REPS=${REPS:-2}
LINK=${LINK:-latency=0.05ms,bw=20Gbit/s}
HEARTH=${HEARTH:-${CARGO_TARGET_DIR:-$HOME/.cache/hearth/target}/debug/hearth}
export HEARTH_CLUSTER_KEY=${HEARTH_CLUSTER_KEY:-pipeline-bench-loopback-key-$$-$RANDOM}

[[ -x $HEARTH ]] || { echo "no hearth binary at $HEARTH (cargo build -p hearth-cli, or set HEARTH)" >&2; exit 1; }
[[ -e $MODEL ]] || { echo "no model at $MODEL (scripts/fetch-assets.sh)" >&2; exit 1; }

work=$(mktemp -d)
stage_pids=()
cleanup() {
    for pid in "${stage_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${stage_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

num_layers=$("$HEARTH" plan -m "$MODEL" --json --ctx 512 | python3 -c 'import json,sys; print(json.load(sys.stdin)["model"]["num_layers"])')

# Layer bounds for N stages: ceil(i * layers / N).
split() {
    python3 -c "
import sys
n, k = int(sys.argv[1]), int(sys.argv[2])
b = [(i * n + k - 1) // k for i in range(k + 1)]
print(' '.join(f'{b[i]}..{b[i+1]}' for i in range(k)))" "$num_layers" "$1"
}

# Starts `hearth stage` for LAYERS on a free loopback port; sets `stage_address`. (Not run in
# a subshell, so that its PID reaches `stage_pids` and gets stopped.)
start_stage() {
    local layers=$1 out="$work/stage-$1.out"
    "$HEARTH" stage -m "$MODEL" --layers "$layers" --listen 127.0.0.1:0 --kv-memory 2GiB >"$out" 2>"$out.err" &
    stage_pids+=($!)
    for _ in $(seq 1 600); do
        if grep -q "listening on" "$out" 2>/dev/null; then
            stage_address=$(sed -n 's/.*listening on //p' "$out" | head -1)
            return
        fi
        sleep 0.1
    done
    echo "hearth stage $layers did not start:" >&2
    cat "$out.err" >&2
    exit 1
}

num_cores=$(nproc)
printf '%-7s %-28s %8s %12s %12s %14s %14s\n' stages layers threads "tg t/s" "pred t/s" "ttft(pp) ms" "pred ttft ms"
for num_stages in 1 2 3; do
    threads=${THREADS:-$(( num_cores / num_stages > 0 ? num_cores / num_stages : 1 ))}
    export RAYON_NUM_THREADS=$threads
    read -r -a ranges <<<"$(split "$num_stages")"
    stage_args=()
    if ((num_stages > 1)); then
        entries="local=${ranges[0]}"
        for range in "${ranges[@]:1}"; do
            start_stage "$range"
            entries+=",$stage_address=$range"
        done
        stage_args=(--stages "$entries")
    fi
    "$HEARTH" bench -m "$MODEL" -p "$PROMPT" -n "$GEN" -r "$REPS" "${stage_args[@]}" --json "$work/bench-$num_stages.json" \
        >"$work/bench-$num_stages.out" 2>&1 || { cat "$work/bench-$num_stages.out" >&2; exit 1; }
    plan_stages=$(IFS=,; echo "${ranges[*]}")
    "$HEARTH" plan -m "$MODEL" --ctx 512 --prompt "$PROMPT" --stages "$plan_stages" --link "$LINK" --json >"$work/plan-$num_stages.json"
    python3 - "$work/bench-$num_stages.json" "$work/plan-$num_stages.json" "$num_stages" "$plan_stages" "$threads" <<'EOF'
import json, sys
bench, plan = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
rows = {r["kind"]: r for r in bench["results"]}
prompt_seconds = sum(rows["prompt"]["run_seconds"]) / len(rows["prompt"]["run_seconds"])
prediction = plan["plan"]["prediction"]
print(f'{sys.argv[3]:<7} {sys.argv[4]:<28} {sys.argv[5]:>8} {rows["generation"]["tokens_per_second_mean"]:12.1f} '
      f'{prediction["tokens_per_second"]:12.1f} {prompt_seconds * 1e3:14.1f} {prediction["ttft_seconds"] * 1e3:14.1f}')
EOF
    # The stages of this row are done; the next row starts its own.
    for pid in "${stage_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    stage_pids=()
done
echo "model $MODEL; prompt $PROMPT tokens, $GEN generated, $REPS timed runs; predicted link: $LINK"
