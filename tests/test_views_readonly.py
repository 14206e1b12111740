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
