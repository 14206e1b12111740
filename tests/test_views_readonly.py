"""A read-only view refuses root too, and no task can change what another reads (issue 24 item 4)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from syncd import volume
from syncd.config import Config
from syncd.local import robind

from .agentutil import Agents, latest_files

REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)


def _can_bind(tmp_path: Path) -> bool:
    probe = tmp_path / "bind-probe"
    probe.mkdir()
    try:
        return robind.seal(probe)
    finally:
        robind.unseal(probe)


def _refused(action: object) -> int:
    with pytest.raises(OSError) as info:
        action()  # type: ignore[operator]
    assert info.value.errno in REFUSED, info.value
    return info.value.errno or 0


def test_a_write_as_root_to_a_read_only_view_fails(config: Config, agents: Agents, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0 or not _can_bind(tmp_path):
        pytest.skip("needs root with CAP_SYS_ADMIN (a read-only bind mount)")
    agent = agents.start(config)
    monkeypatch.setenv("SYNCD_SOCKET", str(config.socket))
    writer = volume("data")
    (writer / "x.txt").write_text("the volume's\n")
    (writer / "d").mkdir()
    writer.commit()

    ro = volume("data", read_only=True)
    other = volume("data", read_only=True)          # another task's view of the same snapshot
    assert robind.sealed(ro.path)
    assert _refused(lambda: (ro / "x.txt").write_text("nope")) == errno.EROFS   # root: the mount, not modes
    _refused(lambda: (ro / "new.txt").write_text("nope"))
    _refused(lambda: (ro / "x.txt").chmod(0o644))
    _refused(lambda: (ro / "x.txt").unlink())
    _refused(lambda: (ro / "d" / "sub").mkdir())
    _refused(lambda: os.rename(ro / "x.txt", ro / "y.txt"))
    assert sorted(os.listdir(other.path)) == ["d", "x.txt"]
    assert (other / "x.txt").read_text() == "the volume's\n"
    assert set(latest_files(config, "data")) == {"x.txt"}

    (writer / "x.txt").write_text("newer\n")        # a new snapshot: a new view, sealed as well
    writer.commit()
    newer = volume("data", read_only=True)
    assert newer.path != ro.path and robind.sealed(newer.path)
    assert (newer / "x.txt").read_text() == "newer\n" and (ro / "x.txt").read_text() == "the volume's\n"
    assert agent.terminate() == 0                   # a stopping agent leaves no mount behind
    assert not robind.sealed(newer.path) and not robind.sealed(ro.path)


def test_a_view_refuses_writes_by_every_other_way_in(config: Config, agents: Agents, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a symlink in a writable mount, a rename or a hard link into it, a second read-only task."""
    if os.geteuid() != 0 or not _can_bind(tmp_path):
        pytest.skip("needs root with CAP_SYS_ADMIN (a read-only bind mount)")
    agents.start(config)
    monkeypatch.setenv("SYNCD_SOCKET", str(config.socket))
    writer = volume("data")
    (writer / "x.txt").write_text("the volume's\n")
    writer.commit()
    ro = volume("data", read_only=True)
    other = volume("data", read_only=True)
    assert other.path == ro.path                             # one view per snapshot, shared

    (writer / "into-view").symlink_to(ro.path / "x.txt")     # a link the writable task may make
    assert _refused(lambda: (writer / "into-view").write_text("nope")) == errno.EROFS
    (writer / "dir-link").symlink_to(ro.path)
    _refused(lambda: (writer / "dir-link" / "new.txt").write_text("nope"))
    (writer / "mine.txt").write_text("mine\n")
    for move in (os.rename, os.link):                         # across the mount: EXDEV, never a write
        with pytest.raises(OSError) as info:
            move(writer / "mine.txt", ro.path / "moved.txt")
        assert info.value.errno in (*REFUSED, errno.EXDEV)
    with pytest.raises(OSError) as info:                      # nor can the view itself be moved away
        os.rename(ro.path, tmp_path / "stolen")
    assert info.value.errno in (*REFUSED, errno.EBUSY, errno.EXDEV)
    _refused(lambda: os.truncate(other.path / "x.txt", 0))
    _refused(lambda: os.utime(other.path / "x.txt", (0, 0)))
    assert sorted(os.listdir(ro.path)) == ["x.txt"] and (ro / "x.txt").read_text() == "the volume's\n"
    writer.commit()                                           # the links commit as links; the view is unchanged
    assert (other / "x.txt").read_text() == "the volume's\n"


def test_a_symlink_planted_where_the_view_goes_is_not_used(config: Config, agents: Agents, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A root task that knows the next snapshot id cannot make the agent hand out its own directory."""
    agents.start(config)
    monkeypatch.setenv("SYNCD_SOCKET", str(config.socket))
    writer = volume("data")
    (writer / "x.txt").write_text("the volume's\n")
    result = writer.commit()
    snapshot = result["snapshot"] if isinstance(result, dict) else result.snapshot
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "x.txt").write_text("the task's version\n")
    (config.root / ".readonly" / "data").mkdir(parents=True, exist_ok=True)
    (config.root / ".readonly" / "data" / snapshot).symlink_to(trap)
    ro = volume("data", read_only=True)
    assert (ro / "x.txt").read_text() == "the volume's\n"
    assert not ro.path.is_symlink() and (trap / "x.txt").read_text() == "the task's version\n"
