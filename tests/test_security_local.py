"""Issue 10, the worker side: a task sharing a volume with a root agent, hostile volumes, strict names.

Each test is the regression test of one finding of the security review
(docs/SECURITY.md names it):

* a task swapping a directory and a symlink (``renameat2(RENAME_EXCHANGE)``)
  in a loop must never make the agent's write-back store bytes from outside
  the volume (a real race, as ``nobody``, for 15 s: needs root and setpriv);
* a symlink swapped for a directory while the scan runs is a change, not an error;
* a small symlink farm must not stall the event loop (a watchdog task counts stalls);
* names and ids ending in a newline are refused everywhere they enter;
* the mount directory is never followed if it is a symlink, and SYNCD_ROOT is
  never created writable by others, whatever the agent's umask;
* reserved ``.syncd-tmp-*`` names and components over 255 bytes fail manifest validation.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.errors import InvalidName, ManifestError, SyncdError
from syncd.format import manifest
from syncd.format.chunking import content_id, is_content_id
from syncd.format.layout import Layout, validate_name
from syncd.format.manifest import Entry
from syncd.local import scan as localscan

from .agentutil import Agents
from .gatewayutil import serve_gateway
from .test_hostile import stored, valid_doc
from .test_security import raw

NOBODY = 65534
SWAP_SECONDS = 15.0
STALL_BOUND = 0.05   # seconds of event-loop lag that count as a stall


# ---------------------------------------------------------------- 1. the RENAME_EXCHANGE race

SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
renameat2 = libc.renameat2
renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
AT_FDCWD, RENAME_EXCHANGE = -100, 2
os.chdir(sys.argv[1])
assert os.getuid() != 0
end = time.monotonic() + float(sys.argv[2])
swaps = 0
while time.monotonic() < end or os.path.islink("d"):
    if renameat2(AT_FDCWD, b"d", AT_FDCWD, b"l", RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
    swaps += 1
print(swaps)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the race needs root (a root agent, a task dropped to nobody)")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="the race needs setpriv to drop to nobody")
def test_rename_exchange_race_never_commits_bytes_from_outside_the_volume(
        config: Config, agents: Agents, open_dir: Path) -> None:
    secret_dir = open_dir / "root-only"
    secret_dir.mkdir(mode=0o700)
    secret = b"SECRET-" + os.urandom(24).hex().encode() + b"\n"
    for i in range(10):                                          # the same names as the task's files
        (secret_dir / f"loot{i}.txt").write_bytes(secret + b"%d" % i)
    (secret_dir / "secret-only-name.txt").write_bytes(secret * 2)
    for f in secret_dir.iterdir():
        f.chmod(0o600)
    worker = config.replace(root=open_dir / "volumes")
    agent = agents.start(worker, "--max-delay", "0.5")
    agent.client.call("POST", "/v1/volumes/vol/mount")
    work = worker.root / "vol" / "work"
    (work / "d").mkdir(parents=True)
    for i in range(10):
        (work / "d" / f"loot{i}.txt").write_bytes(b"the task's own file %d\n" % i)
    (work / "l").symlink_to(secret_dir)
    for path in (work, *work.rglob("*")):
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    commits_before = agent.mount_status("vol")["commits"]
    swapper = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "/usr/bin/python3", "-c",
         SWAPPER, str(work), str(SWAP_SECONDS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refused: list[str] = []
    try:
        while swapper.poll() is None:          # commits on request too, besides the write-back
            try:
                agent.client.call("POST", "/v1/volumes/vol/commit")
            except SyncdError as exc:
                refused.append(str(exc))
        out, err = swapper.communicate()
        assert swapper.returncode == 0, err
        assert int(out) > 1000                                  # it really raced
        during = agent.mount_status("vol")["commits"] - commits_before
        assert during >= 5, f"only {during} commit(s) ran during the race"
        agent.client.call("POST", "/v1/volumes/vol/commit")
        assert agent.terminate() == 0
    finally:
        agents.kill_all()
    found = asyncio.run(_stored_objects(worker, "vol"))
    assert any(k.split("/")[-2] == "snapshots" for k in found)
    for key, data in found.items():
        assert secret not in data, f"{key} holds the root-only file's bytes"
    history = asyncio.run(_every_snapshot(worker, "vol"))    # format v2: trees are compressed, so decode them
    assert history
    for sid, entries in history:
        for path, entry in entries.items():
            assert content_id(secret) not in {c.id for c in entry.chunks}, f"{sid} names the root-only file's content"
            assert "secret-only-name" not in path, f"{sid} lists the root-only directory"
            if entry.kind == "symlink":
                assert entry.target is not None and not entry.target.startswith("/")
    assert refused == [], (refused[:3], agent.log()[-3000:])   # what moved is a change to commit later, never an error


async def _every_snapshot(config: Config, volume: str) -> list[tuple[str, dict[str, Entry]]]:
    async with open_engine(config, use_cache=False) as engine:
        return [(sid, dict(snap.entries)) for sid, snap in await engine.repo.history(volume)]


async def _stored_objects(config: Config, volume: str) -> dict[str, bytes]:
    async with open_engine(config, use_cache=False) as engine:
        keys = [o.key async for o in engine.store.list_objects(engine.layout.volume_prefix(volume))]
        return {k: (await engine.store.get(k)).data for k in keys}


def test_symlink_swapped_for_a_directory_during_the_scan_is_a_change_not_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan saw ``x`` as a symlink; before it reads the link, a task replaced it with a directory."""
    root = tmp_path / "vol"
    root.mkdir()
    (root / "x").symlink_to("elsewhere")
    (root / "f.txt").write_text("f")
    real_readlink = os.readlink
    swapped: list[str] = []

    def racing_readlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> str:
        if os.path.basename(os.fspath(path)) == "x" and not swapped:
            swapped.append("x")
            os.unlink(root / "x")
            (root / "x").mkdir()
            (root / "x" / "inside.txt").write_text("in")
        return real_readlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "readlink", racing_readlink)
    found = localscan.scan_sync(root)
    assert swapped == ["x"]
    assert found["x"].kind == "dir" and found["x/inside.txt"].kind == "file"
    assert found["f.txt"].kind == "file"


