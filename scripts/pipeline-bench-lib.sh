# Shared by scripts/pipeline-bench.sh (loopback), scripts/pipeline-netns-bench.sh (network
# namespaces joined by rate-limited veth pairs) and scripts/pipeline-depth-bench.sh (steps in
# flight); sourced, not run. Owns: the settings both
# read, the processes they start (stopped by PID on exit), the layer split, one measured row
# beside the planner's prediction (`bench_row`) and the split prefill/decode rows (`split_rows`).
#
# A "place" is where a process runs and how others reach it: "" and 127.0.0.1 for loopback, or
# a namespace name and its address. Every process of a row gets cores / (processes in the row)
# threads (RAYON_NUM_THREADS) unless THREADS is set: processes sharing one machine must split
# its cores (crates/pipeline/PERF.md).

MODEL=${MODEL:-${HEARTH_ASSETS:-$HOME/.cache/hearth/assets}/smollm2-135m-instruct-q4_1.gguf}
PROMPT=${PROMPT:-128}
GEN=${GEN:-32}
REPS=${REPS:-2}
HEARTH=${HEARTH:-${CARGO_TARGET_DIR:-$HOME/.cache/hearth/target}/debug/hearth}
export HEARTH_CLUSTER_KEY=${HEARTH_CLUSTER_KEY:-pipeline-bench-key-$$-$RANDOM}
SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

