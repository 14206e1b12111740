"""bench/soak.py, short: writers, readers through three gateways, a gateway kill -9 and S3 faults.

The full run is 10 minutes (docs/RELIABILITY.md gives its counts); this one is
long enough for one gateway kill (the first comes 30-60 s in) and checks the
same things: no commit lost, every hydrate equal to a committed snapshot,
``check --read-data`` clean (the script exits 1 on any loss).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_short_soak_loses_nothing(s3_endpoint: str, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "75", "--json", str(out)],
                          env={**os.environ, "SYNCD_S3_ENDPOINT": s3_endpoint}, capture_output=True, text=True,
                          timeout=600, check=False)
    assert out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert proc.returncode == 0 and report["losses"] == [], report
    assert report["commits"] > 0 and report["hydrates"] > 0 and report["gateway_kills"] >= 1
    assert sum(report["faults_injected"].values()) > 0
