"""File commands without a mount (engine/edit.py, cli/files.py) on the real server."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

from syncd import Volume
from syncd.cli.core import main
from syncd.config import Config
from syncd.engine import edit
from syncd.engine.commit import commit
from syncd.engine.wiring import Engine, open_engine

from .agentutil import env_for, latest_files


@pytest.fixture
def cli(config: Config, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]) -> Any:
    for key, value in env_for(config).items():
        if key.startswith(("SYNCD_", "AWS_")):
            monkeypatch.setenv(key, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsysbinary.readouterr()
        return code, out.decode(errors="replace"), err.decode()
    return run


def as_json(out: str) -> Any:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def seeded(cli: Any, tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "d" / "e").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "d" / "b.txt").write_text("bravo\n")
    (tree / "d" / "e" / "c.bin").write_bytes(bytes(range(256)) * 12000)   # 3 chunks of 1 MiB
    assert cli("commit", "vol", str(tree), "-m", "seed")[0] == 0
    return tree


def test_ls_cat_long_recursive_and_json(cli: Any, seeded: Path) -> None:
    code, out, _ = cli("ls", "vol")
    assert code == 0 and out.split() == ["a.txt", "d/"]
    code, out, _ = cli("ls", "vol", "d", "-R")
    assert out.split() == ["b.txt", "e/", "e/c.bin"]
    code, out, _ = cli("ls", "-l", "vol", "d/e")
    assert out.startswith("-rw") and "3072000" in out and out.rstrip().endswith("c.bin")
    code, out, _ = cli("ls", "vol", "--json")                     # global flag after the subcommand
    doc = as_json(out)
    assert [(e["name"], e["type"]) for e in doc["entries"]] == [("a.txt", "file"), ("d", "dir")]
    code, out, _ = cli("cat", "vol", "d/b.txt")
    assert code == 0 and out == "bravo\n"
    code, _, err = cli("cat", "vol", "nope.txt")
    assert code == 3 and "nothing at 'nope.txt'" in err
    code, _, err = cli("cat", "vol", "d")
    assert code == 2 and "is a dir" in err


def test_cat_into_a_closed_pipe_is_quiet(cli: Any, seeded: Path, config: Config) -> None:
    import subprocess
    import sys
    done = subprocess.run(f"'{sys.executable}' -m syncd cat vol d/e/c.bin | head -c 3", shell=True,
                          env=env_for(config), capture_output=True, timeout=60)
    assert done.stdout == bytes(range(3)) and done.stderr == b""


def test_rm_cp_mv_one_snapshot_each_and_chunks_shared(cli: Any, seeded: Path, config: Config) -> None:
    seq = as_json(cli("--json", "volume", "info", "vol")[1])["seq"]
    code, out, _ = cli("cp", "vol", "d", "copy", "--json")
    assert code == 0 and as_json(out)["seq"] == seq + 1
    files = latest_files(config, "vol")
    assert files["copy/e/c.bin"] == files["d/e/c.bin"] and "copy/b.txt" in files
    code, out, _ = cli("mv", "-q", "vol", "a.txt", "copy/")        # into an existing directory
    assert code == 0
    files = latest_files(config, "vol")
    assert "a.txt" not in files and "copy/a.txt" in files
    assert cli("cat", "vol", "copy/a.txt")[1] == "alpha\n"
    code, _, err = cli("rm", "vol", "copy")
    assert code == 2 and "not empty" in err
    assert cli("rm", "vol", "copy", "-r")[0] == 0
    assert cli("rm", "vol", "missing")[0] == 3
    assert cli("rm", "vol", "missing", "-f")[0] == 0
    assert set(latest_files(config, "vol")) == {"d/b.txt", "d/e/c.bin"}
    code, out, _ = cli("--json", "volume", "info", "vol")
    assert as_json(out)["seq"] == seq + 3                           # cp, mv, rm -r; nothing for the no-ops
    code, out, _ = cli("diff", "vol")                                # the last change: rm -r copy
    assert code == 0 and "- copy/" in out and "- copy/e/c.bin" in out


async def test_cp_copies_no_file_data(engine: Engine, config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(b"x" * (3 << 20))
    await commit(engine, "vol", src)
    engine.counter.reset()
    result = await edit.edit(engine, "vol", lambda b: b.copy("big.bin", "again/big.bin"))
    assert result.changed == 2                                        # the file and its new directory
    assert result.trees_written == 2                                  # the root and again/
    # format v2: one tree pack (the new and changed directories), the snapshot and HEAD; no chunk, no pack
    assert engine.counter.calls["put"] == 3
    assert engine.counter.bytes_out < 16_384                          # 3 MiB of file data was not sent again
    copied, source = await edit.stat(engine, "vol", "again/big.bin"), await edit.stat(engine, "vol", "big.bin")
    assert copied.chunks == source.chunks


async def test_concurrent_edits_both_survive(engine: Engine, config: Config,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer advances HEAD between our read and our publish: we replay on its snapshot."""
    await edit.write_file(engine, "vol", "base.txt", _pieces(b"base"))
    slow = edit.Batch(engine, "vol")
    await slow.write("slow.txt", b"slow")
    slow.remove("base.txt")
    real, raced = edit._publish, []

    async def racing(eng: Engine, head: Any, built: Any, message: str) -> Any:
        if not raced:
            raced.append(True)
            async with open_engine(config) as other:                  # lands first
                await edit.write_file(other, "vol", "fast.txt", _pieces(b"fast"))
        return await real(eng, head, built, message)
    monkeypatch.setattr(edit, "_publish", racing)
    result = await slow.publish()
    assert result.attempts == 2                                       # If-Match failed once
    listed = await edit.listdir(engine, "vol", recursive=True)
    assert {e.path for e in listed if e.kind == "file"} == {"slow.txt", "fast.txt"}
    assert await edit.read_bytes(engine, "vol", await edit.stat(engine, "vol", "slow.txt")) == b"slow"


