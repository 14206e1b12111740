#!/usr/bin/env bash
# Set up a virtualenv with syncd, start an embedded SeaweedFS and run the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SYNCD_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
exec "$VENV/bin/python" examples/roundtrip_demo.py