# ---------------------------------------------------------------- 2. the symlink farm

class Watchdog:
    """Counts event-loop stalls: ticks that came back more than ``bound`` seconds late *because the loop's
    own thread was busy* (it used more than ``bound`` seconds of CPU in between). A tick that is late only
    because a loaded machine did not schedule the process is not the loop's fault and is not counted."""

    def __init__(self, bound: float = STALL_BOUND, tick: float = 0.005) -> None:
        self.bound, self.tick = bound, tick
        self.stalls: list[float] = []
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started, cpu = loop.time(), time.thread_time()
            await asyncio.sleep(self.tick)
            lag = loop.time() - started - self.tick
            busy = time.thread_time() - cpu
            self.ticks += 1
            if lag > self.bound and busy > self.bound:
                self.stalls.append(round(busy, 3))

    async def __aenter__(self) -> Watchdog:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


def make_farm(root: Path) -> None:
    """425 bytes of symlinks that all stay inside, but cost seconds to resolve naively."""
    root.mkdir(parents=True)
    (root / "y").symlink_to("a/" * 800 + "../" * 800)
    for i in range(60):
        (root / f"z{i}").symlink_to("y/" * 39)
    (root / "data.txt").write_text("ordinary file\n")


async def test_a_symlink_farm_does_not_stall_the_agent_or_the_gateway(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "farm"
    make_farm(src)
    async with open_engine(config) as engine, Watchdog() as agent_side:
        result = await commit(engine, "farm", src)              # what the agent's write-back runs
        await hydrate(engine, "farm", tmp_path / "copy")        # and its mount
    assert result.snapshot is not None
    assert os.readlink(tmp_path / "copy" / "z7") == "y/" * 39   # the links are data, kept as they are
    assert agent_side.ticks > 0 and agent_side.stalls == [], agent_side.stalls
    async with serve_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as http:
        async with Watchdog() as gateway_side:
            async with http.post(f"{gw.url}/v1/alice/farm/warm", json={}) as resp:
                assert resp.status == 200
            async with http.get(f"{gw.url}/healthz") as resp:
                assert resp.status == 200
    assert gateway_side.stalls == [], gateway_side.stalls


def test_symlink_resolution_is_linear_and_keeps_the_kernels_limits() -> None:
    from syncd.format.manifest import Entry
    # 41 links deep is more than the kernel follows (ELOOP): refused, like a loop
    chain = {f"c{i}": Entry(f"c{i}", "symlink", 0o777, target=f"c{i + 1}") for i in range(41)}
    chain["c41"] = Entry("c41", "dir", 0o755)
    assert "c0" in manifest.escaping_symlinks(chain) and "c1" not in manifest.escaping_symlinks(chain)
    loop = {"p": Entry("p", "symlink", 0o777, target="q"), "q": Entry("q", "symlink", 0o777, target="p")}
    assert sorted(manifest.escaping_symlinks(loop)) == ["p", "q"]
    assert not manifest.symlink_stays_inside("l", "a" * 4097)   # PATH_MAX


# ---------------------------------------------------------------- 3. strict names and ids

@pytest.mark.parametrize("name", ["avol\n", "avol\r\n", "\navol", "av\nol", "avol\x00"])
def test_names_ending_in_a_newline_are_invalid(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_name(name)
    with pytest.raises(InvalidName):
        Layout("p", name)
    with pytest.raises(InvalidName):
        Layout("p", "alice").volume_prefix(name)
    from syncd.sdk.volume import Volume
    with pytest.raises(InvalidName):
        Volume(name)                               # the SDK checks before any request


def test_ids_ending_in_a_newline_are_invalid() -> None:
    cid = "ab" * 16
    assert is_content_id(cid)
    for bad in [cid + "\n", "\n" + cid, cid[:-1] + "\n"]:
        assert not is_content_id(bad)
        with pytest.raises(InvalidName):
            Layout("p", "alice").chunk("vol", bad)
    doc = valid_doc()
    doc["parent"] = cid + "\n"
    with pytest.raises(ManifestError):
        manifest.decode(stored(doc))


def test_the_agent_api_refuses_names_ending_in_a_newline(config: Config, agents: Agents) -> None:
    agents.start(config)
    for method, path in [("POST", "/v1/volumes/avol%0A/mount"), ("POST", "/v1/volumes/avol%0A/commit"),
                         ("GET", "/v1/volumes/avol%0A"), ("DELETE", "/v1/volumes/avol%0A"),
                         ("POST", "/v1/volumes/avol%0D%0A/mount")]:
        status, body = raw(config.socket, method, path, owner="alice")
        assert (status, json.loads(body)["error"]) == (400, "InvalidName"), (path, body)
    status, body = raw(config.socket, "GET", "/v1/volumes", owner="alice")
    assert status == 200 and json.loads(body)["volumes"] == []
    assert not config.root.exists() or os.listdir(config.root) == [".agent.lock"]   # the agent's own lock only


# ---------------------------------------------------------------- manifests: reserved names, long components

@pytest.mark.parametrize("path", [".syncd-tmp-0a1b2c", "d/.syncd-tmp-x", "d/" + "x" * 256,
                                  "d/" + "é" * 128])
def test_reserved_and_overlong_names_fail_manifest_validation(path: str) -> None:
    doc = valid_doc()
    doc["entries"].append({"path": path, "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 0,
                           "chunks": []})
    with pytest.raises(ManifestError):
        manifest.decode(stored(doc))
    ok = valid_doc()
    ok["entries"].append({"path": "d/" + "x" * 255, "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 0,
                          "chunks": []})
    manifest.decode(stored(ok))                     # 255 bytes is the kernel's limit, and allowed


# ---------------------------------------------------------------- the mount directory and SYNCD_ROOT

def test_a_symlinked_mount_directory_is_never_followed(config: Config, agents: Agents, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.txt").write_text("not the volume's")
    config.root.mkdir(mode=0o755)
    (config.root / "vol").symlink_to(outside)            # planted before the mount
    agent = agents.start(config)
    status, body = raw(config.socket, "POST", "/v1/volumes/vol/mount", owner="alice")
    assert status == 409, body
    assert "symlink" in json.loads(body)["message"]
    assert sorted(os.listdir(outside)) == ["private.txt"]
    assert agent.status()["mounts"] == []
    async def latest() -> dict[str, object]:
        async with open_engine(config, use_cache=False) as engine:
            _, snap = await engine.repo.latest("vol")
        return dict(snap.entries) if snap else {}
    assert asyncio.run(latest()) == {}                   # nothing of outside was committed


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the modes a root agent gives the directories it creates")
def test_syncd_root_and_mount_directories_are_private_whatever_the_umask(
        config: Config, agents: Agents, tmp_path: Path) -> None:
    old = os.umask(0)     # the worst case, as for the socket
    try:
        agent = agents.start(config)
    finally:
        os.umask(old)
    agent.client.call("POST", "/v1/volumes/vol/mount")
    for path in (config.root, config.root / "vol"):
        st = os.lstat(path)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
        assert stat.S_IMODE(st.st_mode) & 0o022 == 0, f"{path} is {oct(stat.S_IMODE(st.st_mode))}"
    config.root.chmod(0o777)               # someone loosened it: the agent refuses to use it
    status, body = raw(config.socket, "POST", "/v1/volumes/other/mount", owner="alice")
    assert status == 400 and "SYNCD_ROOT" in json.loads(body)["message"], body
    assert not (config.root / "other").exists()


def test_a_fifo_in_place_of_a_file_never_blocks_a_read(tmp_path: Path) -> None:
    """A task swaps a file being committed (or verified by hydrate) for a FIFO: the open must not block."""
    import threading

    from syncd.errors import LocalIOError
    from syncd.local import dirfd
    from syncd.local import fs as localfs
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "f")
    outcome: list[object] = []

    def read() -> None:
        try:
            localfs.open_read(tmp_path, "sub/f")
            outcome.append("opened")
        except LocalIOError:
            outcome.append("refused")
        outcome.append(dirfd.open_file(tmp_path, "sub/f"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    if reader.is_alive():       # unblock it: a writer end lets the blocked open return
        with open(tmp_path / "sub" / "f", "wb"):
            pass
    assert outcome == ["refused", None]
