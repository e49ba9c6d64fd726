#!/usr/bin/env bash
# Installs what the tests need (into .venv unless a virtual environment is active) and runs them.
# Extra arguments go to pytest, e.g. `bash run_tests.sh -m "not slow"` or `bash run_tests.sh tests/ops`.
set -euo pipefail
cd "$(dirname "$0")"
SSD_TF_EXTRAS=test . scripts/ensure_env.sh
exec python -m pytest "$@"
