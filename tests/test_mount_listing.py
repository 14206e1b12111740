"""The lazy mount's listing of a format-2 snapshot (mount/listing.py), on an in-memory store.

What ``find`` relies on: a directory's entries come back by bare name, one GET
prefetches every subdirectory's tree, a subdirectory lists as soon as its own
tree is decoded, and a tampered tree in that prefetch is refused when its
directory is listed (no listing waits for ever, the others still list).
"""

from __future__ import annotations

import pytest

from syncd.engine import trees as engine_trees
from syncd.engine.volumes import VolumeRepo
from syncd.errors import ManifestError
from syncd.format.layout import Layout
from syncd.mount.listing import TreeListing
from syncd.store.base import MemoryStore
from tests.treeutil import stored_wide_volume

FILES = {f"f{c}" for c in range(40)}


async def test_one_get_prefetches_the_subdirectories_and_entries_come_by_bare_name() -> None:
    store, layout = MemoryStore(), Layout("p", "alice")
    root, _ = await stored_wide_volume(store, layout)
    repo = VolumeRepo(store, layout)
    listing = TreeListing(repo, "v", "s", root=root)
    top = await listing.list_dir("")
    assert [e.path for e in top] == [f"d{a:02d}" for a in range(30)]
    for a in range(30):
        assert {e.path for e in await listing.list_dir(f"d{a:02d}")} == FILES
    assert repo.trees.reads == 2 and listing.dirs_listed == 31        # the root's tree, then one prefetch


async def test_a_tampered_tree_in_the_prefetch_is_refused_when_its_directory_is_listed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, layout = MemoryStore(), Layout("p", "alice")
    root, subtrees = await stored_wide_volume(store, layout)
    monkeypatch.setattr(engine_trees, "DECODE_BATCH", 3 * max(r.size for r in subtrees))
    bad = subtrees[16]
    key = layout.tree_pack("v", bad.pack)
    data, _, _ = store.objects[key]
    await store.put(key, data[:bad.offset] + bytes(bad.size) + data[bad.offset + bad.size:])   # zeros: not zlib
    repo = VolumeRepo(store, layout)
    listing = TreeListing(repo, "v", "s", root=root)
    await listing.list_dir("")
    name = {i.tree.id: i.entry.path for i in repo.trees.cached(root.id) or [] if i.tree is not None}
    first, tampered, last = name[subtrees[0].id], name[bad.id], name[subtrees[-1].id]
    assert {e.path for e in await listing.list_dir(first)} == FILES      # decoded before the bad batch
    with pytest.raises(ManifestError):
        await listing.list_dir(tampered)
    with pytest.raises(ManifestError):                                    # still refused, read again
        await listing.list_dir(tampered)
    assert {e.path for e in await listing.list_dir(last)} == FILES       # after it: read on its own
    assert repo.trees.reads == 5    # root, prefetch (failed at the bad tree), the bad one twice, the last one
