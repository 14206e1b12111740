"""S3 faults: syncd talks to the real server through a fault-injecting proxy.

Each fault the proxy injects must cost exactly one retry and the work must
complete; a fault that persists must end, after ``retries`` attempts, in a
TransientStoreError naming the operation and key; and a failure part-way must
leave nothing half-done visible: no partial or temporary file in the target
directory, no HEAD pointing at a snapshot whose objects are not all there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine, open_engine
from syncd.errors import TransientStoreError
from syncd.store.wrap import RetryingStore

from .checks import check_head_complete, tmp_files
from .conftest import worker_config
from .faultproxy import FaultProxy, Rule
from .treeutil import make_tree, snapshot_tree


@pytest.fixture
def faulty(config: Config, proxy: FaultProxy) -> Config:
    """The test's config, but through the proxy, with a short read timeout."""
    return config.replace(s3_endpoint=proxy.endpoint, read_timeout=0.5, connect_timeout=1.0,
                          retries=4, retry_base_delay=0.01)


@contextlib.asynccontextmanager
async def seeded(config: Config, tmp_path: Path, small_files: int = 3) -> AsyncIterator[tuple[Engine, Path]]:
    """An engine on ``config`` and a small tree in ``src`` already committed to volume "vol"."""
    src = tmp_path / "src"
    make_tree(src, small_files=small_files, large_size=1024)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        yield eng, src


def retries(engine: Engine) -> int:
    """Retries by the store wrapper, plus streamed bodies the fetcher read again (hydrate streams
    large chunks into place; a body that breaks off half-way is re-read there, not in the wrapper)."""
    inner = engine.counter.inner
    assert isinstance(inner, RetryingStore)
    return inner.retries + engine.fetcher.stream_retries


# which requests each fault is aimed at: every fault must hit both commit and hydrate traffic
CASES = {
    "reset": [Rule("reset", every=3, times=3)],
    "reset_after": [Rule("reset_after", method="PUT", every=2, times=3)],
    "slowdown": [Rule("slowdown", every=2, times=3)],
    "truncate": [Rule("truncate", method="GET", every=2, times=3)],
    "stall": [Rule("stall", method="GET", path="/packs/", delay=2.0, times=1),
              Rule("stall", method="PUT", path="/HEAD", delay=2.0, times=1)],
    "stall_body": [Rule("stall_body", method="GET", path="/packs/", delay=2.0, times=1),
                   Rule("stall_body", method="GET", path="/chunks/", delay=2.0, times=1)],
}


@pytest.mark.parametrize("fault", sorted(CASES))
async def test_transient_faults_are_retried_and_work_completes(
        fault: str, faulty: Config, proxy: FaultProxy, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, small_files=20, large_size=2 * 1024 * 1024 + 5)
    async with open_engine(faulty) as eng, open_engine(worker_config(faulty, tmp_path, "w2")) as eng2:
        proxy.rules = [Rule(r.fault, r.method, r.path, r.skip, r.every, r.times, r.delay) for r in CASES[fault]]
        result = await commit(eng, "vol", src)
        for rule in proxy.rules:      # hydrate meets the same faults again
            rule.injected = 0
        await hydrate(eng2, "vol", dst)
        assert proxy.injected[fault] >= 2
        assert retries(eng) + retries(eng2) == proxy.injected[fault]
        assert (await eng.repo.head("vol")).snapshot == result.snapshot and result.seq == 1
        await check_head_complete(eng2, "vol")
    assert snapshot_tree(dst) == snapshot_tree(src)


async def test_latency_slows_but_does_not_retry(faulty: Config, proxy: FaultProxy, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, small_files=10, large_size=1024)
    async with open_engine(faulty) as eng:
        proxy.rules = [Rule("latency", delay=0.2)]
        started = time.monotonic()
        await commit(eng, "vol", src)
        await hydrate(eng, "vol", dst)
        elapsed = time.monotonic() - started
        assert retries(eng) == 0
    assert proxy.injected["latency"] >= 5 and elapsed >= 0.2 * 5  # HEAD, snapshot, pack ... in sequence
    assert snapshot_tree(dst) == snapshot_tree(src)


async def test_persistent_fault_gives_up_with_a_clear_error(faulty: Config, proxy: FaultProxy,
                                                            tmp_path: Path) -> None:
    async with seeded(faulty, tmp_path, 5) as (eng, src):
        old = await eng.repo.head("vol")
        (src / "new.txt").write_text("pending\n")
        proxy.rules = [Rule("slowdown", method="PUT", path="/HEAD")]
        with pytest.raises(TransientStoreError, match=r"PUT \S+/vol/HEAD: gave up after 4 attempts.*SlowDown"):
            await commit(eng, "vol", src)
        assert proxy.requests("PUT", "/vol/HEAD") == 2 + 4    # create + advance, then 4 attempts
        proxy.rules = []
        assert await eng.repo.head("vol") == old
        await check_head_complete(eng, "vol")
        result = await commit(eng, "vol", src)                # the pending change is not lost
        assert result.seq == old.seq + 1
        snap = await eng.repo.snapshot("vol", result.snapshot or "")
        assert "new.txt" in snap.entries

        dst = tmp_path / "dst"
        proxy.rules = [Rule("reset", method="GET", path="/snapshots/")]
        async with open_engine(worker_config(faulty, tmp_path, "w2")) as eng2:
            with pytest.raises(TransientStoreError, match=r"GET \S+/vol/snapshots/\w+: gave up after 4 attempts"):
                await hydrate(eng2, "vol", dst)
        assert list(dst.iterdir()) == []


