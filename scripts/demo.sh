#!/usr/bin/env bash
# The README's demo: set up a virtualenv with syncd, then run the product page's
# workflow across two workers (two `syncd agent` processes) on an embedded S3 server.
# Every process the demo starts is stopped when it ends, on failure and on Ctrl-C too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SYNCD_VENV:-.venv}
export SYNCD_DEMO_DIR=${SYNCD_DEMO_DIR:-$PWD/.demo}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install --quiet -e ".[demo]"

# Kill whatever the demo recorded and did not stop itself (it was killed, say).
cleanup() {
    local pidfile="$SYNCD_DEMO_DIR/pids" pid
    [ -f "$pidfile" ] || return 0
    while read -r pid; do
        [ -n "$pid" ] || continue
        if grep -qaE 'weed|syncd' "/proc/$pid/cmdline" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done < "$pidfile"
}

"$VENV/bin/python" examples/workflow_demo.py "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM
trap cleanup EXIT
status=0
wait "$child" || status=$?
while kill -0 "$child" 2>/dev/null; do   # a signal interrupted wait: let the demo clean up
    wait "$child" || status=$?
done
exit "$status"
