"""What a new user met on the command line (issue 24, issue 23's last bullets), in-process on the real server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from syncd.cli.core import main
from syncd.config import Config
from syncd.maint.check import CheckResult

from .agentutil import env_for
from .checks import local_ids


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


def _bucket_exists(config: Config, bucket: str) -> bool:
    import botocore.exceptions
    import botocore.session
    client = botocore.session.get_session().create_client("s3", endpoint_url=config.s3_endpoint,
                                                          region_name=config.region)
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError:
        return False
    return True


def test_a_mistyped_bucket_is_named_not_created(cli: Any, config: Config, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Item 6: only commands that create volumes create a bucket, and they say so."""
    missing = f"nobucket-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SYNCD_BUCKET", missing)
    for argv in (("volume", "ls"), ("ls", "vol"), ("volume", "info", "vol"), ("diff", "vol")):
        code, out, err = cli(*argv)
        assert code == 2 and out == "" and f"bucket {missing!r} does not exist" in err, (argv, err)
    assert not _bucket_exists(config, missing)
    code, _, err = cli("volume", "create", "vol")
    assert code == 0 and f"created bucket {missing!r}" in caplog.text     # a warning on stderr
    assert _bucket_exists(config, missing)
    assert cli("volume", "ls")[:2] == (0, "vol\n")


