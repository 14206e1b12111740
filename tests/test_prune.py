"""Pruning and checking volumes on the real server, including prune racing commits."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.volumes import Head
from syncd.engine.wiring import Engine, open_engine
from syncd.errors import PreconditionFailed, SnapshotNotFound
from syncd.format.chunking import content_id
from syncd.maint.check import check
from syncd.maint.prune import Retention, prune
from syncd.store.base import Blob, ObjectInfo, ObjectStore
from syncd.store.s3 import S3Store

from .checks import chunk_bytes, local_ids
from .conftest import worker_config
from .treeutil import make_tree, snapshot_tree

NOW_ONLY = Retention(keep_snapshots=1, grace=0)


async def volume_bytes(engine: Engine, volume: str) -> int:
    prefix = engine.layout.volume_prefix(volume)
    return sum([o.size async for o in engine.store.list_objects(prefix)])


async def commit_versions(engine: Engine, src: Path, n: int, size: int = 600_000) -> list[str]:
    """``n`` commits, each replacing a large file and a small one with new content."""
    ids = []
    for i in range(n):
        (src / "big.bin").write_bytes(os.urandom(size))
        (src / "small.txt").write_text(f"version {i}\n")
        res = await commit(engine, "vol", src)
        assert res.snapshot
        ids.append(res.snapshot)
    return ids


async def test_prune_keeps_newest_and_reclaims_space(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=20, large_size=1_500_000)
    async with open_engine(config) as eng:
        ids = await commit_versions(eng, src, 5)
        before = await volume_bytes(eng, "vol")
        res = await prune(eng, "vol", Retention(keep_snapshots=2, grace=0))
        after = await volume_bytes(eng, "vol")
        assert sorted(res.deleted_snapshots) == sorted(ids[:3])
        assert res.kept_snapshots == 2 and res.deleted_objects >= 3
        assert after < before - 3 * 600_000
        report = await check(eng, "vol", read_data=True)
        assert report.ok, report.report()
        assert report.snapshots == 2 and report.unreferenced == []
        with pytest.raises(SnapshotNotFound):
            await hydrate(eng, "vol", tmp_path / "old", snapshot_id=ids[0])
        history = await eng.repo.history("vol")
        assert [sid for sid, _ in history] == ids[:-3:-1]
    async with open_engine(worker_config(config, tmp_path, "w2")) as eng2:
        await hydrate(eng2, "vol", tmp_path / "dst")
        await hydrate(eng2, "vol", tmp_path / "prev", snapshot_id=ids[3])
    assert snapshot_tree(tmp_path / "dst") == snapshot_tree(src)


async def test_grace_period_protects_young_and_recently_superseded(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    async with open_engine(config) as eng:
        await commit_versions(eng, src, 3)
        # a chunk a concurrent commit has uploaded but not yet referenced
        orphan = os.urandom(1000)
        orphan_key = eng.layout.chunk("vol", content_id(orphan))
        await eng.store.put(orphan_key, orphan)
        res = await prune(eng, "vol", Retention(keep_snapshots=1))   # default grace: one hour
        assert res.deleted_snapshots == [] and res.deleted_objects == 0
        assert res.kept_snapshots == 3 and res.kept_young >= 1
        await eng.store.head(orphan_key)
        dry = await prune(eng, "vol", NOW_ONLY, dry_run=True)
        assert len(dry.deleted_snapshots) == 2 and dry.deleted_objects >= 3
        assert len(await eng.repo.history("vol")) == 3         # a dry run deletes nothing
        res = await prune(eng, "vol", NOW_ONLY)
        assert res.deleted_objects == dry.deleted_objects
        assert orphan_key not in [o.key async for o in eng.store.list_objects(eng.layout.volume_prefix("vol"))]


async def test_keep_days_uses_snapshot_age(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    async with open_engine(config) as eng:
        ids = await commit_versions(eng, src, 3, size=1000)
        created = {sid: s.created for sid, s in await eng.repo.history("vol")}
        # two days later, keep one day: only HEAD's snapshot is young enough
        later = max(created.values()) + 2 * 86400
        res = await prune(eng, "vol", Retention(keep_days=1, grace=0), now=later)
        assert sorted(res.deleted_snapshots) == sorted(ids[:2])
        assert (await check(eng, "vol")).ok


async def test_no_retention_only_collects_garbage(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    async with open_engine(config) as eng:
        await commit_versions(eng, src, 2, size=1000)
        orphan_snapshot = os.urandom(50)
        await eng.store.put(eng.layout.snapshot("vol", content_id(orphan_snapshot)), orphan_snapshot)
        res = await prune(eng, "vol", Retention(grace=0))
        assert res.deleted_snapshots == [content_id(orphan_snapshot)] and res.kept_snapshots == 2


async def test_prune_aborts_multipart_uploads_a_dead_writer_left(config: Config, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    async with open_engine(config.replace(stale_upload_age=0.0)) as eng:
        await commit_versions(eng, src, 1, size=1000)
        s3 = await S3Store.open(config)
        try:
            key = eng.layout.chunk("vol", "ab" * 16)
            await s3._client.create_multipart_upload(Bucket=config.bucket, Key=key)  # a writer died here
            prefix = eng.layout.volume_prefix("vol")
            assert len(await s3.multipart_uploads(prefix)) == 1
            import syncd.store.s3
            later = time.time() + 10  # S3 reports Initiated in whole seconds: look from 10 s on
            monkeypatch.setattr(syncd.store.s3.time, "time", lambda: later)
            res = await prune(eng, "vol", Retention(grace=0))
            assert res.aborted_uploads == 1
            assert await s3.multipart_uploads(prefix) == []
        finally:
            await s3.close()


async def test_commit_reuploads_a_chunk_pruned_from_under_its_index(config: Config, tmp_path: Path) -> None:
    """Worker A's index still names a chunk that only a pruned snapshot used; A renames the file."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    payload = os.urandom(700_000)
    (a_dir / "f.bin").write_bytes(payload)
    async with open_engine(config) as eng_a, open_engine(worker_config(config, tmp_path, "wb")) as eng_b:
        await commit(eng_a, "vol", a_dir)
        await hydrate(eng_b, "vol", b_dir)
        (b_dir / "f.bin").unlink()
        (b_dir / "other.txt").write_text("b was here")
        await commit(eng_b, "vol", b_dir)
        res = await prune(eng_b, "vol", NOW_ONLY)
        assert res.deleted_objects >= 1                 # f.bin's chunk is gone from the bucket
        (a_dir / "f.bin").rename(a_dir / "g.bin")       # a rename: A would reuse the chunk unread
        out = await commit(eng_a, "vol", a_dir)
        cut = len(local_ids(a_dir, config)["g.bin"])     # 700 KB of random bytes: one or two chunks by content
        assert out.files_read == 1 and out.uploaded_chunks == cut
        report = await check(eng_a, "vol", read_data=True)
        assert report.ok, report.report()
    async with open_engine(worker_config(config, tmp_path, "wc")) as eng_c:
        await hydrate(eng_c, "vol", tmp_path / "c")
    assert (tmp_path / "c" / "g.bin").read_bytes() == payload
    assert (tmp_path / "c" / "other.txt").read_text() == "b was here"


