#!/usr/bin/env bash
# Installs what the tests need (into .venv unless a virtual environment is active) and runs them.
# Extra arguments go to pytest, e.g. `bash run_tests.sh -m "not slow"` or `bash run_tests.sh tests/ops`.
#
# The test dependencies include torch + torchvision (the `torch` extra: about 5.5 GB), so the parity tests
# against torchvision run and cannot be skipped by accident. SSD_TF_TEST_EXTRAS=test leaves torch out; those
# tests then skip with a reason.
set -euo pipefail
cd "$(dirname "$0")"
SSD_TF_EXTRAS="${SSD_TF_TEST_EXTRAS-test,torch}" . scripts/ensure_env.sh
case ",${SSD_TF_TEST_EXTRAS-test,torch}," in
  *,torch,*) export SSD_TF_REQUIRE_TORCH=1 ;;
esac
# Two worker processes (SSD_TF_TEST_WORKERS=0 runs in this one), a test file per worker at a time.
exec python -m pytest -n "${SSD_TF_TEST_WORKERS:-2}" --dist loadfile "$@"
