#!/usr/bin/env bash
# Builds hearth with `--features cuda` on a machine without a GPU (toolkit from
# scripts/cuda-toolkit.sh) and puts stripped, xz-compressed binaries into .device-bin/ for a GPU
# machine (each embeds candle's PTX, ~60 MB raw, ~9 MB compressed; the device tool carries 64 MiB):
#   .device-bin/hearth.xz               the CLI
#   .device-bin/hearth-kernels-tests.xz the kernels crate's test binary (CUDA tests included)
#   .device-bin/hearth-models-golden.xz  the golden-logits tests (CPU, then CUDA F32 and BF16)
#   .device-bin/hearth-models-{tp,gpu-layers}.xz, hearth-engine-batch-invariance.xz  GPU tests
# scripts/device-unpack.sh restores them next to the .xz files (xz or Python's lzma).
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
# scripts/test.sh's CUDA check (CI, and fresh-clone runs of it) builds the same packages into the
# same directory from another checkout. Cargo names a workspace member's artifacts by package,
# not by path, so after such a run this checkout's older source times made the clone's artifacts
# look fresh, and a test binary without this checkout's newest tests was packed. Newer times on
# our own sources make cargo rebuild hearth's crates (not the dependencies) from this checkout.
find crates -type f \( -name '*.rs' -o -name '*.cu' -o -name '*.cuh' \) -exec touch {} +

log() { echo "[cuda-build] $*" >&2; }

pack() { # binary name: strip, compress into $OUT/name.xz
  strip -o "$OUT/$2" "$1"
  rm -f "$OUT/$2.xz"
  nice -n 19 xz -9 -T2 "$OUT/$2"
  log "$OUT/$2.xz ($(du -h "$OUT/$2.xz" | cut -f1))"
}

nice -n 19 cargo build --release --features cuda --bin hearth
pack "$CARGO_TARGET_DIR/release/hearth" hearth

test_binary() { # out-name target-name cargo-test-args...: build one test executable, pack it
  local out="$1" target="$2"
  shift 2
  local bin
  bin="$(nice -n 19 cargo test --release --no-run --message-format=json-render-diagnostics "$@" |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$target")"
  if [ -z "$bin" ]; then
    log "could not find the $target test binary"
    exit 1
  fi
  pack "$bin" "$out"
}

if [ "${HEARTH_CUDA_SKIP_TESTS:-0}" != 1 ]; then
  test_binary hearth-kernels-tests hearth_kernels -p hearth-kernels --features cuda --lib
  # models has no cuda feature; enabling the kernels' one gives its tests candle's CUDA backend.
  test_binary hearth-models-golden golden -p hearth-models --features hearth-kernels/cuda,candle-nn/cuda --test golden
  test_binary hearth-models-tp tensor_parallel -p hearth-models --features hearth-kernels/cuda,candle-nn/cuda --test tensor_parallel
  test_binary hearth-models-gpu-layers gpu_layers -p hearth-models --features hearth-kernels/cuda,candle-nn/cuda --test gpu_layers
  test_binary hearth-engine-batch-invariance batch_invariance -p hearth-engine --features hearth-kernels/cuda,candle-nn/cuda --test batch_invariance
fi
du -sh "$OUT" >&2
