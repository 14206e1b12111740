"""A mounted volume that vanishes (renamed or deleted elsewhere) loses no local write (issue 24 item 2)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from syncd import volume
from syncd.agent.orphans import ORPHANED, set_aside
from syncd.cli.core import main
from syncd.config import Config
from syncd.engine.wiring import open_engine
from syncd.local.index import LocalIndex

from .agentutil import Agents, env_for, latest_files, wait_for
from .conftest import worker_config

QUIET = ("--debounce", "60", "--max-delay", "120")   # no background commit unless asked


def _orphans(config: Config, name: str) -> list[Path]:
    top = config.root / ORPHANED
    return sorted(top.glob(f"{name}-*")) if top.is_dir() else []


def test_rename_while_mounted_keeps_the_write_that_followed(config: Config, agents: Agents,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's sequence: mount, commit, rename elsewhere, write into the mount, write-back."""
    agent = agents.start(config)
    vol = volume("my_volume", socket_path=config.socket)
    (vol / "committed.txt").write_text("committed before the rename\n")
    (vol / "sub").mkdir()
    (vol / "sub" / "also.txt").write_text("also committed\n")
    vol.commit()
    for key, value in env_for(config).items():
        if key.startswith(("SYNCD_", "AWS_")):
            monkeypatch.setenv(key, value)
    assert main(["volume", "rename", "my_volume", "cov-vol"]) == 0
    (vol.path / "post-rename.txt").write_text("written after the rename\n")
    (vol.path / "sub" / "also.txt").write_text("edited after the rename\n")

    orphans = wait_for(lambda: _orphans(config, "my_volume"), 60, "the write-back to notice the rename")
    wait_for(lambda: "my_volume" not in [m["name"] for m in agent.status()["mounts"]], 60, "the unmount")
    [aside] = orphans
    assert (aside / "post-rename.txt").read_text() == "written after the rename\n"
    assert (aside / "sub" / "also.txt").read_text() == "edited after the rename\n"
    assert not (aside / "committed.txt").exists()         # in the renamed volume: not kept twice
    assert not vol.path.exists()
    assert set(latest_files(config, "cov-vol")) == {"committed.txt", "sub/also.txt"}
    assert "uncommitted path(s)" in agent.log() and str(aside) in agent.log()


def test_a_deleted_volume_with_only_committed_files_leaves_nothing_aside(config: Config, agents: Agents,
                                                                          tmp_path: Path) -> None:
    agents.start(config, *QUIET)
    vol = volume("gone", socket_path=config.socket)
    (vol / "old.txt").write_text("committed\n")
    vol.commit()

    async def delete_elsewhere() -> None:
        async with open_engine(worker_config(config, tmp_path, "laptop")) as engine:
            await engine.repo.delete("gone")
    asyncio.run(delete_elsewhere())
    again = volume("gone", socket_path=config.socket)       # the agent notices on the next mount
    assert list(again.path.iterdir()) == []
    assert _orphans(config, "gone") == []


def test_set_aside_keeps_untracked_and_changed_paths_only(tmp_path: Path) -> None:
    """The pure part, on a plain directory and an empty index: everything is uncommitted."""
    root = tmp_path / "root"
    (root / "v" / "d").mkdir(parents=True)
    (root / "v" / "d" / "f.txt").write_text("x")
    (root / "v" / "link").symlink_to("/etc/passwd")
    kept = set_aside(root, "v", LocalIndex())
    assert kept is not None
    where, paths = kept
    assert paths == ["d", "d/f.txt", "link"]
    assert (where / "d" / "f.txt").read_text() == "x" and (where / "link").is_symlink()
    assert set_aside(root, "v", LocalIndex()) is None          # nothing left at the old place


# ---------------------------------------------------------------- orders of events (set_aside itself)

