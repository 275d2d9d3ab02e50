#!/usr/bin/env bash
# Builds hearth with `--features cuda` on a machine without a GPU (toolkit from
# scripts/cuda-toolkit.sh) and copies stripped binaries into .device-bin/ for a GPU machine:
#   .device-bin/hearth               the CLI
#   .device-bin/hearth-kernels-tests the kernels crate's test binary (CUDA tests included)
#
#   CARGO_TARGET_DIR  default ~/.cache/hearth/target-cuda (kept apart from the CPU build)
#   HEARTH_CUDA_SKIP_TESTS=1  build only the CLI
#
# At run time the binaries need the driver's libcuda.so.1 and libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10, libnvrtc.so.13 (e.g. the pip wheels' nvidia/cu13/lib on LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash scripts/cuda-toolkit.sh)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hearth/target-cuda}"
OUT=.device-bin
mkdir -p "$OUT"

log() { echo "[cuda-build] $*" >&2; }

nice -n 19 cargo build --release --features cuda --bin hearth
strip -o "$OUT/hearth" "$CARGO_TARGET_DIR/release/hearth"
log "$OUT/hearth ($(du -h "$OUT/hearth" | cut -f1))"

if [ "${HEARTH_CUDA_SKIP_TESTS:-0}" != 1 ]; then
  # The last line of cargo's JSON messages names the test executable.
  test_bin="$(nice -n 19 cargo test --release --features cuda -p hearth-kernels --lib --no-run \
    --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "hearth_kernels":
        print(m["executable"])')"
  if [ -z "$test_bin" ]; then
    log "could not find the hearth-kernels test binary"
    exit 1
  fi
  strip -o "$OUT/hearth-kernels-tests" "$test_bin"
  log "$OUT/hearth-kernels-tests ($(du -h "$OUT/hearth-kernels-tests" | cut -f1))"
fi
du -sh "$OUT" >&2
