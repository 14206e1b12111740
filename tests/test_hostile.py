"""Hostile input: fuzzed manifests and pack references, bad names, planted symlinks.

The pure fuzzing uses hypothesis with a fixed budget and derandomized seeds
(stable in CI); end-to-end cases plant a hostile snapshot behind a valid HEAD
on the real server and check that hydrate fails with a typed error and writes
nothing, inside the target or outside it.
"""

from __future__ import annotations

import copy
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.volumes import encode_head
from syncd.engine.wiring import Engine, open_engine
from syncd.errors import IntegrityError, InvalidName, LocalConflict, LocalIOError, ManifestError
from syncd.format import manifest
from syncd.format.chunking import content_id
from syncd.format.layout import Layout, validate_name
from syncd.format.manifest import ChunkRef, Entry, Snapshot
from syncd.local.scan import TMP_PREFIX

from .conftest import worker_config

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
ID = "a" * 32

# ---------------------------------------------------------------- pure fuzzing of manifests

Doc = dict[str, Any]


def valid_doc() -> Doc:
    return {"format": 1, "volume": "v", "owner": "o", "seq": 1, "parent": None, "created": 0.0,
            "writer": "w", "message": "", "entries": [
                {"path": "d", "type": "dir", "mode": 0o755, "mtime_ns": 0},
                {"path": "d/f", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 10,
                 "chunks": [[ID, 4, "b" * 32, 0], [ID, 6]]},
                {"path": "d/l", "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": "f"},
            ]}


def stored(doc: Any) -> bytes:
    return zlib.compress(json.dumps(doc).encode())


def entry(doc: Doc, path: str) -> Doc:
    found: Doc = next(e for e in doc["entries"] if e["path"] == path)
    return found


