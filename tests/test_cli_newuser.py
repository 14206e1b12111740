"""What a new user met on the command line (issue 24, issue 23's last bullets), in-process on the real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncd.cli.core import main
from syncd.config import Config

from .agentutil import env_for


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


def _seed(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "notes.txt").write_text("the volume's notes\n")
    (src / "same.txt").write_text("same\n")
    (src / "sub" / "deep.txt").write_text("deep\n")
    assert cli("commit", "vol", str(src))[0] == 0


def test_get_refuses_to_overwrite_local_edits(cli: Any, tmp_path: Path) -> None:
    """Issue 24 item 1: ``get`` refused like ``hydrate``; nothing is written before the refusal."""
    _seed(cli, tmp_path)
    dest = tmp_path / "g3"
    dest.mkdir()
    (dest / "notes.txt").write_text("my precious local edits\n")
    (dest / "same.txt").write_text("same\n")                 # equal bytes: not a conflict
    code, _, err = cli("get", "vol", "/", str(dest))
    assert code == 5 and "notes.txt" in err and "--overwrite" in err
    assert (dest / "notes.txt").read_text() == "my precious local edits\n"
    assert not (dest / "sub").exists()                       # refused before any byte was written
    code, _, err = cli("get", "vol", "notes.txt", str(dest))  # a single file into a directory
    assert code == 5 and (dest / "notes.txt").read_text() == "my precious local edits\n"
    code, _, err = cli("get", "vol", "notes.txt", str(dest / "notes.txt"))  # a single file onto a file
    assert code == 5 and (dest / "notes.txt").read_text() == "my precious local edits\n"
    (dest / "sub").write_text("a file where the volume has a directory\n")
    code, _, err = cli("get", "vol", "/", str(dest))
    assert code == 5 and (dest / "sub").read_text().startswith("a file")

    (dest / "sub").unlink()
    assert cli("get", "vol", "/", str(dest), "--overwrite")[0] == 0
    assert (dest / "notes.txt").read_text() == "the volume's notes\n"
    assert (dest / "sub" / "deep.txt").read_text() == "deep\n"
    assert cli("get", "vol", "/", str(dest))[0] == 0          # already equal: nothing to refuse