def _tracked_copy(tmp_path: Path) -> tuple[Path, LocalIndex]:
    """``root/v`` holding two files, both recorded in an index as syncd left them (committed)."""
    from syncd.format.manifest import Entry
    from syncd.local.index import Tracked
    from syncd.local.scan import scan_sync
    root = tmp_path / "root"
    (root / "v" / "d").mkdir(parents=True)
    (root / "v" / "d" / "a.txt").write_text("committed a\n")
    (root / "v" / "b.txt").write_text("committed b\n")
    index = LocalIndex()
    for path, loc in scan_sync(root / "v").items():
        entry = Entry(path, loc.kind, loc.mode, loc.mtime_ns, loc.size, ())
        index.files[path] = Tracked(entry, loc.fingerprint if loc.kind == "file" else None)
    return root, index


def test_only_committed_files_leave_nothing(tmp_path: Path) -> None:
    root, index = _tracked_copy(tmp_path)
    assert set_aside(root, "v", index) is None
    assert not (root / "v").exists() and list((root / ORPHANED).iterdir()) == []


def test_a_file_open_for_writing_is_kept_and_its_later_write_lands_there(tmp_path: Path) -> None:
    """A task that opened a committed file before the rename writes after the agent looked: kept."""
    root, index = _tracked_copy(tmp_path)
    with open(root / "v" / "b.txt", "ab") as writer:      # in flight: open, nothing written yet
        kept = set_aside(root, "v", index)
        writer.write(b"appended by a task after the volume vanished\n")
    assert kept is not None
    where, paths = kept
    assert paths == ["b.txt"]
    assert (where / "b.txt").read_text() == "committed b\nappended by a task after the volume vanished\n"
    assert not (where / "d").exists()                      # the untouched committed file and its dir went


def test_a_file_created_after_the_walk_stops_the_removal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task whose working directory is inside the moved copy creates a file once the walk is done."""
    from syncd.agent import orphans
    root, index = _tracked_copy(tmp_path)
    real_scan = orphans.scan_sync

    def scan_then_write(top: Path, leftovers: list[str] | None = None) -> dict[str, Any]:
        found = real_scan(top, leftovers)
        if leftovers is not None:                          # the first walk; then the task writes
            (top / "late.txt").write_text("written by a task after the walk\n")
        return found
    monkeypatch.setattr(orphans, "scan_sync", scan_then_write)
    kept = set_aside(root, "v", index)
    assert kept is not None and kept[1] == ["late.txt"]
    assert (kept[0] / "late.txt").read_text() == "written by a task after the walk\n"


def test_an_earlier_set_aside_of_the_same_second_is_never_replaced(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd.agent import orphans
    monkeypatch.setattr(orphans, "_stamp", lambda: "20260101T000000Z")
    root = tmp_path / "root"
    places = []
    for i in range(3):                                     # vanished, re-created, vanished again...
        (root / "v").mkdir(parents=True)
        (root / "v" / "mine.txt").write_text(f"uncommitted {i}\n")
        kept = set_aside(root, "v", LocalIndex())
        assert kept is not None
        places.append(kept[0])
    assert [p.name for p in places] == ["v-20260101T000000Z", "v-20260101T000000Z-2", "v-20260101T000000Z-3"]
    assert [(p / "mine.txt").read_text() for p in places] == [f"uncommitted {i}\n" for i in range(3)]
    (root / "v").mkdir()                                   # a file (not a directory) already at the next name
    (root / "v" / "mine.txt").write_text("fourth\n")
    (root / ORPHANED / "v-20260101T000000Z-4").write_text("in the way\n")
    kept = set_aside(root, "v", LocalIndex())
    assert kept is not None and kept[0].name == "v-20260101T000000Z-5"
    assert (root / ORPHANED / "v-20260101T000000Z-4").read_text() == "in the way\n"


def test_a_planted_orphaned_symlink_is_refused_and_nothing_moves(tmp_path: Path) -> None:
    from syncd.errors import LocalIOError
    root = tmp_path / "root"
    (root / "v").mkdir(parents=True)
    (root / "v" / "mine.txt").write_text("uncommitted\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / ORPHANED).symlink_to(elsewhere)
    with pytest.raises(LocalIOError, match="symlink"):
        set_aside(root, "v", LocalIndex())
    assert (root / "v" / "mine.txt").read_text() == "uncommitted\n" and list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------- orders of events (the agent)

def _cli_env(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env_for(config).items():
        if key.startswith(("SYNCD_", "AWS_")):
            monkeypatch.setenv(key, value)


def _written_killed_deleted(config: Config, agents: Agents, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Mount 'gone', commit old.txt, write late.txt, kill -9 the agent, delete the volume: its mount."""
    agent = agents.start(config, *QUIET)
    vol = volume("gone", socket_path=config.socket)
    (vol / "old.txt").write_text("committed\n")
    vol.commit()
    (vol / "late.txt").write_text("uncommitted\n")
    agent.kill()
    _cli_env(config, monkeypatch)
    assert main(["volume", "rm", "gone", "--yes"]) == 0
    return vol