def set_path(path: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        entry(doc, "d/f")["path"] = path
    return mutate


def set_field(path: str, key: str, value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        entry(doc, path)[key] = value
    return mutate


def set_top(key: str, value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc[key] = value
    return mutate


def set_ref(i: int, value: Any, size: int | None = None) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        f = entry(doc, "d/f")
        f["chunks"][i] = value
        if size is not None:
            f["size"] = size
    return mutate


def duplicate(doc: Doc) -> None:
    doc["entries"].append(copy.deepcopy(entry(doc, "d/f")))


def orphan(doc: Doc) -> None:
    doc["entries"] = [e for e in doc["entries"] if e["path"] != "d"]


ESCAPES = ["../../x", "../../etc/passwd", "/etc/passwd", "../..", "../d/../../../x", "", "a\x00b", "x/" * 2100]
PATHS = ["/abs", "../up", "d/../../up", "d/./f", "d//f", "d/", "", "d/f\x00", ".", "d/" + "x" * 5000]
TYPE_CONFUSION: list[Any] = [None, True, "1", 1.5, [], {}, -1, 2**70]
VALID_ALSO: dict[str, list[Any]] = {"entries": [[]], "owner": ["1"], "volume": ["1"], "writer": ["1"], "created": [1.5, -1, 2**70],
              "path": ["1"], "mtime_ns": [-1]}


def confused(key: str) -> st.SearchStrategy[Any]:
    """Values of the wrong type (or range) for ``key``."""
    return st.sampled_from([v for v in TYPE_CONFUSION if v not in VALID_ALSO.get(key, [])
                            or isinstance(v, bool)])

MUTATIONS = st.one_of(
    st.sampled_from(PATHS).map(set_path),
    st.sampled_from(ESCAPES).map(lambda t: set_field("d/l", "target", t)),
    st.sampled_from([duplicate, orphan]),
    st.integers().filter(lambda v: v != 1).map(lambda v: set_top("format", v)),
    st.sampled_from(["format", "entries", "owner", "volume", "seq", "created", "writer"]).flatmap(
        lambda k: confused(k).map(lambda v: set_top(k, v))),
    st.sampled_from(["mode", "mtime_ns", "size", "chunks", "type", "path"]).flatmap(
        lambda k: confused(k).map(lambda v: set_field("d/f", k, v))),
    st.integers(min_value=-5, max_value=5).filter(lambda n: n != 0).map(
        lambda n: set_field("d/f", "size", 10 + n)),                           # chunks do not add up
    st.sampled_from([2**50 + 1, 2**63, -10]).map(lambda n: set_field("d/f", "size", n)),
    st.sampled_from([
        set_ref(1, [ID, 0], size=4),                       # empty chunk
        set_ref(1, [ID, (5 << 30) + 1], size=4 + (5 << 30) + 1),   # chunk above 5 GiB
        set_ref(1, ["../../" + "a" * 26, 6]),              # id that is a path
        set_ref(1, [ID.upper(), 6]),
        set_ref(1, [ID, 6, "not-a-pack", 0]),
        set_ref(1, [ID, 6, "b" * 32, -1]),
        set_ref(1, [ID, 6, "b" * 32]),                      # 3 fields
        set_ref(1, {"id": ID, "size": 6}),
    ]),
    st.sampled_from(["../x", "X" * 33, 7]).map(lambda p: set_top("parent", p)),
)


@FUZZ
@given(MUTATIONS)
def test_every_hostile_mutation_is_a_manifest_error(mutate: Callable[[Doc], None]) -> None:
    doc = valid_doc()
    manifest.decode(stored(doc))                 # the unmutated document is fine
    mutate(doc)
    with pytest.raises(ManifestError):
        manifest.decode(stored(doc))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)


@FUZZ
@given(st.dictionaries(st.sampled_from(["path", "type", "mode", "mtime_ns", "size", "chunks", "target"]),
                       JSON, max_size=7))
def test_arbitrary_entries_are_rejected_or_safe(raw: Doc) -> None:
    doc = valid_doc()
    doc["entries"].append({"type": "file", **raw})
    try:
        snap = manifest.decode(stored(doc))
    except ManifestError:
        return
    manifest.validate_entries(snap.entries)      # anything accepted is a safe tree
    for path in snap.entries:
        assert not path.startswith("/") and ".." not in path.split("/")


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_and_random_json_are_manifest_errors(data: bytes) -> None:
    with pytest.raises(ManifestError):
        manifest.decode(data)
    with pytest.raises(ManifestError):
        manifest.decode(zlib.compress(data))


def test_symlinks_escaping_through_other_symlinks_are_refused() -> None:
    doc = valid_doc()
    doc["entries"] += [
        {"path": "d/e", "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": ".."},   # the root: fine
        {"path": "a", "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": "d/e"},     # the root: fine
    ]
    manifest.decode(stored(doc))
    doc["entries"].append({"path": "x", "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": "a/.."})
    with pytest.raises(ManifestError, match="'x'"):
        manifest.decode(stored(doc))


LINK_PARTS = st.sampled_from(["..", "a", "l1", "a/l3", "a/b/l4"])


@settings(FUZZ, max_examples=400)
@given(st.dictionaries(st.sampled_from(["l1", "l2", "a/l3", "a/b/l4"]),
                       st.lists(LINK_PARTS, min_size=1, max_size=3).map("/".join), min_size=2))
def test_accepted_symlinks_never_resolve_outside_on_a_real_filesystem(links: dict[str, str]) -> None:
    entries = {"a": Entry("a", "dir", 0o755), "a/b": Entry("a/b", "dir", 0o755)}
    entries.update({p: Entry(p, "symlink", 0o777, target=t) for p, t in links.items()})
    try:
        manifest.validate_entries(entries)
    except ManifestError:
        return
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sandbox" / "root"
        (root / "a" / "b").mkdir(parents=True)
        for path, target in links.items():
            (root / path).symlink_to(target)
        real_root = os.path.realpath(root)
        for path in links:
            real = os.path.realpath(root / path)
            assert real == real_root or real.startswith(real_root + "/"), (path, links)


def test_absurd_entry_counts_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "MAX_ENTRIES", 3)
    doc = valid_doc()
    doc["entries"].append({"path": "e", "type": "dir", "mode": 0o755, "mtime_ns": 0})
    with pytest.raises(ManifestError, match="entries"):
        manifest.decode(stored(doc))


@FUZZ
@given(st.text(max_size=80))
def test_names_are_valid_or_refused(name: str) -> None:
    try:
        validate_name(name)
    except InvalidName:
        with pytest.raises(InvalidName):
            Layout("p", name)
        return
    assert "/" not in name and name not in (".", "..") and 1 <= len(name) <= 63 and name.isascii()
    assert Layout("p", name).volume_prefix(name) == f"p/{name}/{name}/"


@pytest.mark.parametrize("name", ["..", ".", "../bob", "a/b", "", "x" * 64, "-lead", "tab\t", "é"])
async def test_bad_owner_names_never_reach_the_store(config: Config, name: str) -> None:
    with pytest.raises(InvalidName):
        async with open_engine(config.replace(owner=name)):
            pass


# ---------------------------------------------------------------- hostile snapshots end to end

async def plant(eng: Engine, volume: str, doc: Doc) -> None:
    data = stored(doc)
    sid = content_id(data)
    await eng.store.put(eng.layout.snapshot(volume, sid), data)
    await eng.store.put(eng.layout.head(volume), encode_head(volume, sid, 1, 0.0))


def tree_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.parametrize("mutate", [set_path("../escape"), set_path("/tmp/escape"),
                                    set_field("d/l", "target", "../../outside"), duplicate, orphan,
                                    set_field("d/f", "size", 11), set_top("format", 2),
                                    set_field("d/f", "mode", "0777")])
async def test_hostile_snapshot_behind_a_valid_head_writes_nothing(
        engine: Engine, tmp_path: Path, mutate: Callable[[Doc], None]) -> None:
    doc = valid_doc()
    doc["owner"], doc["volume"] = engine.layout.owner, "evil"
    mutate(doc)
    await plant(engine, "evil", doc)
    sandbox = tmp_path / "sandbox"
    target = sandbox / "inner" / "target"
    target.mkdir(parents=True)
    with pytest.raises(ManifestError):
        await hydrate(engine, "evil", target)
    assert tree_files(sandbox) == ["inner", "inner/target"]


# ---------------------------------------------------------------- the pack index: ChunkRefs

async def real_volume(eng: Engine, tmp_path: Path) -> Snapshot:
    src = tmp_path / "src"
    (src / "small").mkdir(parents=True)
    for i in range(6):
        (src / "small" / f"s{i}.txt").write_bytes(os.urandom(3000 + i))
    (src / "big.bin").write_bytes(os.urandom(4_300_000))     # several chunks (1 MiB on average)
    await commit(eng, "vol", src)
    _, snap = await eng.repo.latest("vol")
    assert snap is not None
    return snap


def with_refs(snap: Snapshot, path: str, refs: list[ChunkRef]) -> Snapshot:
    entries = dict(snap.entries)
    old = entries[path]
    entries[path] = Entry(path, "file", old.mode, old.mtime_ns, sum(r.size for r in refs), tuple(refs))
    return Snapshot(snap.volume, snap.owner, snap.seq + 1, None, 0.0, "evil", entries)


def ref_attacks(snap: Snapshot) -> dict[str, tuple[str, list[ChunkRef]]]:
    s0 = snap.entries["small/s0.txt"].chunks[0]
    s1 = snap.entries["small/s1.txt"].chunks[0]
    big = snap.entries["big.bin"].chunks
    assert s0.pack is not None
    return {
        "offset past the pack": ("small/s0.txt", [ChunkRef(s0.id, s0.size, s0.pack, 10**7)]),
        "range straddling the end": ("small/s0.txt", [ChunkRef(s0.id, s0.size, s0.pack, 2 * 1024 * 1024 - 5)]),
        "overlapping another chunk": ("small/s0.txt", [ChunkRef(s0.id, s0.size, s0.pack, s1.offset)]),
        "huge size in a pack": ("small/s0.txt", [ChunkRef(s0.id, 4 << 30, s0.pack, s0.offset)]),
        "huge chunk object": ("big.bin", [ChunkRef(big[0].id, 4 << 30)]),
        "pack that does not exist": ("small/s0.txt", [ChunkRef(s0.id, s0.size, "c" * 32, 0)]),
        "chunk that does not exist": ("big.bin", [ChunkRef("d" * 32, 100)]),
        "swapped chunk ids": ("big.bin", [ChunkRef(big[1].id, big[0].size), ChunkRef(big[0].id, big[1].size)]),
        "plain bytes called compressed": ("small/s0.txt", [ChunkRef(s0.id, s0.size, s0.pack, s0.offset, s0.size - 1)]),
    }


async def test_hostile_pack_references_fail_cleanly(config: Config, tmp_path: Path) -> None:
    async with open_engine(config) as eng:
        snap = await real_volume(eng, tmp_path)
        head = await eng.repo.head("vol")
    good = {p: (tmp_path / "src" / p).read_bytes() for p, e in snap.entries.items() if e.kind == "file"}
    for i, (attack, (path, refs)) in enumerate(ref_attacks(snap).items()):
        async with open_engine(worker_config(config, tmp_path, f"w{i}")) as eng:
            sid = await eng.repo.put_snapshot("vol", with_refs(snap, path, refs))
            head = await eng.repo.advance(await eng.repo.head("vol"), sid, head.seq + 1)
            target = tmp_path / f"t{i}"
            with pytest.raises(IntegrityError, match="'vol'"):
                await hydrate(eng, "vol", target)
        for rel in tree_files(target):
            assert TMP_PREFIX not in rel, f"{attack}: temp file {rel} left behind"
            full = target / rel
            if full.is_file():
                assert rel != path, f"{attack}: the hostile file was written"
                assert full.read_bytes() == good[rel], f"{attack}: {rel} has wrong bytes"


# ---------------------------------------------------------------- local filesystem trouble

@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.system(f"mount -t tmpfs -o size=2m tmpfs {mnt} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        os.system(f"umount -l {mnt}")


async def test_enospc_is_a_clear_error_and_the_next_hydrate_resumes(
        config: Config, tmp_path: Path, small_tmpfs: Path) -> None:
    src = tmp_path / "src"
    (src / "small").mkdir(parents=True)
    for i in range(20):
        (src / "small" / f"f{i}.txt").write_bytes(os.urandom(20_000))
    target = small_tmpfs / "vol"
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        await hydrate(eng, "vol", target)                  # 400 kB: fits
        (src / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        old_f0 = (src / "small" / "f0.txt").read_bytes()
        (src / "small" / "f0.txt").write_bytes(b"changed")
        await commit(eng, "vol", src)
        with pytest.raises(LocalIOError, match="ENOSPC"):
            await hydrate(eng, "vol", target)           # 3 MiB more: does not
        assert [p for p in tree_files(target) if TMP_PREFIX in p] == []
        assert not (target / "big.bin").exists()
        for p in tree_files(target):                    # old or new version, never a mix
            if p.endswith(".txt"):
                assert (target / p).read_bytes() in ((src / p).read_bytes(), old_f0)
        assert os.system(f"mount -o remount,size=8m {small_tmpfs}") == 0
        eng.counter.reset()
        res = await hydrate(eng, "vol", target)
        assert res.unchanged >= 19 and res.files_written <= 2
    assert (target / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert (target / "small" / "f0.txt").read_bytes() == b"changed"


async def test_read_only_target_is_a_clear_error_and_loses_nothing(config: Config, tmp_path: Path) -> None:
    src, target = tmp_path / "src", tmp_path / "target"
    src.mkdir()
    (src / "new.txt").write_text("from the volume")
    target.mkdir()
    (target / "mine.txt").write_text("precious")
    if os.system(f"mount --bind {target} {target} 2>/dev/null && mount -o remount,ro,bind {target}") != 0:
        os.system(f"umount -l {target} 2>/dev/null")
        pytest.skip("cannot make a read-only bind mount here")
    try:
        async with open_engine(config) as eng:
            await commit(eng, "vol", src)
            with pytest.raises(LocalIOError, match="EROFS"):
                await hydrate(eng, "vol", target)
    finally:
        os.system(f"umount -l {target}")
    assert tree_files(target) == ["mine.txt"] and (target / "mine.txt").read_text() == "precious"


# ---------------------------------------------------------------- planted symlinks

async def two_versions(eng: Engine, src: Path, dst: Path) -> None:
    """v1 has sub/a.txt; dst is hydrated to v1; v2 adds sub/new.txt."""
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a")
    await commit(eng, "vol", src)
    await hydrate(eng, "vol", dst)
    (src / "sub" / "new.txt").write_text("new")
    (src / "sub" / "big.bin").write_bytes(os.urandom(1_100_000))
    await commit(eng, "vol", src)


async def test_symlink_replacing_a_tracked_directory_is_never_written_through(
        config: Config, tmp_path: Path) -> None:
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    outside.mkdir()
    async with open_engine(config) as eng, open_engine(worker_config(config, tmp_path, "w2")) as eng2:
        await two_versions(eng, src, tmp_path / "scratch")
        await hydrate(eng2, "vol", dst, snapshot_id=(await eng.repo.history("vol"))[1][0])
        import shutil
        shutil.rmtree(dst / "sub")
        (dst / "sub").symlink_to(outside)                     # a task plants a link to elsewhere
        res = await hydrate(eng2, "vol", dst)
        assert "sub/new.txt" in res.kept_local
    assert tree_files(outside) == []
    assert os.readlink(dst / "sub") == str(outside)


async def test_untracked_symlink_where_the_volume_has_a_directory(config: Config, tmp_path: Path) -> None:
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    outside.mkdir()
    dst.mkdir()
    (dst / "sub").symlink_to(outside)
    async with open_engine(config) as eng:
        await two_versions(eng, src, tmp_path / "scratch")
        with pytest.raises(LocalConflict):
            await hydrate(eng, "vol", dst)
        assert tree_files(outside) == []
        await hydrate(eng, "vol", dst, overwrite=True)
    assert tree_files(outside) == []
    assert (dst / "sub").is_dir() and not (dst / "sub").is_symlink()
    assert (dst / "sub" / "new.txt").read_text() == "new"


class SwapDuringHydrate:
    """Progress hook: once the directories exist, a racing task swaps ``sub`` for a symlink."""

    def __init__(self, victim: Path, outside: Path) -> None:
        self.victim, self.outside = victim, outside

    def start(self, total_bytes: int, label: str) -> None:
        import shutil
        shutil.rmtree(self.victim)
        self.victim.symlink_to(self.outside)

    def advance(self, nbytes: int) -> None:
        return None


async def test_symlink_swapped_in_during_hydrate_is_refused(config: Config, tmp_path: Path) -> None:
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    outside.mkdir()
    async with open_engine(config) as eng:
        await two_versions(eng, src, tmp_path / "scratch")
        with pytest.raises(LocalIOError, match="symlink"):
            await hydrate(eng, "vol", dst, progress=SwapDuringHydrate(dst / "sub", outside))
    assert tree_files(outside) == []


# ---------------------------------------------------------------- privileges and owners

async def test_setuid_and_sticky_bits_never_reach_the_disk(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "tool", 0o6755)
    (src / "shared").mkdir()
    os.chmod(src / "shared", 0o1777)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        _, snap = await eng.repo.latest("vol")
        assert snap is not None and snap.entries["tool"].mode == 0o6755   # recorded as data
        await hydrate(eng, "vol", tmp_path / "dst")
    assert (tmp_path / "dst" / "tool").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "dst" / "shared").stat().st_mode & 0o7777 == 0o777


async def test_snapshot_of_another_owner_is_refused(engine: Engine, tmp_path: Path) -> None:
    doc = valid_doc()
    doc["entries"] = [{"path": "x", "type": "dir", "mode": 0o755, "mtime_ns": 0}]
    doc["owner"], doc["volume"] = "mallory", "vol"
    await plant(engine, "vol", doc)
    with pytest.raises(ManifestError, match="belongs to mallory/vol"):
        await hydrate(engine, "vol", tmp_path / "dst")
    assert not (tmp_path / "dst" / "x").exists()


async def test_cache_entries_of_one_owner_are_never_served_to_another(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "same.bin").write_bytes(os.urandom(1_200_000))
    bob = config.replace(owner="bob", state_dir=tmp_path / "bob-state")   # same cache directory
    async with open_engine(config) as alice_eng, open_engine(bob) as bob_eng:
        await commit(alice_eng, "vol", src)
        await commit(bob_eng, "vol", src)
        await hydrate(alice_eng, "vol", tmp_path / "a")          # alice's chunks are now cached
        bob_eng.counter.reset()
        await hydrate(bob_eng, "vol", tmp_path / "b")
        _, snap = await bob_eng.repo.latest("vol")
        chunks = len(snap.entries["same.bin"].chunks) if snap else 0
        assert chunks and len([k for k in bob_eng.counter.keys if "/bob/vol/chunks/" in k]) == chunks
        # no chunk came from alice's cache entries: every one was a GET above, and the cache served
        # at most bob's own root tree (cached by his commit, a few hundred bytes)
        assert bob_eng.cache is not None and bob_eng.cache.stats.hits <= 1
        assert bob_eng.cache.stats.bytes_read < 4096
    assert (tmp_path / "b" / "same.bin").read_bytes() == (src / "same.bin").read_bytes()
