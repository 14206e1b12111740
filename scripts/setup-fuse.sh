#!/usr/bin/env bash
# Best-effort setup for the lazy mount (syncd mount, tests/test_mount*.py):
# the Debian packages fuse3 (fusermount3), libfuse3-dev and pkg-config (to build
# pyfuse3), then the `mount` extra into the virtualenv given as $1.
# Never fails the caller: if anything is missing the mount tests skip and say why.
set -uo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
if ! pkg-config --exists fuse3 2>/dev/null || ! command -v fusermount3 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup-fuse: installing fuse3 libfuse3-dev pkg-config" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse3-dev pkg-config) \
            >/dev/null 2>&1 || echo "setup-fuse: apt-get failed; the mount tests will skip" >&2
    else
        echo "setup-fuse: fuse3 headers missing and not root with apt-get; the mount tests will skip" >&2
    fi
fi
if ! "$VENV/bin/python" -c "import pyfuse3" >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install --quiet -e ".[mount]" >/dev/null 2>&1 \
        || echo "setup-fuse: pip install .[mount] failed; the mount tests will skip" >&2
fi
exit 0