[[ -x $HEARTH ]] || { echo "no hearth binary at $HEARTH (cargo build -p hearth-cli, or set HEARTH)" >&2; exit 1; }
[[ -e $MODEL ]] || { echo "no model at $MODEL (scripts/fetch-assets.sh)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
# Commands run on exit after the processes stop (the namespace script removes its namespaces).
exit_hooks=()
stop_processes() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
cleanup() {
    stop_processes
    for hook in "${exit_hooks[@]}"; do eval "$hook" || true; done
    if [[ -n ${KEEP:-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

num_layers=$("$HEARTH" plan -m "$MODEL" --json --ctx 512 | python3 -c 'import json,sys; print(json.load(sys.stdin)["model"]["num_layers"])')
num_cores=$(nproc)

# Runs a command in namespace $1 ("" = here). `ip netns exec` execs the command (same PID).
in_place() {
    local ns=$1
    shift
    if [[ -n $ns ]]; then ip netns exec "$ns" "$@"; else "$@"; fi
}

# Starts a command in namespace $1 in the background, its PID in `pids` (a backgrounded shell
# function would be a subshell, whose PID is not the process's). Output to $2 and $2.err.
spawn() {
    local ns=$1 out=$2
    shift 2
    if [[ -n $ns ]]; then set -- ip netns exec "$ns" "$@"; fi
    "$@" >"$out" 2>"$out.err" &
    pids+=($!)
}

# Threads for each of $1 processes sharing this machine.
threads_for() {
    echo "${THREADS:-$(( num_cores / $1 > 0 ? num_cores / $1 : 1 ))}"
}

# Layer bounds for N stages: ceil(i * layers / N).
split() {
    python3 -c "
import sys
n, k = int(sys.argv[1]), int(sys.argv[2])
b = [(i * n + k - 1) // k for i in range(k + 1)]
print(' '.join(f'{b[i]}..{b[i+1]}' for i in range(k)))" "$num_layers" "$1"
}

# Waits (60 s at most) for FILE to contain "listening on"; prints the port.
wait_listening() {
    local out=$1
    for _ in $(seq 1 600); do
        if grep -q "listening on" "$out" 2>/dev/null; then
            sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$out" | head -1
            return
        fi
        sleep 0.1
    done
    echo "no 'listening on' in $out:" >&2
    cat "$out" "$out.err" >&2
    exit 1
}

# Starts `hearth stage` (LAYERS, or "" for one that loads what a coordinator assigns) in
# namespace NS, reachable at HOST; sets `stage_address`. Not run in a subshell, so that its PID
# reaches `pids`.
start_stage() {
    local layers=$1 ns=$2 host=$3 out="$work/stage-$RANDOM.out"
    local layer_args=()
    [[ -n $layers ]] && layer_args=(--layers "$layers")
    spawn "$ns" "$out" "$HEARTH" stage -m "$MODEL" "${layer_args[@]}" --listen 0.0.0.0:0 --kv-memory 2GiB
    stage_address="$host:$(wait_listening "$out")"
}

# One row: `hearth bench` in namespace COORD_NS over N stages (stage 0 in the benchmarking
# process, stage i at the i-th of the remaining "ns=host" places), beside `hearth plan
# --stages` with LINK. Usage: bench_row N LINK LABEL COORD_NS [ns=host ...]
bench_row() {
    local num_stages=$1 link=$2 label=$3 coord_ns=$4
    shift 4
    local places=("$@") ranges entries stage_args=()
    export RAYON_NUM_THREADS
    RAYON_NUM_THREADS=$(threads_for "$num_stages")
    read -r -a ranges <<<"$(split "$num_stages")"
    if ((num_stages > 1)); then
        entries="local=${ranges[0]}"
        for stage_idx in $(seq 1 $((num_stages - 1))); do
            local place=${places[stage_idx - 1]}
            start_stage "${ranges[stage_idx]}" "${place%%=*}" "${place#*=}"
            entries+=",$stage_address=${ranges[stage_idx]}"
        done
        stage_args=(--stages "$entries")
    fi
    local out="$work/bench-$num_stages"
    in_place "$coord_ns" "$HEARTH" bench -m "$MODEL" -p "$PROMPT" -n "$GEN" -r "$REPS" "${stage_args[@]}" --json "$out.json" \
        >"$out.out" 2>&1 || { cat "$out.out" >&2; exit 1; }
    local plan_stages
    plan_stages=$(IFS=,; echo "${ranges[*]}")
    "$HEARTH" plan -m "$MODEL" --ctx 512 --prompt "$PROMPT" --stages "$plan_stages" --link "$link" --json >"$out.plan.json"
    python3 - "$out.json" "$out.plan.json" "$label" "$plan_stages" "$RAYON_NUM_THREADS" <<'EOF'
import json, sys
bench, plan = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
rows = {r["kind"]: r for r in bench["results"]}
prompt_seconds = sum(rows["prompt"]["run_seconds"]) / len(rows["prompt"]["run_seconds"])
prediction = plan["plan"]["prediction"]
print(f'| {sys.argv[3]:<28} | {sys.argv[4]:<19} | {sys.argv[5]:>7} | {rows["generation"]["tokens_per_second_mean"]:8.1f} | '
      f'{prediction["tokens_per_second"]:8.1f} | {prompt_seconds * 1e3:11.1f} | {prediction["ttft_seconds"] * 1e3:12.1f} |', flush=True)
EOF
    stop_processes
}

table_header() {
    echo "| row                          | layers              | threads | tg t/s   | pred t/s | ttft(pp) ms | pred ttft ms |"
    echo "|------------------------------|---------------------|---------|----------|----------|-------------|--------------|"
}

# Waits (120 s at most) until `hearth serve` in NS answers /health on PORT.
wait_healthy() {
    local ns=$1 port=$2 log=$3
    for _ in $(seq 1 1200); do
        in_place "$ns" curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "hearth serve did not come up:" >&2
    cat "$log" "$log.err" >&2
    exit 1
}

# Serves in COORD_NS (extra serve arguments after LABEL) and measures REPS + 1 streamed
# requests of fresh ~PROMPT-word prompts through scripts/bench_serve.py (one client, TTFT and
# time per output token, medians). Sets `measured` to "ttft_ms tok_s prompt_tokens" (not
# printed: a command substitution's subshell would not stop what it started on failure).
serve_measure() {
    local coord_ns=$1 label=$2
    shift 2
    local port=18080 log="$work/serve-$label.log"
    spawn "$coord_ns" "$log" "$HEARTH" serve -m "$MODEL" --port "$port" --kv-memory 512MiB "$@"
    wait_healthy "$coord_ns" "$port" "$log"
    in_place "$coord_ns" python3 "$SCRIPTS/bench_serve.py" --url "http://127.0.0.1:$port" --concurrency 1 \
        --requests-per-client $((REPS + 1)) --input-len "$PROMPT" --output-len "$GEN" --skip-agents \
        --json "$work/serve-$label.json" >"$work/serve-$label.out" 2>&1 || { cat "$work/serve-$label.out" "$log.err" >&2; exit 1; }
    measured=$(python3 - "$work/serve-$label.json" <<'EOF'
import json, sys
level = json.load(open(sys.argv[1]))["throughput"][0]
print(f'{level["ttft_p50_s"] * 1e3:.1f} {1 / level["tpot_p50_s"]:.1f} {level["mean_prompt_tokens"]:.0f}')
EOF
)
    grep -h "^plan:\|^split" "$log.err" >&2 || true
    stop_processes
}

# Split prefill/decode over LINK: `hearth serve` in COORD_NS alone, then with `--prefill-node`
# at the "ns=host" PLACE (every fresh prompt goes there: --prefill-min-tokens 1), both measured
# over HTTP, beside the planner's prediction: decode tok/s of one node; TTFT of one node, and
# for the split the prefill node's prompt time plus the KV transfer over LINK
# (`decide_prefill_split`'s rule, crates/planner/src/prefill_split.rs).
# Usage: split_rows LINK LABEL COORD_NS PLACE
split_rows() {
    local link=$1 label=$2 coord_ns=$3 place=$4 single split
    export RAYON_NUM_THREADS
    RAYON_NUM_THREADS=$(threads_for 1)
    serve_measure "$coord_ns" single
    read -r -a single <<<"$measured"
    RAYON_NUM_THREADS=$(threads_for 2)
    start_stage "" "${place%%=*}" "${place#*=}"
    serve_measure "$coord_ns" split --prefill-node "$stage_address" --prefill-min-tokens 1
    read -r -a split <<<"$measured"
    "$HEARTH" plan -m "$MODEL" --ctx 512 --prompt "${single[2]}" --link "$link" --json >"$work/split-plan.json"
    python3 - "$work/split-plan.json" "$label" "$(threads_for 1)" "$RAYON_NUM_THREADS" "${single[@]}" "${split[@]}" <<'EOF'
import json, sys
plan = json.load(open(sys.argv[1]))
label, threads_single, threads_split = sys.argv[2:5]
single, split = [float(x) for x in sys.argv[5:8]], [float(x) for x in sys.argv[8:11]]
prediction, link = plan["plan"]["prediction"], plan["link"]
kv_bytes = plan["model"]["kv_bytes_per_token"] * split[2]
transfer = link["latency_s"] + kv_bytes / link["bandwidth_bytes_per_s"]
for name, threads, (ttft, tok_s, _), pred_ttft in [("one node (HTTP)", threads_single, single, prediction["ttft_seconds"]),
                                                  ("split prefill/decode", threads_split, split, prediction["ttft_seconds"] + transfer)]:
    print(f'| {label + " " + name:<28} | {"0..all":<19} | {threads:>7} | {tok_s:8.1f} | {prediction["tokens_per_second"]:8.1f} | '
          f'{ttft:11.1f} | {pred_ttft * 1e3:12.1f} |', flush=True)
print(f'(split: ~{split[2]:.0f}-token prompts, {kv_bytes / 2**20:.1f} MiB of KV predicted to take {transfer * 1e3:.1f} ms)', file=sys.stderr)
EOF
}
