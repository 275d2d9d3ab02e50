#!/usr/bin/env bash
# Restores the binaries scripts/cuda-build.sh packed: .device-bin/NAME.xz -> .device-bin/NAME
# (executable). Uses xz when installed, else Python's lzma. Run on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
for packed in .device-bin/*.xz; do
  out="${packed%.xz}"
  if command -v xz >/dev/null; then
    xz -dc "$packed" > "$out"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$packed" "$out"
  fi
  chmod +x "$out"
  echo "$out"
done