async def test_lease_closes_the_window_between_reuse_check_and_advance(config: Config, tmp_path: Path) -> None:
    """The interleaving docs/MAINTENANCE.md once left open: A checks that a reused chunk exists,
    then a whole prune runs and deletes it, then A advances HEAD. The lease prune wrote into
    HEAD makes A's advance fail; A sees the epoch moved, checks again and uploads the chunk."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    payload = os.urandom(700_000)
    (a_dir / "f.bin").write_bytes(payload)
    async with open_engine(config) as eng_a, open_engine(worker_config(config, tmp_path, "wb")) as eng_b:
        await commit(eng_a, "vol", a_dir)
        await hydrate(eng_b, "vol", b_dir)
        (b_dir / "f.bin").unlink()
        await commit(eng_b, "vol", b_dir)
        real_advance = eng_a.repo.advance
        pruned: list[int] = []

        async def advance_after_a_prune(head: Head, snapshot_id: str, seq: int) -> Head:
            if not pruned:                                # A's reuse check passed; now prune runs
                pruned.append((await prune(eng_b, "vol", NOW_ONLY)).deleted_objects)
            return await real_advance(head, snapshot_id, seq)

        eng_a.repo.advance = advance_after_a_prune        # type: ignore[method-assign]
        (a_dir / "f.bin").rename(a_dir / "g.bin")         # a rename: A reuses the chunk unread
        out = await commit(eng_a, "vol", a_dir)
        assert pruned and pruned[0] >= 1                  # the prune did delete f.bin's chunk
        assert out.files_read == 1 and out.uploaded_chunks >= 1     # read again, uploaded again
        head = await eng_a.repo.head("vol")
        assert head.epoch == 1 and head.lease is None
        report = await check(eng_a, "vol", read_data=True)
        assert report.ok, report.report()


async def test_commit_waits_while_prune_holds_the_lease(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.txt").write_text("x")
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        leased = await eng.repo.take_lease(await eng.repo.head("vol"), "test", 30.0)
        (src / "y.txt").write_text("y")
        task = asyncio.ensure_future(commit(eng, "vol", src))
        for _ in range(20):
            await asyncio.sleep(0.05)
        assert not task.done()                            # waiting for the lease, not advancing
        await eng.repo.release_lease(leased)
        res = await asyncio.wait_for(task, 30)
        assert res.seq == 2 and (await eng.repo.head("vol")).epoch == 1


class PruneRacingStore:
    """Real S3 underneath; when a PUT finds a chunk already there, a 'prune' deletes it right then."""

    def __init__(self, inner: S3Store) -> None:
        self.inner = inner
        self.raced: list[str] = []

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> Blob:
        return await self.inner.get(key, start, end)

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        try:
            return await self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)
        except PreconditionFailed:
            if "/chunks/" in key and not self.raced:
                self.raced.append(key)
                await self.inner.delete([key])
            raise

    async def head(self, key: str) -> ObjectInfo:
        return await self.inner.head(key)

    def list_objects(self, prefix: str):  # type: ignore[no-untyped-def]
        return self.inner.list_objects(prefix)

    async def list_prefixes(self, prefix: str) -> list[str]:
        return await self.inner.list_prefixes(prefix)

    async def delete(self, keys: list[str]) -> None:
        await self.inner.delete(keys)

    async def close(self) -> None:
        await self.inner.close()


async def test_commit_survives_prune_deleting_an_already_existing_chunk(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(500_000)
    first = chunk_bytes(payload, config)[0]    # 500 KB of random bytes: one chunk, or two about one time in nine
    async with open_engine(config) as eng:
        # an orphan left by an interrupted commit: the same bytes as the first chunk we are about to commit
        await eng.store.put(eng.layout.chunk("vol", content_id(first)), first)
    racing = PruneRacingStore(await S3Store.open(config))
    backend: ObjectStore = racing
    (src / "model.bin").write_bytes(payload)
    async with open_engine(config, backend=backend) as eng:
        await commit(eng, "vol", src)
        assert racing.raced                                  # the race really happened
        report = await check(eng, "vol", read_data=True)
        assert report.ok, report.report()


async def test_prune_concurrent_with_commits_loses_nothing(config: Config, tmp_path: Path) -> None:
    # A writer's new chunk is safe from prune only for the grace period, until its commit
    # advances HEAD (FORMAT.md section 11): the grace must outlast any one commit here, with
    # SeaweedFS's whole-second LastModified on top. Commits took up to 1.2 s at load 4.5 on
    # the 2-core machine; 3 s left too little room on a busier one.
    grace = 6.0
    policy = Retention(keep_snapshots=1, grace=grace)
    seed = tmp_path / "seed"
    seed.mkdir()
    async with open_engine(config) as eng:
        await commit_versions(eng, seed, 4, size=300_000)   # garbage for prune to find
    deadline = time.time() + grace + 0.5
    while time.time() < deadline:                           # let that garbage age past the grace period
        await asyncio.sleep(0.1)
    expected: dict[str, str] = {}
    writers_done = asyncio.Event()

    async def writer(i: int) -> None:
        wcfg = worker_config(config, tmp_path, f"w{i}")
        root = tmp_path / f"w{i}" / "dir"
        async with open_engine(wcfg) as weng:
            await hydrate(weng, "vol", root)
            for n in range(4):
                (root / f"w{i}.txt").write_text(f"writer {i} commit {n}\n")
                (root / f"w{i}.bin").write_bytes(os.urandom(300_000))
                await commit(weng, "vol", root)
            expected[f"w{i}.txt"] = f"writer {i} commit 3\n"
            expected[f"w{i}.bin"] = content_id((root / f"w{i}.bin").read_bytes())

    async def pruner() -> int:
        deleted = 0
        async with open_engine(worker_config(config, tmp_path, "pruner"), use_cache=False) as peng:
            while not writers_done.is_set():
                deleted += (await prune(peng, "vol", policy)).deleted_objects
                await asyncio.sleep(0.05)
        return deleted

    prune_task = asyncio.ensure_future(pruner())
    await asyncio.gather(*(writer(i) for i in range(3)))
    writers_done.set()
    deleted = await prune_task
    assert deleted >= 4                                     # prune really ran against live commits
    async with open_engine(worker_config(config, tmp_path, "reader")) as reng:
        await hydrate(reng, "vol", tmp_path / "final")
        report = await check(reng, "vol", read_data=True)
        assert report.ok, report.report()
    final = tmp_path / "final"
    for name, want in expected.items():
        got = (final / name).read_bytes()
        assert (content_id(got) if name.endswith(".bin") else got.decode()) == want
    assert (final / "small.txt").read_text() == "version 3\n"