def test_a_volume_deleted_while_the_agent_was_down_is_set_aside_at_restart(config: Config, agents: Agents,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    vol = _written_killed_deleted(config, agents, monkeypatch)
    again = agents.start(config, *QUIET)                  # resumes in the background once it serves
    [aside] = wait_for(lambda: _orphans(config, "gone"), 60, "the restarted agent to set the copy aside")
    wait_for(lambda: not vol.path.exists() and "uncommitted path(s)" in again.log(), 60, "the warning")
    assert sorted(p.name for p in aside.iterdir()) == ["late.txt"]
    assert "uncommitted path(s)" in again.log() and "while the agent was down" in again.log()
    fresh = volume("gone", socket_path=config.socket)       # a new volume of the name starts empty
    assert list(fresh.path.iterdir()) == [] and latest_files(config, "gone") == {}


def test_rename_and_rename_back_before_the_agent_noticed(config: Config, agents: Agents,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The name exists again (a new volume with the same files): the uncommitted write goes there."""
    agent = agents.start(config, *QUIET)
    vol = volume("v1", socket_path=config.socket)
    (vol / "a.txt").write_text("committed\n")
    vol.commit()
    (vol / "b.txt").write_text("uncommitted during the renames\n")
    _cli_env(config, monkeypatch)
    assert main(["volume", "rename", "v1", "v2"]) == 0
    assert main(["volume", "rename", "v2", "v1"]) == 0
    vol.commit()
    assert set(latest_files(config, "v1")) == {"a.txt", "b.txt"}
    assert (vol / "b.txt").read_text() == "uncommitted during the renames\n" and _orphans(config, "v1") == []
    assert agent.mount_status("v1")["last_error"] is None


def test_delete_and_recreate_before_the_agent_noticed(config: Config, agents: Agents, tmp_path: Path) -> None:
    """Another volume of the same name: its files stay, ours (uncommitted) join them, the old ones do not."""
    agents.start(config, *QUIET)
    vol = volume("v1", socket_path=config.socket)
    (vol / "old.txt").write_text("committed to the old volume\n")
    vol.commit()
    (vol / "mine.txt").write_text("uncommitted\n")

    async def replace_elsewhere() -> None:
        async with open_engine(worker_config(config, tmp_path, "laptop")) as engine:
            await engine.repo.delete("v1")
        src = tmp_path / "new-src"
        src.mkdir()
        (src / "theirs.txt").write_text("the new volume's\n")
        from syncd.engine.commit import commit
        async with open_engine(worker_config(config, tmp_path, "laptop2")) as engine:
            await commit(engine, "v1", src)
    asyncio.run(replace_elsewhere())
    again = volume("v1", socket_path=config.socket)        # the agent syncs: commit first, then hydrate
    again.commit()
    assert set(latest_files(config, "v1")) == {"theirs.txt", "mine.txt"}
    assert sorted(p.name for p in again.path.iterdir()) == ["mine.txt", "theirs.txt"]


def test_killed_after_moving_aside_restarts_and_loses_nothing(config: Config, agents: Agents,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The state a kill -9 right after the rename leaves: the copy aside whole, the mount still listed."""
    vol = _written_killed_deleted(config, agents, monkeypatch)
    (config.root / ORPHANED).mkdir()
    vol.path.rename(config.root / ORPHANED / "gone-20260101T000000Z")   # what the dead agent got as far as
    again = agents.start(config, *QUIET)
    wait_for(lambda: "not resumed" in again.log(), 60, "the restarted agent to find the volume gone")
    assert again.status()["mounts"] == []
    [aside] = _orphans(config, "gone")
    assert (aside / "late.txt").read_text() == "uncommitted\n"       # kept (the committed file too: no loss)
    assert list(volume("gone", socket_path=config.socket).path.iterdir()) == []


# ---------------------------------------------------------------- orders of events (the rename itself)

def _first_and_late(tmp_path: Path) -> tuple[Path, Path]:
    """Two directories to commit: ``first.txt`` before the rename, ``late.txt`` racing it."""
    dirs = []
    for name in ("first", "late"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.txt").write_text(f"{name}\n")
        dirs.append(tmp_path / name)
    return dirs[0], dirs[1]


async def test_a_commit_landing_between_the_copy_and_the_lease_is_copied_too(config: Config, tmp_path: Path) -> None:
    """A write-back that lands after the rename copied HEAD: the lease's If-Match fails, the rename copies again."""
    from syncd.engine.commit import commit
    from syncd.engine.rename import rename
    src, late = _first_and_late(tmp_path)
    async with open_engine(config) as renamer, open_engine(worker_config(config, tmp_path, "writer")) as writer:
        await commit(renamer, "old", src)
        real = renamer.repo.take_lease
        calls = 0

        async def commit_first(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                await commit(writer, "old", late)
            return await real(*args, **kwargs)
        renamer.repo.take_lease = commit_first  # type: ignore[method-assign]
        result = await rename(renamer, "old", "new")
        _, snap = await renamer.repo.latest("new")
    assert calls == 2 and result.old_deleted
    assert snap is not None and {p for p, e in snap.entries.items() if e.kind == "file"} == {"first.txt", "late.txt"}


async def test_a_commit_during_the_lease_waits_and_then_finds_the_volume_gone(config: Config, tmp_path: Path) -> None:
    """Never a commit into a volume about to be deleted: it waits for the lease, then VolumeNotFound."""
    from syncd.engine.commit import commit
    from syncd.engine.rename import rename
    from syncd.errors import VolumeNotFound
    src, late = _first_and_late(tmp_path)
    async with open_engine(config) as renamer, open_engine(worker_config(config, tmp_path, "writer")) as writer:
        await commit(renamer, "old", src)
        saw_lease = asyncio.Event()
        real_head = writer.repo.head

        async def head(volume: str) -> Any:
            got = await real_head(volume)
            if got.leased():
                saw_lease.set()
            return got
        writer.repo.head = head  # type: ignore[method-assign]
        real_delete = renamer.repo.delete
        waiting: list[asyncio.Task[Any]] = []

        async def delete_once_a_writer_waits(volume: str) -> int:
            waiting.append(asyncio.ensure_future(commit(writer, "old", late)))
            leased = asyncio.ensure_future(saw_lease.wait())
            # the writer read the leased HEAD and waits (without a lease it commits, and is lost below)
            await asyncio.wait([leased, waiting[0]], return_when=asyncio.FIRST_COMPLETED)
            leased.cancel()
            return await real_delete(volume)
        renamer.repo.delete = delete_once_a_writer_waits  # type: ignore[method-assign]
        await rename(renamer, "old", "new")
        with pytest.raises(VolumeNotFound):
            await waiting[0]
        _, snap = await renamer.repo.latest("new")
    assert snap is not None and [p for p, e in snap.entries.items() if e.kind == "file"] == ["first.txt"]
