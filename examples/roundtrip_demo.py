"""Round trip on an embedded SeaweedFS: commit a directory, hydrate it elsewhere, compare.

Run through ``scripts/demo.sh`` (which sets up the virtualenv), or directly with
``python examples/roundtrip_demo.py`` inside one.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from syncd.store.devserver import CREDENTIALS, SeaweedServer


def syncd(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "syncd", *args], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="syncd-demo-") as tmp:
        root = Path(tmp)
        with SeaweedServer(root / "seaweedfs") as server:
            base = {**os.environ, **CREDENTIALS, "SYNCD_S3_ENDPOINT": server.endpoint,
                    "SYNCD_BUCKET": "demo", "SYNCD_OWNER": "alice"}
            worker_a = {**base, "SYNCD_CACHE_DIR": str(root / "a/cache"), "SYNCD_STATE_DIR": str(root / "a/state")}
            worker_b = {**base, "SYNCD_CACHE_DIR": str(root / "b/cache"), "SYNCD_STATE_DIR": str(root / "b/state")}
            src = root / "a/my-volume"
            (src / "model-1a").mkdir(parents=True)
            (src / "model-1a" / "weights.bin").write_bytes(os.urandom(20 * 1024 * 1024))
            for i in range(200):
                (src / "model-1a" / f"log_{i:03}.txt").write_text(f"step {i}\n")
            print(f"SeaweedFS at {server.endpoint}; committing {src} from worker A")
            print(syncd(worker_a, "commit", "my-volume", str(src)))
            dst = root / "b/my-volume"
            print(f"hydrating on worker B into {dst}")
            print(syncd(worker_b, "hydrate", "my-volume", str(dst)))
            cmp = filecmp.dircmp(src, dst)
            same = not cmp.diff_files and not cmp.left_only and not cmp.right_only and all(
                filecmp.cmp(src / "model-1a" / n, dst / "model-1a" / n, shallow=False)
                for n in os.listdir(src / "model-1a"))
            print("round trip byte-identical:", same)
            return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
