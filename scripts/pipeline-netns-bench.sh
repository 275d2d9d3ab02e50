#!/usr/bin/env bash
# Pipeline stages and split prefill/decode across network namespaces with a bandwidth limit:
# the rows of scripts/pipeline-bench.sh (shared code: scripts/pipeline-bench-lib.sh), with the
# benchmarking process (the coordinator) in one namespace and each `hearth stage` in its own,
# joined to the coordinator's by a veth pair whose two ends are limited by `tc … tbf` to RATE.
# The planner predicts each row with that link ("latency=LATENCY,bw=RATE").
#
#   coordinator ns (10.77.K.1) ──veth, tbf RATE each way── stage ns K (10.77.K.2), K = 1, 2
#
# Needs root (ip netns, veth, tc); where namespaces cannot be made it says why and exits 0.
# The namespaces (hpb<pid>c, hpb<pid>s1, hpb<pid>s2) are removed on exit, with their veths.
# Threads: as on loopback, every process of a row gets cores / processes (THREADS overrides).
#
# Usage: scripts/pipeline-netns-bench.sh [MODEL]   (default: SmolLM2-135M from the assets)
# Env: RATES ("1Gbit 100Mbit": tbf rates, in `hearth plan --link` spelling), LATENCY (0.05ms,
#      the predicted one-way latency of a veth hop), PROMPT, GEN, REPS, HEARTH, THREADS, SPLIT
#      (as in pipeline-bench.sh).
set -euo pipefail

MODEL=${1:-${MODEL:-}}
[[ -n $MODEL ]] || unset MODEL
RATES=${RATES:-1Gbit 100Mbit}
LATENCY=${LATENCY:-0.05ms}
NUM_STAGE_NS=2
ns_prefix=hpb$$

probe=hpb$$probe
if ! ip netns add "$probe" 2>"/tmp/$probe.err"; then
    echo "skipped: network namespaces are not permitted here ($(cat "/tmp/$probe.err")); run as root on a machine that allows ip netns" >&2
    rm -f "/tmp/$probe.err"
    exit 0
fi
ip netns del "$probe"
rm -f "/tmp/$probe.err"

source "$(dirname "$0")/pipeline-bench-lib.sh"

coord_ns=${ns_prefix}c
remove_namespaces() {
    ip netns del "$coord_ns" 2>/dev/null || true
    for k in $(seq 1 "$NUM_STAGE_NS"); do ip netns del "${ns_prefix}s$k" 2>/dev/null || true; done
}
exit_hooks+=(remove_namespaces)

# The coordinator's namespace and NUM_STAGE_NS stage namespaces, each on its own veth pair.
ip netns add "$coord_ns"
ip -n "$coord_ns" link set lo up
places=()
for k in $(seq 1 "$NUM_STAGE_NS"); do
    ns=${ns_prefix}s$k
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "${ns_prefix}c$k" netns "$coord_ns" type veth peer name "${ns_prefix}s$k" netns "$ns"
    ip -n "$coord_ns" addr add "10.77.$k.1/24" dev "${ns_prefix}c$k"
    ip -n "$ns" addr add "10.77.$k.2/24" dev "${ns_prefix}s$k"
    ip -n "$coord_ns" link set "${ns_prefix}c$k" up
    ip -n "$ns" link set "${ns_prefix}s$k" up
    places+=("$ns=10.77.$k.2")
done

# Limits both directions of every veth pair to RATE (tc spelling: 1gbit). The bucket holds
# 4 ms at the rate (at least 64 KiB), tbf's queue 50 ms.
limit_links() {
    local rate=$1 bits burst
    bits=$(python3 -c 'import sys; u={"k":1e3,"m":1e6,"g":1e9}; r=sys.argv[1].lower().removesuffix("/s").removesuffix("bit"); print(int(float(r[:-1])*u[r[-1]]) if r[-1] in u else int(r))' "$rate")
    burst=$(( bits / 8 / 250 > 65536 ? bits / 8 / 250 : 65536 ))
    for k in $(seq 1 "$NUM_STAGE_NS"); do
        ip -n "$coord_ns" link set "${ns_prefix}c$k" up
        tc -n "$coord_ns" qdisc replace dev "${ns_prefix}c$k" root tbf rate "${bits}bit" burst "$burst" latency 50ms
        tc -n "${ns_prefix}s$k" qdisc replace dev "${ns_prefix}s$k" root tbf rate "${bits}bit" burst "$burst" latency 50ms
    done
}

table_header
for rate in $RATES; do
    limit_links "$rate"
    link="latency=$LATENCY,bw=$rate/s"
    for num_stages in 1 2 3; do
        bench_row "$num_stages" "$link" "$rate $num_stages stages" "$coord_ns" "${places[@]}"
    done
    if [[ ${SPLIT:-1} == 1 ]]; then
        split_rows "$link" "$rate" "$coord_ns" "${places[0]}"
    fi
done
echo "model $MODEL; prompt $PROMPT tokens, $GEN generated, $REPS timed runs; links: tbf at $RATES, predicted latency $LATENCY"
