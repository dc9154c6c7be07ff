#!/usr/bin/env bash
# Run the benchmark: bench/run.sh [--setup] [python -m bench options...]
#
#   --setup   first install what the harness needs: wrk and nginx-light (Debian), py-spy into
#             this Python's environment, and LiteLLM's proxy into bench/.venv-litellm.
#
# PYTHON picks the interpreter that has mavera-gateway installed (default: .venv/bin/python,
# then /tmp/venv/bin/python, then python3).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  for candidate in .venv/bin/python /tmp/venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi

if [[ "${1:-}" == "--setup" ]]; then
  shift
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nginx-light
  "$PYTHON" -m pip install -q py-spy
  if [[ ! -x bench/.venv-litellm/bin/litellm ]]; then
    python3 -m venv bench/.venv-litellm
    bench/.venv-litellm/bin/pip install -q 'litellm[proxy]==1.106.2'
  fi
fi

exec "$PYTHON" -m bench "$@"
