#!/usr/bin/env bash
# Runs hearth's whole test suite on CPU: sets up (idempotent: assets, cargo-nextest, the serving
# tests' Python venv through scripts/python-env.sh), then `cargo nextest run` over the
# workspace. The build directory is shared outside the clone so repeated runs are incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hearth/target}"
bash scripts/setup.sh
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"