async def test_reading_a_footer_fetches_only_its_chunk(engine: Engine, config: Config) -> None:
    data = random.Random(7).randbytes(10 << 20)                      # 10 MiB: ~ten distinct chunks of ~1 MiB
    await edit.write_file(engine, "vol", "big.bin", _pieces(data, 300_000))
    entry = await edit.stat(engine, "vol", "big.bin")
    assert len(entry.chunks) >= 5
    ends = list(itertools.accumulate(c.size for c in entry.chunks))
    touched = sum(1 for end, c in zip(ends, entry.chunks) if end > (1 << 20) - 4 and end - c.size < (1 << 20) + 4)
    async with open_engine(config.replace(cache_dir=config.cache_dir.parent / "cold")) as cold:
        cold.counter.reset()
        tail = await edit.read_bytes(cold, "vol", entry, len(data) - 8, len(data))
        assert tail == data[-8:] and cold.counter.calls["get"] == 1
        middle = await edit.read_bytes(cold, "vol", entry, (1 << 20) - 4, (1 << 20) + 4)
        assert middle == data[(1 << 20) - 4:(1 << 20) + 4] and cold.counter.calls["get"] == 1 + touched


async def _pieces(data: bytes, size: int = 1 << 20) -> Any:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_diff_between_named_snapshots(cli: Any, seeded: Path) -> None:
    first = as_json(cli("--json", "volume", "log", "vol")[1])["snapshots"][0]["snapshot"]
    (seeded / "a.txt").write_text("changed\n")
    (seeded / "new.txt").write_text("new\n")
    cli("commit", "vol", str(seeded))
    code, out, _ = cli("diff", "vol", first, "--json")
    changes = {(c["status"], c["path"]) for c in as_json(out)["changes"]}
    assert changes == {("modified", "a.txt"), ("added", "new.txt")}


def test_volume_rename_moves_latest_content(cli: Any, seeded: Path, config: Config) -> None:
    before = latest_files(config, "vol")
    cli("volume", "create", "taken")
    code, _, err = cli("volume", "rename", "vol", "taken")
    assert code == 2 and "already exists" in err
    code, out, _ = cli("--json", "volume", "rename", "vol", "renamed")
    assert code == 0 and as_json(out)["old_deleted"] is True
    assert latest_files(config, "renamed") == before
    assert cli("cat", "renamed", "d/e/c.bin")[1].encode("latin-1", "replace")[:3] == bytes(range(3))
    assert cli("volume", "info", "vol")[0] == 3
    code, out, _ = cli("volume", "log", "renamed")
    assert "rename from vol" in out
    assert cli("volume", "rename", "renamed", "copy", "--keep-old")[0] == 0
    assert latest_files(config, "renamed") == latest_files(config, "copy") == before


def test_errors_a_newcomer_can_act_on(config: Config, tmp_path: Path) -> None:
    """A bad name is reported before any connection; a dead endpoint is one line, no asyncio noise."""
    import subprocess
    import sys
    env = {**env_for(config), "SYNCD_S3_ENDPOINT": "http://127.0.0.1:9", "SYNCD_RETRIES": "1"}
    bad = subprocess.run([sys.executable, "-m", "syncd", "commit", "bad name!", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid volume name 'bad name!'" in bad.stderr
    dead = subprocess.run([sys.executable, "-m", "syncd", "ls", "good-name", "-q"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert dead.returncode == 8
    assert dead.stderr.count("\n") == 1 and "cannot reach the object store at http://127.0.0.1:9" in dead.stderr


def test_names_the_product_page_accepts(cli: Any) -> None:
    """``^/?[\\w-]+$`` under 50 characters: these work; the rest are refused naming the rule."""
    from syncd.errors import InvalidName
    from syncd.format.layout import NAME_RULE
    for name in ["my-volume", "/my_volume", "Model_3c-large", "x" * 49, "0"]:
        assert cli("volume", "create", name)[0] == 0, name
    for name in ["_scratch", "-x", "données", "a b", "x" * 64]:
        with pytest.raises(InvalidName, match="use " + NAME_RULE.replace("(", r"\(").replace(")", r"\)")):
            Volume(name)