def test_a_bad_endpoint_or_bucket_name_is_named_before_any_request(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 7 and issue 23: no Rust panic, no InvalidBucketName from the server."""
    monkeypatch.setenv("SYNCD_S3_ENDPOINT", "127.0.0.1:38217")
    code, _, err = cli("volume", "ls")
    assert code == 2 and "http://127.0.0.1:38217" in err and "panicked" not in err and len(err.splitlines()) == 1
    monkeypatch.setenv("SYNCD_S3_ENDPOINT", "http://127.0.0.1:1")   # unreachable: a request would say so
    monkeypatch.setenv("SYNCD_BUCKET", "lm")
    code, _, err = cli("volume", "ls")
    assert code == 2 and "'lm'" in err and "3-63 characters" in err and "reach" not in err
    monkeypatch.setenv("SYNCD_BUCKET", "Upper_Case")
    assert cli("volume", "ls")[0] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_endpoint_is_said_in_our_words(cli: Any, config: Config, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Issue 23: connection refused, DNS failure, TLS error, timeout; the library's text only with -v."""
    monkeypatch.setenv("SYNCD_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("SYNCD_READ_TIMEOUT", "1")
    monkeypatch.setenv("SYNCD_S3_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    code, _, err = cli("volume", "ls")
    assert code == 8 and "connection refused" in err and "Generic S3 error" not in err and len(err.splitlines()) == 1
    with caplog.at_level(logging.INFO, logger="syncd"):
        code, _, err = cli("-v", "volume", "ls")
    assert code == 8 and "connection refused" in err and "the object store client said" in caplog.text
    monkeypatch.setenv("SYNCD_S3_ENDPOINT", "http://no-such-host.invalid:8333")
    code, _, err = cli("volume", "ls")
    assert code == 8 and "DNS lookup of 'no-such-host.invalid' failed" in err
    assert config.s3_endpoint and config.s3_endpoint.startswith("http://")
    monkeypatch.setenv("SYNCD_S3_ENDPOINT", "https://" + config.s3_endpoint[len("http://"):])  # plain http server
    code, _, err = cli("volume", "ls")
    assert code == 8 and "TLS error" in err
    with socket.socket() as silent:                              # accepts (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("SYNCD_S3_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        code, _, err = cli("volume", "ls")
    assert code == 8 and "timeout" in err and "no answer" in err


def test_a_wrong_secret_says_check_the_credentials(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 10: not 'syncd: error: syncd: 403 SignatureDoesNotMatch'."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    monkeypatch.setenv("SYNCD_BUCKET", "syncd")
    for backend in ("obstore", "aiobotocore"):
        monkeypatch.setenv("SYNCD_STORE_BACKEND", backend)
        code, _, err = cli("volume", "ls")
        assert code == 8 and "check the credentials" in err and "error: syncd:" not in err, (backend, err)


def _log_seqs(cli: Any) -> dict[int, str]:
    code, out, _ = cli("--json", "volume", "log", "vol")
    return {row["seq"]: row["snapshot"] for row in json.loads(out)["snapshots"]}


def test_snapshots_by_seq_or_prefix_and_restore_in_either_order(cli: Any, tmp_path: Path) -> None:
    """Items 8 and 9: 'syncd diff vol 1 3', prefixes, and 'restore VOL --snapshot ID PATH'."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / "a.txt").write_text(f"version {i}\n")
        (src / f"f{i}.txt").write_text("x\n")
        assert cli("commit", "vol", str(src))[0] == 0
    seqs = _log_seqs(cli)
    code, out, err = cli("diff", "vol", "1", "3")
    assert code == 0, err
    assert out.split("\n")[:3] == ["M a.txt", "+ f1.txt", "+ f2.txt"]
    code, out2, _ = cli("diff", "vol", seqs[1][:8], seqs[3][:10])
    assert code == 0 and out2 == out
    code, _, err = cli("diff", "vol", "9", "3")
    assert code == 3 and "seq 9" in err
    code, _, err = cli("diff", "vol", "zz-top")
    assert code == 2 and "seq number" in err

    code, out, err = cli("restore", "vol", "--snapshot", "1", "a.txt")     # the documented order
    assert code == 0, err
    assert cli("cat", "vol", "a.txt")[1] == "version 0\n"
    code, _, err = cli("restore", "vol", "a.txt", "--snapshot", seqs[2][:6])   # and the other one
    assert code == 0, err
    assert cli("cat", "vol", "a.txt")[1] == "version 1\n"
    assert cli("cat", "vol", "a.txt", "--snapshot", "3")[1] == "version 2\n"
    with pytest.raises(SystemExit) as exit_info:                           # a word too many is still refused
        cli("restore", "vol", "--snapshot", "1", "a.txt", "extra")
    assert exit_info.value.code == 2


def test_an_id_prefix_of_decimal_digits_is_a_prefix_not_a_seq(cli: Any, tmp_path: Path) -> None:
    """One snapshot id in six starts with four decimal digits: 'syncd diff vol 8 <that prefix>' must find it."""
    src = tmp_path / "src"
    src.mkdir()
    found: tuple[int, str] | None = None
    for i in range(80):                                    # P(no such id in 80) = 0.847**80, about 2e-6
        (src / "a.txt").write_text(f"version {i}\n")
        assert cli("commit", "vol", str(src))[0] == 0
        seq, snap = max(_log_seqs(cli).items())
        if snap[:4].isdigit():                             # 4+ digits: past any seq here, or a leading zero
            found = seq, snap
            break
    assert found is not None
    seq, snap = found
    prefix = snap[:4]
    code, out, err = cli("--json", "diff", "vol", str(seq), prefix)      # the same snapshot both ways
    assert code == 0, err
    assert json.loads(out)["changes"] == [], out
    code, _, err = cli("diff", "vol", "1", str(seq + 1))                 # a seq past HEAD is still a seq
    assert code == 3 and f"seq {seq + 1}" in err, err


def test_the_sdk_names_syncd_agent_wait_when_it_gives_up(tmp_path: Path) -> None:
    """Item 10: the 10-second wait for an agent says what it waited for and how to change it."""
    from syncd.errors import AgentUnavailable
    from syncd.sdk.volume import AgentClient
    with pytest.raises(AgentUnavailable, match="SYNCD_AGENT_WAIT"):
        AgentClient(tmp_path / "nobody.sock", connect_wait=0.2).call("GET", "/v1/status")


# ---------------------------------------------------------------- item 1: every shape in the way of a get
# A directory where the volume has a file, symlinks (to files, to directories, dangling) at a file's or a
# directory's path, local files the volume does not have: refusals are exit 5 with nothing written;
# --overwrite replaces a link itself, never what it points to; files the volume lacks stay either way.

def _tree(top: Path) -> dict[str, str]:
    """Every path below ``top`` (not following links): file text, 'dir' or '-> target'."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(top))
            out[rel] = (f"-> {os.readlink(path)}" if path.is_symlink()
                        else "dir" if path.is_dir() else path.read_text())
    return out


def test_a_local_directory_where_the_volume_has_a_file_is_not_replaced(cli: Any, tmp_path: Path) -> None:
    _seed(cli, tmp_path)
    dest = tmp_path / "dest"
    (dest / "notes.txt").mkdir(parents=True)
    (dest / "notes.txt" / "mine.txt").write_text("a file of mine in a directory named like the volume's file\n")
    before = _tree(dest)
    code, _, err = cli("get", "vol", "/", str(dest))
    assert code == 5 and "notes.txt" in err
    assert _tree(dest) == before                                  # nothing written, nothing removed
    code, _, err = cli("get", "vol", "notes.txt", str(dest / "notes.txt"))   # into it, by name: no conflict
    assert code == 0, err
    assert (dest / "notes.txt" / "notes.txt").read_text() == "the volume's notes\n"
    assert (dest / "notes.txt" / "mine.txt").exists()


def test_symlinks_in_the_way_are_refused_and_never_followed(cli: Any, tmp_path: Path) -> None:
    _seed(cli, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("outside the destination\n")
    (outside / "deep.txt").write_text("not the volume's deep.txt\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").symlink_to(outside / "precious.txt")     # a link at a file's path
    (dest / "sub").symlink_to(outside)                            # a link at a directory's path
    (dest / "same.txt").symlink_to(tmp_path / "nowhere")          # dangling
    outside_before, dest_before = _tree(outside), _tree(dest)
    code, _, err = cli("get", "vol", "/", str(dest))
    assert code == 5 and "3 local path(s)" in err, err
    assert _tree(outside) == outside_before and _tree(dest) == dest_before
    code, _, err = cli("get", "vol", "sub", str(dest / "sub"))     # named as the destination: followed, as cp
                                                                  # does, and its differing deep.txt refused
    assert code == 5 and _tree(outside) == outside_before

    code, _, err = cli("get", "vol", "/", str(dest), "--overwrite")
    assert code == 0, err
    assert _tree(outside) == outside_before                       # the links' targets are untouched
    assert not any(p.is_symlink() for p in (dest / "notes.txt", dest / "sub", dest / "same.txt"))
    assert (dest / "notes.txt").read_text() == "the volume's notes\n"
    assert (dest / "sub" / "deep.txt").read_text() == "deep\n" and (dest / "same.txt").read_text() == "same\n"


def test_local_files_the_volume_does_not_have_stay(cli: Any, tmp_path: Path) -> None:
    _seed(cli, tmp_path)
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "mine.txt").write_text("mine\n")
    (dest / "sub" / "mine-too.txt").write_text("mine too\n")
    for extra in ((), ("--overwrite",)):
        code, _, err = cli("get", "vol", "/", str(dest), *extra)
        assert code == 0, err
        assert (dest / "mine.txt").read_text() == "mine\n" and (dest / "sub" / "mine-too.txt").read_text() == "mine too\n"
        assert (dest / "sub" / "deep.txt").read_text() == "deep\n"


# ---------------------------------------------------------------- item 10: Ctrl-C of a first commit

async def _check(config: Config, volume: str) -> CheckResult:
    from syncd.engine.wiring import open_engine
    from syncd.maint.check import check

    async with open_engine(config, use_cache=False) as engine:
        return await check(engine, volume, read_data=True)


def _stored_bytes(config: Config, volume: str) -> int:
    """Bytes of chunk data the bucket holds for ``volume`` (chunk and pack objects)."""
    import asyncio

    from syncd.engine.wiring import open_engine

    async def count() -> int:
        async with open_engine(config, use_cache=False) as engine:
            prefix = engine.layout.volume_prefix(volume)
            return sum([o.size async for o in engine.store.list_objects(prefix)
                        if o.key[len(prefix):].startswith(("chunks/", "packs/"))])
    return asyncio.run(count())


@pytest.mark.parametrize("large_pack", [0, 4 << 20], ids=["chunk-objects", "large-packs"])
def test_ctrl_c_of_a_first_commit_says_the_volume_is_empty_and_the_rerun_counts_what_it_reused(
        cli: Any, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large_pack: int) -> None:
    """The issue's sequence: Ctrl-C during the first commit of ~12 chunks, ``volume ls``, run it again."""
    import signal

    from syncd.data import upload
    monkeypatch.setenv("SYNCD_LARGE_PACK_SIZE", str(large_pack))    # 0: each 1 MiB chunk its own object
    monkeypatch.setenv("SYNCD_MAX_INFLIGHT_BYTES", str(3 << 20))      # a few PUTs at a time, as over a WAN
    src = tmp_path / "big"
    src.mkdir()
    # fixed bytes: 12 chunks, none over half the 3 MiB budget, so a large pack closes where its
    # size says and never early for a waiting reader (limits.py): both runs group the chunks alike,
    # and a pack the first run stored is one the re-run finds (random bytes: a matter of timing)
    (src / "data.bin").write_bytes(random.Random(17).randbytes(12 << 20))
    real_put = upload.put_immutable
    puts = 0

    async def put_then_ctrl_c(store: Any, key: str, data: bytes) -> bool:
        nonlocal puts
        stored = await real_put(store, key, data)
        puts += 1
        if puts == (5 if not large_pack else 1):
            os.kill(os.getpid(), signal.SIGINT)                   # what Ctrl-C sends, mid-transfer
        return stored
    monkeypatch.setattr(upload, "put_immutable", put_then_ctrl_c)
    code, out, err = cli("commit", "big", str(src))
    assert code == 130 and out == ""
    assert err.splitlines()[0] == "syncd: interrupted"
    assert "volume 'big' has no snapshot yet" in err and "Run it again" in err
    assert cli("volume", "ls")[1] == "big\n" and cli("ls", "big")[1] == ""   # created, and empty
    stored = _stored_bytes(config, "big")
    assert 0 < stored < 12 << 20

    monkeypatch.setattr(upload, "put_immutable", real_put)
    code, out, err = cli("--json", "commit", "big", str(src))
    assert code == 0, err
    result = json.loads(out)
    chunks = len(local_ids(src, config)["data.bin"])
    assert result["reused_chunks"] > 0 and result["reused_chunks"] + result["uploaded_chunks"] == chunks
    assert 0 < result["uploaded_bytes"] < 12 << 20 and "no snapshot yet" not in err
    # and whatever it found or not, every chunk is in place and whole. (Its uploaded bytes are not
    # compared with `stored`: in this process the PUTs in flight at the Ctrl-C run on, and one the
    # server finishes after that listing is reused too; a PUT cut off mid-body can leave a short
    # object that the listing counted and the re-run rewrites.)
    report = asyncio.run(_check(config, "big"))
    assert report.ok and report.bytes_verified >= 12 << 20, report.report()

    code, _, err = cli("commit", "big", str(src))                 # a volume with a snapshot: nothing to say
    assert code == 0 and "no snapshot yet" not in err


def test_the_progress_bar_is_stopped_before_syncd_interrupted(cli: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 10: no bar is drawn below 'syncd: interrupted' -- its refresh thread was told to stop before."""
    import signal
    import sys
    import threading

    from rich.live import _RefreshThread

    from syncd.data import upload
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)       # a terminal: commit shows a bar
    monkeypatch.setenv("SYNCD_MAX_INFLIGHT_BYTES", str(3 << 20))
    src = tmp_path / "big"
    src.mkdir()
    (src / "data.bin").write_bytes(os.urandom(12 << 20))          # above the bar's 8 MiB threshold
    real_put = upload.put_immutable
    seen: list[bool] = []

    async def put_then_ctrl_c(store: Any, key: str, data: bytes) -> bool:
        stored = await real_put(store, key, data)
        if not seen:
            seen.append(any(isinstance(t, _RefreshThread) for t in threading.enumerate()))
            os.kill(os.getpid(), signal.SIGINT)
        return stored
    monkeypatch.setattr(upload, "put_immutable", put_then_ctrl_c)
    code, _, err = cli("commit", "big", str(src))
    assert code == 130 and "syncd: interrupted" in err
    assert seen == [True]                                          # a bar was being drawn
    bars = [t for t in threading.enumerate() if isinstance(t, _RefreshThread)]
    assert all(t.done.is_set() for t in bars)      # stopped: it may still wake once, and then draws nothing


def test_restore_takes_the_path_after_the_snapshot_option(cli: Any, tmp_path: Path) -> None:
    """Item 8 alone, with full snapshot ids: the order docs/AGENT.md and ``--help`` show."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        (src / "a.txt").write_text(f"version {i}\n")
        (src / "b.txt").write_text(f"b {i}\n")
        assert cli("commit", "vol", str(src))[0] == 0
    first = _log_seqs(cli)[1]
    code, _, err = cli("restore", "vol", "--snapshot", first, "a.txt")
    assert code == 0, err
    assert cli("cat", "vol", "a.txt")[1] == "version 0\n" and cli("cat", "vol", "b.txt")[1] == "b 1\n"
