"""The volume CLI in-process against the real server: output, --json, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from syncd.cli.core import main
from syncd.config import Config

from .agentutil import env_for, latest_files
from .treeutil import snapshot_tree


@pytest.fixture
def cli(config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    for key, value in env_for(config).items():
        if key.startswith(("SYNCD_", "AWS_")):
            monkeypatch.setenv(key, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def as_json(out: str) -> Any:
    return json.loads(out.strip().splitlines()[-1])


def test_volume_create_ls_info_and_exit_codes(cli: Any) -> None:
    assert cli("volume", "create", "/my-volume")[0] == 0
    code, out, _ = cli("volume", "create", "my-volume")
    assert code == 2                                          # exists: say so
    assert cli("volume", "create", "my-volume", "--exist-ok")[0] == 0
    code, out, _ = cli("--json", "volume", "create", "bad/name")
    assert code == 2 and as_json(out)["error"] == "InvalidName"
    code, out, err = cli("volume", "info", "missing")
    assert code == 3 and "does not exist" in err
    cli("volume", "create", "other")
    code, out, _ = cli("volume", "ls")
    assert code == 0 and out.split() == ["my-volume", "other"]
    code, out, _ = cli("--json", "volume", "ls")
    assert as_json(out) == {"owner": "alice", "volumes": ["my-volume", "other"]}
    code, out, _ = cli("--json", "volume", "info", "my-volume")
    info = as_json(out)
    assert code == 0 and info["seq"] == 0 and info["files"] == 0


def test_put_get_round_trip_keeps_other_paths(cli: Any, config: Config, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("a\n")
    (tree / "big.bin").write_bytes(bytes(range(256)) * 9000)
    single = tmp_path / "single.txt"
    single.write_text("single\n")

    assert cli("put", "vol", str(single))[0] == 0                     # default: its own name
    code, out, _ = cli("--json", "put", "vol", str(tree), "data/tree")
    assert code == 0 and as_json(out)["seq"] == 2
    assert set(latest_files(config, "vol")) == {"single.txt", "data/tree/sub/a.txt", "data/tree/big.bin"}

    assert cli("get", "vol", "data/tree", str(tmp_path / "out"))[0] == 0
    assert snapshot_tree(tmp_path / "out") == snapshot_tree(tree)
    (tmp_path / "dest").mkdir()
    assert cli("get", "vol", "/single.txt", str(tmp_path / "dest"))[0] == 0   # into a directory
    assert (tmp_path / "dest" / "single.txt").read_text() == "single\n"
    assert cli("get", "vol", "/", str(tmp_path / "all"))[0] == 0              # everything
    assert snapshot_tree(tmp_path / "all" / "data" / "tree") == snapshot_tree(tree)
    assert (tmp_path / "all" / "single.txt").read_text() == "single\n"
    code, _, err = cli("get", "vol", "nope.txt", str(tmp_path / "x"))
    assert code == 3 and "nothing at 'nope.txt'" in err
    code, _, err = cli("put", "vol", str(tmp_path / "missing"))
    assert code == 7


def test_log_and_restore_keep_history(cli: Any, config: Config, tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    (v1 / "dir").mkdir(parents=True)
    (v1 / "a.txt").write_text("one\n")
    (v1 / "dir" / "b.txt").write_text("b\n")
    cli("commit", "vol", str(v1), "-m", "first")
    first = as_json(cli("--json", "volume", "log", "vol")[1])["snapshots"][0]["snapshot"]
    (v1 / "a.txt").write_text("two\n")
    (v1 / "dir" / "b.txt").unlink()
    (v1 / "c.txt").write_text("c\n")
    cli("commit", "vol", str(v1), "-m", "second")

    code, out, _ = cli("--json", "restore", "vol", "a.txt", "--snapshot", first)
    assert code == 0 and as_json(out)["changed"] == 1
    assert set(latest_files(config, "vol")) == {"a.txt", "c.txt"}
    cli("get", "vol", "a.txt", str(tmp_path / "a.txt"))
    assert (tmp_path / "a.txt").read_text() == "one\n"

    assert cli("restore", "vol", "--snapshot", first)[0] == 0          # everything
    assert set(latest_files(config, "vol")) == {"a.txt", "dir/b.txt"}
    code, out, _ = cli("volume", "log", "vol")
    lines = out.strip().splitlines()
    assert len(lines) == 4 and "first" in lines[-1] and "restore / from" in lines[0]
    code, _, _ = cli("restore", "vol", "--snapshot", "0" * 32)
    assert code == 3


def test_rm_asks_unless_yes(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("volume", "create", "doomed")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, _, err = cli("volume", "rm", "doomed")
    assert code == 2 and "without --yes" in err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    assert cli("volume", "rm", "doomed")[0] == 2
    assert cli("volume", "info", "doomed")[0] == 0                     # still there
    monkeypatch.setattr("builtins.input", lambda prompt: "doomed")
    assert cli("volume", "rm", "doomed")[0] == 0
    assert cli("volume", "info", "doomed")[0] == 3
    cli("volume", "create", "doomed2")
    code, out, _ = cli("--json", "volume", "rm", "doomed2", "--yes")
    assert code == 0 and as_json(out)["deleted"] is True
    assert cli("volume", "rm", "doomed2", "--yes")[0] == 3


def test_volume_upgrade_and_info_of_a_v3_volume(cli: Any, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "x.txt").write_text("x")
    (tree / "y.txt").write_text("yy")
    assert cli("put", "vol", str(tree), "/")[0] == 0
    code, out, _ = cli("--json", "volume", "info", "vol")
    info = as_json(out)
    assert code == 0 and info["format"] == 3 and info["files"] == 2 and info["dirs"] >= 1 and info["bytes"] == 3
    code, out, _ = cli("--json", "volume", "upgrade", "vol")       # already v3: nothing to do
    assert code == 0 and as_json(out)["upgraded"] is False
    assert cli("volume", "upgrade", "missing")[0] == 3
