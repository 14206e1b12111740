"""The task-side SDK against a real agent: names, path behaviour, owners, errors."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest

import syncd
from syncd import Volume, list_volumes, volume
from syncd.config import Config
from syncd.errors import AgentUnavailable, InvalidName, PermissionDenied, VolumeNotFound
from syncd.sdk.volume import AgentClient

from .agentutil import Agents, latest_files


@pytest.mark.parametrize("bad", ["", "/", "//x", "../etc", "a/b", "-x", ".hidden", "x" * 64, "sp ace",
                                 "caf\u00e9", "..", "a\x00b"])
def test_bad_names_are_rejected_before_any_request(bad: str, tmp_path: Path) -> None:
    # no agent listens on this socket: reaching it would raise AgentUnavailable instead
    with pytest.raises(InvalidName, match="1-63 characters"):
        volume(bad, socket_path=tmp_path / "nobody.sock")


def test_no_agent_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_AGENT_WAIT", "0.3")
    started = time.monotonic()
    with pytest.raises(AgentUnavailable, match="no syncd agent at .*syncd agent"):
        volume("fine", socket_path=tmp_path / "nobody.sock")
    assert 0.3 <= time.monotonic() - started < 5              # it waited for an agent, briefly


def test_volume_behaves_as_its_directory(config: Config, agents: Agents,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    agents.start(config)
    monkeypatch.setenv("SYNCD_SOCKET", str(config.socket))
    monkeypatch.setenv("SYNCD_OWNER", config.owner)
    my_volume = syncd.volume("/my_volume")              # the product page's spelling
    assert my_volume.name == "my_volume"
    assert isinstance(my_volume, os.PathLike)
    assert os.fspath(my_volume) == str(config.root / "my_volume") == str(my_volume)
    label_dir = my_volume / "model-1a-small"
    assert isinstance(label_dir, Path)
    label_dir.mkdir(exist_ok=True)
    (label_dir / "log.txt").write_text("hello\n")
    with open(os.path.join(my_volume, "direct.txt"), "w") as f:
        f.write("via os.path\n")
    my_volume.commit()
    assert set(latest_files(config, "my_volume")) == {"model-1a-small/log.txt", "direct.txt"}
    assert list_volumes() == ["my_volume"]

    # pickled into a task: only the name travels; it mounts through the local agent on first use
    shipped = pickle.loads(pickle.dumps(my_volume))
    assert shipped == my_volume and repr(shipped) == "Volume('my_volume', path=None)"
    assert (shipped / "model-1a-small" / "log.txt").read_text() == "hello\n"

    (my_volume / "late.txt").write_text("written just before unmount\n")
    assert my_volume.unmount()["seq"] == 2                    # unmount flushes
    assert "late.txt" in latest_files(config, "my_volume")
    with pytest.raises(VolumeNotFound, match="not mounted"):
        my_volume.status()
    assert my_volume.reload()["seq"] == 2                     # mounts again, nothing lost

    result = my_volume.delete()
    assert result["volume"] == "my_volume"
    assert list_volumes() == [] and not (config.root / "my_volume").exists()
    with pytest.raises(VolumeNotFound):
        Volume("my_volume", client=AgentClient(config.socket)).status()


def test_one_owner_never_sees_anothers_volumes(config: Config, agents: Agents, tmp_path: Path) -> None:
    bob = config.replace(owner="bob", root=tmp_path / "bob" / "volumes", socket=tmp_path / "bob.sock",
                         state_dir=tmp_path / "bob" / "state", cache_dir=tmp_path / "bob" / "cache")
    agents.start(config)
    agents.start(bob)
    alices = volume("shared-name", socket_path=config.socket, owner="alice")
    (alices / "secret.txt").write_text("alice only\n")
    alices.commit()

    assert list_volumes(socket_path=bob.socket, owner="bob") == []
    bobs = volume("shared-name", socket_path=bob.socket, owner="bob")   # a different, new volume
    assert list(bobs.path.iterdir()) == []
    assert latest_files(bob, "shared-name") == {}
    assert list_volumes(socket_path=config.socket, owner="alice") == ["shared-name"]
    # a task of bob's cannot use alice's agent
    with pytest.raises(PermissionDenied, match="serves owner 'alice'"):
        volume("shared-name", socket_path=config.socket, owner="bob")
    with pytest.raises(PermissionDenied):
        list_volumes(socket_path=config.socket, owner="bob")


async def test_sdk_works_inside_a_running_event_loop(config: Config, agents: Agents) -> None:
    agents.start(config)
    vol = volume("from-async", socket_path=config.socket)      # blocking, but no loop of its own
    (vol / "a.txt").write_text("a\n")
    assert vol.commit()["seq"] == 1
    assert list_volumes(socket_path=config.socket) == ["from-async"]