async def test_persistent_stall_is_bounded_by_the_read_timeout(faulty: Config, proxy: FaultProxy,
                                                               tmp_path: Path) -> None:
    async with seeded(faulty, tmp_path) as (eng, src):
        proxy.rules = [Rule("stall", method="GET", path="/vol/HEAD", delay=10.0)]
        started = time.monotonic()
        with pytest.raises(TransientStoreError, match=r"GET \S+/vol/HEAD: gave up after 4 attempts"):
            await hydrate(eng, "vol", tmp_path / "dst")
        elapsed = time.monotonic() - started
    assert proxy.injected["stall"] == 4
    assert 4 * 0.5 <= elapsed < 4 * 0.5 + 3.0     # each attempt ends at the 0.5 s read timeout


async def test_hydrate_failing_part_way_leaves_only_whole_files(faulty: Config, proxy: FaultProxy,
                                                                tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, small_files=60, large_size=12 * 1024 * 1024 + 1)     # 3+ chunks (at most 4 MiB each)
    w2 = worker_config(faulty, tmp_path, "w2").replace(pack_size=64 * 1024)
    async with open_engine(faulty.replace(pack_size=64 * 1024)) as eng, open_engine(w2) as eng2:
        await commit(eng, "vol", src)
        await hydrate(eng2, "vol", dst)
        old = snapshot_tree(dst)
        for p in sorted(src.rglob("*.txt")) + [src / "models" / "big.bin"]:
            p.write_bytes(p.read_bytes()[::-1] + b"v2")
        await commit(eng, "vol", src)
        new = snapshot_tree(src)
        # the store dies part-way through the data (format v2 reads HEAD, the snapshot and the
        # changed trees first, a number that depends on the tree): two pack and two chunk GETs in
        proxy.rules = [Rule("reset", method="GET", path="/packs/", skip=2),
                       Rule("reset", method="GET", path="/chunks/", skip=2)]
        with pytest.raises(TransientStoreError):
            await hydrate(eng2, "vol", dst)
        mixed = snapshot_tree(dst)
        assert not tmp_files(dst)
        for path, value in mixed.items():
            assert value in (old.get(path), new.get(path)), f"{path} is neither the old nor the new version"
        assert any(mixed[p] == new[p] != old.get(p) for p in mixed if p in new), "the failure came too early"
        proxy.rules = []
        await hydrate(eng2, "vol", dst)                           # the next hydrate finishes the job
    assert snapshot_tree(dst) == new


@pytest.mark.parametrize("fault", ["truncate", "garble", "reset", "slowdown"])
async def test_listing_faults_are_retried(fault: str, faulty: Config, proxy: FaultProxy, tmp_path: Path) -> None:
    async with seeded(faulty, tmp_path) as (eng, src):
        await eng.repo.delete("vol")
        for name in ("a", "b"):
            await commit(eng, name, src)
        proxy.rules = [Rule(fault, method="GET", path="list-type=2", times=2)]
        assert await eng.repo.names() == ["a", "b"]
        assert await eng.repo.delete("a") >= 3
        assert retries(eng) == proxy.injected[fault] == 2


async def test_advance_that_landed_but_lost_its_answer_is_not_doubled(faulty: Config, proxy: FaultProxy,
                                                                      tmp_path: Path) -> None:
    async with seeded(faulty, tmp_path) as (eng, src):
        (src / "new.txt").write_text("x\n")
        proxy.rules = [Rule("reset_after", method="PUT", path="/vol/HEAD", times=1)]
        result = await commit(eng, "vol", src)    # the retried If-Match PUT gets 412: already ours
        assert proxy.injected["reset_after"] == 1 and retries(eng) == 1
        history = await eng.repo.history("vol")
        assert [s.seq for _, s in history] == [2, 1] and history[0][0] == result.snapshot


