#!/usr/bin/env bash
# Creates the Python environment of the serving e2e tests (tests/e2e) and the serving benchmark
# (scripts/bench_serve.py): a venv outside the clone with the official `openai` client, pinned by
# scripts/requirements-serve.txt. Idempotent and quick when present: the venv records the hash of
# the requirements it was built from and is rebuilt only when they change or it is broken.
#
#   HEARTH_SERVE_VENV   where the venv lives (default ${HEARTH_HOME:-~/.cache/hearth}/venv-serve)
#
# Prints nothing when the venv is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${HEARTH_SERVE_VENV:-${HEARTH_HOME:-$HOME/.cache/hearth}/venv-serve}"
REQS=scripts/requirements-serve.txt
STAMP="$VENV/.hearth-requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"

log() { echo "[python-env] $*" >&2; }

if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ] \
  && "$VENV/bin/python" -c 'import openai' >/dev/null 2>&1; then
  exit 0
fi
if ! command -v python3 >/dev/null; then
  log "python3 (with venv and pip) is needed for the serving tests"
  exit 1
fi
log "creating $VENV"
mkdir -p "$(dirname "$VENV")"
# A half-built or outdated venv is replaced whole; build next to it, then swap.
rm -rf "$VENV.tmp"
python3 -m venv "$VENV.tmp"
"$VENV.tmp/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQS"
echo "$want" > "$VENV.tmp/.hearth-requirements.sha256"
rm -rf "$VENV"
mv "$VENV.tmp" "$VENV"
# venv scripts hard-code their directory; fix the shebangs after the move.
grep -rlI --null "^#!$VENV.tmp/bin/python" "$VENV/bin" 2>/dev/null \
  | xargs -0 -r sed -i "1s|^#!$VENV.tmp/bin/python|#!$VENV/bin/python|"
sed -i "s|$VENV.tmp|$VENV|g" "$VENV/bin/activate" "$VENV/pyvenv.cfg" 2>/dev/null || true
"$VENV/bin/python" -c 'import openai; print(f"[python-env] openai {openai.__version__} in '"$VENV"'")' >&2
