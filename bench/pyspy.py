"""py-spy for the benchmarks: record a process, then say where its busy CPU went.

``record(pid, out)`` starts ``py-spy record`` (raw collapsed stacks, 250 Hz)
on a running process until ``stop(proc)`` SIGINTs it; ``summarize(path)``
reads such a file and gives the busy samples by category (the frame nearest
the leaf that matches one of ``CATEGORIES``) and by leaf function. Threads
that only wait (a worker thread parked on its queue, the selector's epoll)
are left out: py-spy's own idle detection misses those blocking waits.
Used by bench/fanout.py, bench/fleet.py and bench/mount.py.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

RATE = 250

# Where a gateway's or a worker's CPU went: a stack counts for the frame nearest its leaf that
# contains one of these substrings (the first of them, in this order, that it contains).
CATEGORIES = (
    ("sendfile (cache files, spooled flights)", "_sock_sendfile"),
    ("hashing (xxh3)", "chunking.py"),
    ("socket writes of streamed flight pieces", "_SelectorSocketTransport.write"),
    ("diskcache (SQLite index, files)", "diskcache/"),
    ("store reads (obstore)", "obstore"),
    ("store reads (aiobotocore)", "botocore/"),
    ("metrics", "prometheus_client/"),
    ("HTTP client (aiohttp, workers)", "aiohttp/client"),
    ("HTTP (aiohttp)", "aiohttp/"),
    ("hydrate: writing files", "hydrate.py"),
    ("chunk cache", "data/cache.py"),
    ("gateway code", "gateway/"),
    ("tree codec (format/tree*.py, msgspec)", "syncd/format/tree"),
    ("lazy mount (FUSE requests, inode table)", "syncd/mount/"),
    ("syncd code", "syncd/"),
    ("event loop, threads", "asyncio/"),
    ("imports (start-up)", "<frozen importlib"),
)


# Leaves where a thread only waits (py-spy's idle detection misses these blocking waits).
IDLE = ("_worker (concurrent/futures/thread.py", "EpollSelector.select (selectors.py", "wait (threading.py")


def category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, key in CATEGORIES:
            if key in frame:
                return name
    return "other"


def summarize(path: Path, top: int = 15) -> str:
    """Busy samples of a py-spy raw profile, by category and by leaf function (waiting threads left out)."""
    kinds: dict[str, int] = {}
    own: dict[str, int] = {}
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        if any(frames[-1].startswith(i) for i in IDLE):
            idle += n
            continue
        kinds[category(frames)] = kinds.get(category(frames), 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    busy = max(1, total - idle)
    lines = [f"{path.name}: {total} samples (py-spy, {RATE} Hz), {idle} of them threads waiting; "
             f"percentages of the {busy} busy ones ({busy / RATE:.1f} s)", "", "by category:"]
    lines += [f"{100 * n / busy:6.1f}%  {name}" for name, n in sorted(kinds.items(), key=lambda x: -x[1])]
    lines += ["", "self time by function:"]
    lines += [f"{100 * n / busy:6.1f}%  {name}" for name, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines) + "\n"


def record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` (raw collapsed stacks, 250 Hz) until the process exits or is SIGINTed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(RATE),
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summarize_dir(directory: Path, pattern: str = "*.txt") -> None:
    """A ``.summary`` beside every raw profile in ``directory`` matching ``pattern``."""
    for raw in sorted(directory.glob(pattern)):
        raw.with_suffix(".summary").write_text(summarize(raw))