async def test_an_outage_is_ridden_out_within_the_deadline_and_reported_past_it(
        faulty: Config, proxy: FaultProxy, tmp_path: Path) -> None:
    """SYNCD_STORE_DEADLINE: once the store has answered, a transient failure is retried past
    SYNCD_RETRIES attempts for as long as the deadline allows; past it, one line; a store that
    never answered this process is not waited for (a mistyped endpoint should be heard at once)."""
    config = faulty.replace(retries=2, store_deadline=4.0)
    async with seeded(config, tmp_path) as (eng, src):
        (src / "new.txt").write_text("x\n")
        proxy.rules = [Rule("reset", method="PUT", path="/vol/HEAD", times=5)]
        result = await commit(eng, "vol", src)              # 6 attempts where SYNCD_RETRIES says 2
        assert proxy.injected["reset"] == 5 and retries(eng) == 5 and result.seq == 2
        proxy.rules = [Rule("slowdown", method="PUT", path="/vol/HEAD")]   # an outage that does not end
        (src / "more.txt").write_text("y\n")
        with pytest.raises(TransientStoreError, match=r"PUT \S+/vol/HEAD: gave up after \d+ attempts in "
                                                      r"[\d.]+ s: .*SlowDown") as failed:
            await commit(eng, "vol", src)
        assert "\n" not in str(failed.value) and proxy.injected["slowdown"] > 2
        assert float(str(failed.value).split(" in ", 1)[1].split(" s:", 1)[0]) >= 4.0
        proxy.rules = []
        assert (await eng.repo.head("vol")).seq == 2 and await check_head_complete(eng, "vol")
    async with open_engine(config) as fresh:                # has not heard from the store yet
        proxy.rules = [Rule("reset")]
        with pytest.raises(TransientStoreError, match=r"gave up after 2 attempts in "):
            await fresh.repo.head("vol")
        assert proxy.injected["reset"] == 5 + 2


async def test_opening_the_store_rides_out_a_throttled_bucket_check(faulty: Config, proxy: FaultProxy,
                                                                   tmp_path: Path) -> None:
    """The first request of every engine (the bucket check) meets 503s: it is retried like any
    request, so a mount process or gateway starting while the store throttles does not fail
    (the soak's revived lazy mount did, at once, with 'the server answered, but the request failed')."""
    proxy.rules = [Rule("slowdown", method="GET", path="list-type=2", times=3)]
    async with open_engine(faulty) as eng:                 # 4 attempts: 3 refused, the 4th answered
        assert proxy.injected["slowdown"] == 3
        await eng.repo.create("vol")
    proxy.rules = [Rule("slowdown", method="GET", path="list-type=2")]
    with pytest.raises(TransientStoreError, match=r"cannot reach the object store .*SlowDown") as failed:
        async with open_engine(faulty):
            pass
    assert "\n" not in str(failed.value) and proxy.injected["slowdown"] == 3 + 4


async def test_advance_that_landed_while_another_writer_moved_on_is_recognised(
        faulty: Config, config: Config, proxy: FaultProxy, tmp_path: Path) -> None:
    """The answer to our HEAD advance is lost and, before we retry, another writer commits the
    same path on top of our snapshot. The retry's 412 must not make us publish our changes a
    second time (on main: a second snapshot that put our older version back over theirs), nor,
    after 30 such races, tell the user to try again: the snapshot we published is recognised in
    the history and is the commit's result (the soak's "2 snapshots more than commits")."""
    async with seeded(faulty.replace(read_timeout=30.0), tmp_path) as (eng, src):
        other = tmp_path / "other"
        other.mkdir()
        (other / "shared.txt").write_text("theirs, committed later\n")
        theirs: list[str | None] = []

        async def another_writer_commits() -> None:     # straight to the server, not through the proxy
            async with open_engine(worker_config(config, tmp_path, "w2")) as eng2:
                theirs.append((await commit(eng2, "vol", other)).snapshot)

        (src / "shared.txt").write_text("ours\n")
        proxy.rules = [Rule("reset_after", method="PUT", path="/vol/HEAD", times=1, meanwhile=another_writer_commits)]
        result = await commit(eng, "vol", src)
        assert proxy.injected["reset_after"] == 1 and len(theirs) == 1
        history = await eng.repo.history("vol")
        assert [s.seq for _, s in history] == [3, 2, 1], "our changes were published twice"
        assert [sid for sid, _ in history[:2]] == [theirs[0], result.snapshot] and result.seq == 2
        assert history[0][1].entries["shared.txt"].size == len("theirs, committed later\n")  # the later wins
        (src / "next.txt").write_text("y\n")                 # the index knows what was committed
        after = await commit(eng, "vol", src)
        assert after.seq == 4 and after.changed == 1


async def test_put_cut_off_after_its_headers_leaves_the_old_object(engine: Engine, proxy: FaultProxy,
                                                                   faulty: Config, tmp_path: Path) -> None:
    """A client killed right after sending a PUT's headers: SeaweedFS would store an empty object
    (over the old one, even under If-Match) unless the PUT carries Content-MD5."""
    async with seeded(faulty, tmp_path) as (eng, src):
        before = await eng.repo.head("vol")
        head_key = eng.layout.head("vol")
        proxy.rules = [Rule("cut_request", method="PUT", path="/vol/HEAD", delay=0.0)]
        with pytest.raises(TransientStoreError):
            await eng.store.put(head_key, b'{"format": 1}', if_match=before.etag)
        with pytest.raises(TransientStoreError):
            await eng.store.put(head_key, b'{"format": 1}')
    assert await engine.repo.head("vol") == before          # HEAD is intact, readable, unchanged
