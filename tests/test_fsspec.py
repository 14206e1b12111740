"""``syncd://`` through fsspec on the real server: fsspec's shared abstract tests, ranged reads
counted in GETs, one snapshot per write or per transaction, and pandas/pyarrow parquet."""

from __future__ import annotations

import os
import posixpath
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from syncd.config import Config, MiB
from syncd.sdk.direct import Direct, direct, release
from syncd.sdk.fsspec import SyncdFileSystem
from syncd.store.base import MemoryStore

from .agentutil import env_for
from .gatewayutil import gateway_process


@pytest.fixture
def syncd_fs(config: Config) -> Iterator[SyncdFileSystem]:
    fs = SyncdFileSystem(config=config, skip_instance_cache=True)
    try:
        yield fs
    finally:
        release(config)


def _seq(config: Config, volume: str) -> int:
    async def head(engine: Any) -> int:
        return int((await engine.repo.head(volume)).seq)
    return direct(config).run(head)


@pytest.fixture(scope="module", params=["memory", pytest.param("seaweedfs", marks=pytest.mark.slow)])
def shared_fs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncdFileSystem]:
    """One filesystem (one engine) for all the abstract tests: each works in its own directory.

    fsspec's abstract tests check path semantics (what lands where for every form of cp/get/put),
    some 140 tests of a dozen snapshots each: on the in-memory store in the default suite
    (a few seconds), on the real server with ``-m slow`` (about a minute). Everything that
    depends on S3 itself is tested on the real server below.
    """
    tmp = tmp_path_factory.mktemp("fsspec")
    config = Config(s3_endpoint="http://memory.invalid", bucket="syncd-test", prefix=f"t-{uuid.uuid4().hex[:12]}", owner="alice",
                    cache_dir=tmp / "cache", state_dir=tmp / "state", chunk_size=1 * MiB,
                    pack_threshold=256 * 1024, pack_size=2 * MiB)
    if request.param == "memory":
        runner = Direct(config, backend=MemoryStore())
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        runner = Direct(config.replace(s3_endpoint=endpoint,
                                       bucket=os.environ.get("SYNCD_TEST_BUCKET", "syncd-test")))
    try:
        yield SyncdFileSystem(runner=runner, skip_instance_cache=True)
    finally:
        runner.close()


class SyncdFixtures(AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, shared_fs: SyncdFileSystem) -> SyncdFileSystem:
        return shared_fs

    @pytest.fixture
    def fs_join(self) -> Any:
        return posixpath.join

    @pytest.fixture
    def fs_path(self) -> str:
        return f"abstract/{uuid.uuid4().hex[:8]}"


class TestSyncdCopy(SyncdFixtures, AbstractCopyTests):  # type: ignore[misc]
    pass


class TestSyncdGet(SyncdFixtures, AbstractGetTests):  # type: ignore[misc]
    pass


class TestSyncdPut(SyncdFixtures, AbstractPutTests):  # type: ignore[misc]
    pass


class TestSyncdOpen(SyncdFixtures, AbstractOpenTests):  # type: ignore[misc]
    pass


class TestSyncdPipe(SyncdFixtures, AbstractPipeTests):  # type: ignore[misc]
    pass


