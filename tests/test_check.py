"""``syncd volume check`` finds every kind of damage; ``volume prune``/``check`` on the command line."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from syncd.cli.core import main
from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.wiring import Engine, open_engine
from syncd.format.manifest import Snapshot
from syncd.maint.check import check
from syncd.maint.prune import Retention, retained

from .treeutil import make_tree


async def committed(engine: Engine, tmp_path: Path, versions: int = 1) -> list[str]:
    src = tmp_path / "src"
    make_tree(src, small_files=10, large_size=1_200_000)
    ids = []
    for i in range(versions):
        (src / "v.txt").write_text(str(i))
        ids.append((await commit(engine, "vol", src)).snapshot or "")
    return ids


async def list_keys(engine: Engine, kind: str) -> list[str]:
    prefix = engine.layout.volume_prefix("vol") + kind + "/"
    return [o.key async for o in engine.store.list_objects(prefix)]


async def test_clean_volume_passes_and_orphans_are_only_reported(engine: Engine, tmp_path: Path) -> None:
    await committed(engine, tmp_path, versions=2)
    orphan = engine.layout.chunk("vol", "ab" * 16)
    await engine.store.put(orphan, b"left by an interrupted commit")
    report = await check(engine, "vol", read_data=True)
    assert report.ok, report.report()
    assert report.snapshots == 2 and report.bytes_verified > 1_200_000
    assert report.unreferenced == [orphan]


async def test_missing_chunk_is_named(engine: Engine, tmp_path: Path) -> None:
    await committed(engine, tmp_path)
    victim = (await list_keys(engine, "chunks"))[0]
    await engine.store.delete([victim])
    report = await check(engine, "vol")
    assert not report.ok
    assert any(victim in p and "missing" in p and "'vol'" in p for p in report.problems)


async def test_corrupt_pack_needs_read_data(engine: Engine, tmp_path: Path) -> None:
    await committed(engine, tmp_path)
    pack = (await list_keys(engine, "packs"))[0]
    data = bytearray((await engine.store.get(pack)).data)
    data[len(data) // 2] ^= 0xFF
    await engine.store.put(pack, bytes(data))
    assert (await check(engine, "vol")).ok                       # sizes still match
    report = await check(engine, "vol", read_data=True)
    assert [p for p in report.problems if pack in p and "corrupt" in p]


async def test_truncated_pack_is_found_without_reading(engine: Engine, tmp_path: Path) -> None:
    await committed(engine, tmp_path)
    pack = (await list_keys(engine, "packs"))[0]
    data = (await engine.store.get(pack)).data
    await engine.store.put(pack, data[:-10])
    report = await check(engine, "vol")
    assert [p for p in report.problems if pack in p and "needs bytes" in p]


async def test_corrupt_snapshot_and_lost_history_are_problems(engine: Engine, tmp_path: Path) -> None:
    ids = await committed(engine, tmp_path, versions=3)
    key = engine.layout.snapshot("vol", ids[1])
    await engine.store.delete([key])                             # lost, not pruned: no horizon
    report = await check(engine, "vol")
    assert [p for p in report.problems if ids[1] in p and "missing" in p]
    head_key = engine.layout.snapshot("vol", ids[2])
    data = bytearray((await engine.store.get(head_key)).data)
    data[5] ^= 0x01
    await engine.store.put(head_key, bytes(data))
    report = await check(engine, "vol")
    assert [p for p in report.problems if ids[2] in p and "content hash" in p]


def test_retention_rules() -> None:
    def snap(seq: int, created: float) -> tuple[str, Snapshot]:
        return (f"{seq:032x}", Snapshot("v", "o", seq, None, created, "w"))

    day = 86400.0
    now = 100 * day
    history = [snap(5, now - 1), snap(4, now - 2 * day), snap(3, now - 3 * day), snap(2, now - 9 * day)]
    assert retained(history, Retention(), now) == 4
    assert retained(history, Retention(keep_snapshots=2, grace=0), now) == 2
    assert retained(history, Retention(keep_days=2.5, grace=0), now) == 2
    assert retained(history, Retention(keep_days=0, grace=0), now) == 1       # HEAD always stays
    # superseded one second ago (by seq 5): kept by the grace period whatever the count says
    assert retained(history, Retention(keep_snapshots=1, grace=60), now) == 2
    assert retained([], Retention(keep_snapshots=1), now) == 0


@pytest.fixture
def cli_env(config: Config, monkeypatch: pytest.MonkeyPatch) -> Config:
    for name, value in (("SYNCD_S3_ENDPOINT", config.s3_endpoint or ""), ("SYNCD_BUCKET", config.bucket),
                        ("SYNCD_PREFIX", config.prefix), ("SYNCD_OWNER", config.owner),
                        ("SYNCD_CACHE_DIR", str(config.cache_dir)), ("SYNCD_STATE_DIR", str(config.state_dir)),
                        ("SYNCD_CHUNK_SIZE", str(config.chunk_size)),
                        ("SYNCD_PACK_THRESHOLD", str(config.pack_threshold)),
                        ("SYNCD_KEEP_SNAPSHOTS", "1"), ("SYNCD_PRUNE_GRACE", "0")):
        monkeypatch.setenv(name, value)
    return config


def test_cli_prune_and_check(cli_env: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / "f.bin").write_bytes(os.urandom(400_000))
        assert main(["-q", "commit", "vol", str(src)]) == 0
    capsys.readouterr()
    assert main(["--json", "volume", "prune", "vol", "--dry-run"]) == 0
    assert len(json.loads(capsys.readouterr().out)["deleted_snapshots"]) == 2
    assert main(["--json", "volume", "prune", "vol", "--keep-snapshots", "2"]) == 0   # flag beats env
    assert len(json.loads(capsys.readouterr().out)["deleted_snapshots"]) == 1
    assert main(["--json", "volume", "check", "vol", "--read-data"]) == 0
    assert json.loads(capsys.readouterr().out)["snapshots"] == 2


def test_cli_check_fails_with_a_report(cli_env: Config, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(400_000))
    assert main(["-q", "commit", "vol", str(src)]) == 0

    async def damage() -> str:
        async with open_engine(cli_env) as eng:
            # 400 KB cut by content: one chunk object or, about one time in 15, two chunks in a pack
            key = (await list_keys(eng, "chunks") + await list_keys(eng, "packs"))[0]
            await eng.store.delete([key])
            return key

    key = asyncio.run(damage())
    capsys.readouterr()
    assert main(["volume", "check", "vol"]) == 4
    err = capsys.readouterr().err
    assert key in err and "missing" in err


async def test_pruned_horizon_never_moves_back_even_with_racing_prunes(engine: Engine) -> None:
    from syncd.maint.reachability import raise_horizon, read_horizon
    await engine.repo.create("vol")
    assert await read_horizon(engine.store, engine.layout, "vol") == 0
    await asyncio.gather(*(raise_horizon(engine.store, engine.layout, "vol", s) for s in (3, 9, 5, 7)))
    assert await read_horizon(engine.store, engine.layout, "vol") == 9
    assert await raise_horizon(engine.store, engine.layout, "vol", 4) == 9
