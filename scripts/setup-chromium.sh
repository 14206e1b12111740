#!/usr/bin/env bash
# Best-effort: Debian's chromium for tests/test_status_pages.py (the status pages in a real
# browser). Never fails the caller: without it that test skips and says why.
set -uo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup-chromium: installing chromium" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
            >/dev/null 2>&1 || echo "setup-chromium: apt-get failed; the status page test will skip" >&2
    else
        echo "setup-chromium: no chromium and not root with apt-get; the status page test will skip" >&2
    fi
fi
exit 0
