"""A mounted volume that vanishes (renamed or deleted elsewhere) loses no local write (issue 24 item 2)."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
