#!/usr/bin/env bash
# Pipeline stages on loopback: generation tokens/s and time to first token for 1, 2 and 3
# stages, and split prefill/decode, each beside the planner's prediction for the same placement
# on this machine. (Across network namespaces with a bandwidth limit:
# scripts/pipeline-netns-bench.sh; both share scripts/pipeline-bench-lib.sh.)
#
# Stage 0 runs in the benchmarking process (as `hearth serve --stages local=…` would); the
# others are `hearth stage` processes on 127.0.0.1, started here and stopped (by their PIDs) on
# exit. Measured: `hearth bench` tgN (tokens/s of one sequence) and ppN (the prompt's compute
# time: the time to first token less sampling and HTTP). Predicted: `hearth plan --stages` with
# this machine's measured copy bandwidth for every stage and LINK for the loopback hops. Split
# prefill/decode is measured over HTTP (`hearth serve --prefill-node`, scripts/bench_serve.py),
# beside `hearth serve` alone measured the same way.
#
# Processes of one machine share its cores: each row gives every process of an N-process row
# cores / N threads (RAYON_NUM_THREADS, which bounds hearth's pools too) unless THREADS is set.
# Without that, the idle stages' spinning worker threads take cores from the one computing (on
# 16 cores, 2 stages: 19 tok/s vs 45 for one process; with 8 threads each: 39 vs 38 for one
# process on 8 threads). Stages on different machines do not have this problem.
#
# Usage: scripts/pipeline-bench.sh [MODEL]   (default: SmolLM2-135M from the assets)
# Env: KEEP (1: keep the work directory, logs and JSON), PROMPT (128), GEN (32), REPS (2), LINK ("latency=0.05ms,bw=20Gbit/s"), HEARTH (binary),
#      THREADS (threads per process; default cores / processes), SPLIT (1: also split
#      prefill/decode; 0: skip).
set -euo pipefail

MODEL=${1:-${MODEL:-}}
[[ -n $MODEL ]] || unset MODEL
LINK=${LINK:-latency=0.05ms,bw=20Gbit/s}
source "$(dirname "$0")/pipeline-bench-lib.sh"

table_header
for num_stages in 1 2 3; do
    bench_row "$num_stages" "$LINK" "loopback $num_stages stages" "" =127.0.0.1 =127.0.0.1
done
if [[ ${SPLIT:-1} == 1 ]]; then
    split_rows "$LINK" loopback "" =127.0.0.1
fi
echo "model $MODEL; prompt $PROMPT tokens, $GEN generated, $REPS timed runs; predicted link: $LINK"
