#!/usr/bin/env bash
# Prepares the CUDA 13.0 toolkit hearth's `cuda` feature builds against, from pinned pip wheels
# (DESIGN.md §4), on a machine without a GPU. Idempotent; everything lives outside the clone.
#
#   HEARTH_CUDA_ROOT   where the toolkit goes (default ~/.cache/hearth/cuda-13.0)
#
# Layout written:
#   $CUDA_ROOT/{bin,include,nvvm,lib}   the wheels' nvidia/cu13 trees merged; lib64 -> lib
#   $CUDA_ROOT/lib/lib*.so              unversioned links for the linker (cublas, nvrtc, ...)
#   $CUDA_ROOT/lib/stubs/libcuda.so{,.1} a stub driver: one function per `cu*` symbol cudarc
#                                       declares, each returning CUDA_ERROR_STUB_LIBRARY (34)
#
# Prints the environment a build needs (`eval "$(scripts/cuda-toolkit.sh)"` applies it); build
# logs go to stderr. scripts/cuda-build.sh runs the whole GPU build.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT="${HEARTH_CUDA_ROOT:-$HOME/.cache/hearth/cuda-13.0}"
WHEELS="$(dirname "$ROOT")/cuda-wheels"
PINNED=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)
# Bump when the layout below changes so old caches are rebuilt.
STAMP="$ROOT/.hearth-toolkit-v1"

log() { echo "[cuda-toolkit] $*" >&2; }

wheel_path() { # name==version -> the wheel file, if downloaded
  local name="${1%%==*}" ver="${1##*==}"
  compgen -G "$WHEELS/${name//-/_}-${ver}-*.whl" | head -n1 || true
}

cudarc_sys() { # the driver bindings of the cudarc version in Cargo.lock
  local ver
  ver="$(awk '/^name = "cudarc"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
  if [ -z "$ver" ]; then
    log "cudarc is not in Cargo.lock (is the cuda feature declared?)"
    exit 1
  fi
  local dir
  dir="$(compgen -G "$HOME/.cargo/registry/src/*/cudarc-$ver/src/driver/sys/mod.rs" | head -n1 || true)"
  if [ -z "$dir" ]; then
    cargo fetch --quiet >&2
    dir="$(compgen -G "$HOME/.cargo/registry/src/*/cudarc-$ver/src/driver/sys/mod.rs" | head -n1)"
  fi
  echo "$dir"
}

build_toolkit() {
  mkdir -p "$WHEELS"
  local missing=()
  for spec in "${PINNED[@]}"; do
    [ -n "$(wheel_path "$spec")" ] || missing+=("$spec")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "downloading ${missing[*]}"
    python3 -m pip download --quiet --no-deps -d "$WHEELS" "${missing[@]}" >&2
  fi

  local tmp="$ROOT.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp/unpack"
  for spec in "${PINNED[@]}"; do
    unzip -q -o "$(wheel_path "$spec")" 'nvidia/cu13/*' -d "$tmp/unpack"
  done
  mv "$tmp/unpack/nvidia/cu13" "$tmp/root"
  rm -rf "$tmp/unpack" "$tmp/root/.metadata"
  chmod +x "$tmp/root/bin/"* "$tmp/root/nvvm/bin/"* 2>/dev/null || true

  # Unversioned names for `-l` (the wheels ship only the runtime sonames).
  local lib="$tmp/root/lib"
  for so in "$lib"/lib*.so.*; do
    local base="${so##*/}"
    local plain="${base%%.so.*}.so"
    [ -e "$lib/$plain" ] || ln -s "$base" "$lib/$plain"
  done
  ln -sfn lib "$tmp/root/lib64"

  # Stub driver: cudarc links `-lcuda`; the real libcuda.so.1 comes from the GPU driver.
  mkdir -p "$lib/stubs"
  grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$(cudarc_sys)" | awk '{print $4}' | sort -u |
    awk '{ printf "int %s(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }\n", $1 }' \
      > "$lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$lib/stubs/libcuda.so.1" "$lib/stubs/libcuda_stub.c"
  ln -sfn libcuda.so.1 "$lib/stubs/libcuda.so"
  log "stub libcuda: $(grep -c '^int ' "$lib/stubs/libcuda_stub.c") symbols"

  rm -rf "$ROOT"
  mv "$tmp/root" "$ROOT"
  rmdir "$tmp"
  touch "$STAMP"
}

if [ ! -f "$STAMP" ]; then
  log "preparing CUDA 13.0 under $ROOT"
  build_toolkit
fi
"$ROOT/bin/nvcc" --version >/dev/null || { log "nvcc in $ROOT does not run"; exit 1; }

cat <<EOF
export CUDA_ROOT="$ROOT"
export CUDA_HOME="$ROOT"
export PATH="$ROOT/bin:\$PATH"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export CUDAFORGE_THREADS="\${CUDAFORGE_THREADS:-2}"
export LIBRARY_PATH="$ROOT/lib:$ROOT/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
EOF
