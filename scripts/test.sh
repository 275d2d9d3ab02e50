#!/usr/bin/env bash
# Runs hearth's whole test suite on CPU: sets up (idempotent: assets, cargo-nextest, the serving
# tests' Python venv through scripts/python-env.sh), then `cargo nextest run` over the
# workspace, then checks that the `cuda` feature still builds. The build directories are shared
# outside the clone so repeated runs are incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hearth/target}"
# Incremental caches of optimized dev builds grow by gigabytes per change (one filled the disk);
# the shared target directory already makes rebuilds incremental per crate.
export CARGO_INCREMENTAL=0
bash scripts/setup.sh
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"
# The `cuda` feature must keep building on a machine without a GPU: a compile check (no GPU code
# runs) against the pip-wheel toolkit, in the GPU build's own cached target directory
# (scripts/cuda-build.sh), so it is incremental after the first run. HEARTH_SKIP_CUDA_CHECK=1
# skips it.
if [ "${HEARTH_SKIP_CUDA_CHECK:-0}" != 1 ]; then
  (
    eval "$(bash scripts/cuda-toolkit.sh)"
    export CARGO_TARGET_DIR="$HOME/.cache/hearth/target-cuda"
    nice cargo build --release --locked --features cuda --bin hearth
    # Our CUDA C is compiled by NVRTC at run time; compiling it needs no GPU, so every source
    # is compiled here (the driver stub satisfies the loader; no driver call is made).
    cuda_lib="$(dirname "$(command -v nvcc)")/../lib"
    LD_LIBRARY_PATH="$cuda_lib/stubs:$cuda_lib:${LD_LIBRARY_PATH:-}" \
      nice cargo test --release --locked --features cuda -p hearth-kernels --lib compiles
  )
fi
