#!/usr/bin/env bash
# Set up a virtualenv with syncd and its test tools; type-check (mypy strict), lint (ruff),
# check the layer contract (import-linter), then run the whole test suite
# against an embedded SeaweedFS (or SYNCD_TEST_S3_ENDPOINT, if set).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SYNCD_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
# The lazy mount's FUSE pieces (Debian fuse3/libfuse3-dev, the 'mount' extra); best-effort:
# where they cannot be installed the mount tests skip and say why.
bash scripts/setup-fuse.sh "$VENV"
# Headless Chromium for the status pages test (best-effort, like FUSE).
bash scripts/setup-chromium.sh
"$VENV/bin/python" -m mypy
"$VENV/bin/ruff" check syncd gateway tests bench examples
"$VENV/bin/lint-imports" --no-cache | tail -n 3
exec "$VENV/bin/python" -m pytest -q "$@"