def test_protocol_is_registered_and_reads_by_chunk(syncd_fs: SyncdFileSystem, config: Config,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = random.Random(3).randbytes(10 << 20)                       # ~ten chunks of 1 MiB on average
    syncd_fs.pipe_file("vol/big.bin", data)
    assert fsspec.get_filesystem_class("syncd") is SyncdFileSystem
    cold = config.replace(cache_dir=config.cache_dir.parent / "cold-cache")
    fs = SyncdFileSystem(config=cold, skip_instance_cache=True)
    try:
        counter = direct(cold).run(_counter)
        with fs.open("syncd://vol/big.bin", "rb") as f:
            counter.reset()
            f.seek(-8, 2)
            assert f.read(8) == data[-8:]
            first = counter.calls["get"]
            assert 1 <= first <= 2                                     # the last chunk or two only
            f.seek(3 << 20)
            assert f.read(10) == data[3 << 20:(3 << 20) + 10]
            assert 1 <= counter.calls["get"] - first <= 3        # a block of the first chunk's size
        counter.reset()
        assert fs.cat_file("vol/big.bin", start=-4) == data[-4:]       # the last chunk: from the cache
        assert _chunk_gets(counter) == 0
        assert fs.cat_file("vol/big.bin", 5, 9) == data[5:9]
        assert _chunk_gets(counter) == 1                               # the first chunk, once
    finally:
        release(cold)


def _chunk_gets(counter: Any) -> int:
    return sum(n for key, n in counter.keys.items() if "/chunks/" in key or "/packs/" in key)


async def _counter(engine: Any) -> Any:
    return engine.counter


def test_each_write_is_one_snapshot_and_a_transaction_is_one(syncd_fs: SyncdFileSystem, config: Config) -> None:
    syncd_fs.pipe_file("vol/a.txt", b"a")
    seq = _seq(config, "vol")
    with syncd_fs.open("vol/b.txt", "wb") as f:
        f.write(b"b" * 3_000_000)                                      # spans chunks
    assert _seq(config, "vol") == seq + 1
    syncd_fs.mv("vol/a.txt", "vol/moved/a.txt")
    syncd_fs.cp("vol/b.txt", "vol/c.txt")
    syncd_fs.rm("vol/moved", recursive=True)
    assert _seq(config, "vol") == seq + 4
    with syncd_fs.transaction:
        for i in range(5):
            syncd_fs.pipe_file(f"vol/t/{i}.txt", str(i).encode())
        with syncd_fs.open("vol/t/big.bin", "wb") as f:
            f.write(b"x" * 2_500_000)
        syncd_fs.rm("vol/c.txt")
        assert not syncd_fs.exists("vol/t/0.txt")                    # not visible before the end
    assert _seq(config, "vol") == seq + 5
    assert sorted(syncd_fs.ls("vol/t", detail=False)) == [f"vol/t/{i}.txt" for i in range(5)] + ["vol/t/big.bin"]
    assert not syncd_fs.exists("vol/c.txt") and syncd_fs.cat_file("vol/b.txt") == b"b" * 3_000_000
    with pytest.raises(RuntimeError), syncd_fs.transaction:
        syncd_fs.pipe_file("vol/never.txt", b"n")
        raise RuntimeError("abort")
    assert not syncd_fs.exists("vol/never.txt") and _seq(config, "vol") == seq + 5


def test_ls_info_find_glob(syncd_fs: SyncdFileSystem) -> None:
    syncd_fs.pipe({"vol/x/1.csv": b"1", "vol/x/y/2.csv": b"22", "vol/z.txt": b"z"})
    assert syncd_fs.ls("", detail=False) == ["vol"]
    assert syncd_fs.info("vol/x/y/2.csv")["size"] == 2
    assert syncd_fs.isdir("vol/x") and syncd_fs.isfile("vol/z.txt") and not syncd_fs.exists("vol/q")
    assert syncd_fs.find("vol") == ["vol/x/1.csv", "vol/x/y/2.csv", "vol/z.txt"]
    assert syncd_fs.glob("vol/**/*.csv") == ["vol/x/1.csv", "vol/x/y/2.csv"]
    with pytest.raises(FileNotFoundError):
        syncd_fs.cat_file("vol/missing")


def test_pandas_parquet_round_trip_through_the_protocol(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    for key, value in env_for(config).items():
        if key.startswith(("SYNCD_", "AWS_")):
            monkeypatch.setenv(key, value)
    frame = pd.DataFrame({"n": range(1000), "s": [f"row {i}" for i in range(1000)]})
    try:
        frame.to_parquet("syncd://my-volume/data.parquet")
        back = pd.read_parquet("syncd://my-volume/data.parquet")
        assert back.equals(frame)
        import pyarrow.dataset as ds
        table = ds.dataset("my-volume/data.parquet", filesystem=fsspec.filesystem("syncd"),
                           format="parquet").to_table()
        assert table.num_rows == 1000
    finally:
        release(Config.from_env())
        fsspec.filesystem("syncd").clear_instance_cache()


def test_parquet_footer_fetches_only_the_chunks_it_touches(syncd_fs: SyncdFileSystem, config: Config) -> None:
    """pyarrow reading a multi-chunk parquet file's metadata through syncd:// touches its tail only."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    values = np.random.default_rng(5).integers(0, 1 << 62, size=1_000_000)   # ~8 MiB, incompressible
    buffer = io.BytesIO()
    pq.write_table(pa.table({"v": values}), buffer, compression="none")
    data = buffer.getvalue()
    assert len(data) > 6 << 20
    syncd_fs.pipe_file("vol/big.parquet", data)
    cold = config.replace(cache_dir=config.cache_dir.parent / "cold-parquet")
    fs = SyncdFileSystem(config=cold, skip_instance_cache=True)
    try:
        counter = direct(cold).run(_counter)
        counter.reset()
        with fs.open("vol/big.parquet", "rb") as f:
            metadata = pq.ParquetFile(f).metadata
        assert metadata.num_rows == 1_000_000
        assert _chunk_gets(counter) == 1                 # of 8 or 9 chunks: the last one
    finally:
        release(cold)


def test_reads_through_a_gateway_touch_nothing_in_the_store(syncd_fs: SyncdFileSystem, config: Config,
                                                             tmp_path: Path) -> None:
    """Issue 14: an fsspec listing and read (HEAD, snapshot, trees, chunks) come through the pool."""
    data = random.Random(4).randbytes(3 << 20)
    syncd_fs.pipe_file("vol/deep/er/big.bin", data)
    syncd_fs.pipe_file("vol/deep/small.txt", b"small\n")
    with gateway_process(config, tmp_path) as (_, url):
        cold = config.replace(cache_dir=tmp_path / "gw-cold-cache", gateways=(url,))
        fs = SyncdFileSystem(config=cold, skip_instance_cache=True)
        try:
            counter = direct(cold).run(_counter)
            assert fs.find("vol") == ["vol/deep/er/big.bin", "vol/deep/small.txt"]
            assert fs.cat_file("vol/deep/er/big.bin") == data
            assert fs.cat_file("vol/deep/small.txt") == b"small\n"
            assert counter.calls["get"] == 0 and counter.bytes_in == 0
        finally:
            release(cold)
