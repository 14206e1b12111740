"""Naming a snapshot the way ``volume log`` shows it: an id, a unique id prefix, or a seq number.

``volume log`` prints each snapshot's seq next to its 32-hex id; a user types
whichever is shorter (``syncd diff vol 2 7``). :func:`resolve` turns a
reference into the id every engine function takes:

* 32 hex characters: the id itself (the engine checks it exists);
* all digits, no leading zero, at most HEAD's seq: a seq number. Seqs are not
  in object keys, so the history is walked back from HEAD, one snapshot header
  per step, and the walk stops at that seq: the cost is the distance from the
  latest snapshot, not the length of the history;
* other hex, 4 characters or more: an id prefix, found by listing the
  volume's ``snapshots/`` keys (one LIST per 1,000 snapshots); it must be unique.
  One id in six starts with four decimal digits, so a digit string that cannot
  be a seq (a leading zero, or past HEAD's seq) is a prefix too; where both
  readings are possible the seq wins, and more of the id settles it.

Anything else is a clear error naming the three forms.
"""

from __future__ import annotations

import re

from syncd.engine.wiring import Engine
from syncd.errors import ConfigError, SnapshotNotFound
from syncd.format.chunking import is_content_id

_HEX = re.compile(r"^[0-9a-f]{4,31}$")
FORMS = "a snapshot id, a unique id prefix (4+ hex digits) or a seq number from 'syncd volume log'"


async def resolve(engine: Engine, volume: str, ref: str | None) -> str | None:
    """The snapshot id ``ref`` names in ``volume`` (None stays None: the caller's default)."""
    if ref is None or is_content_id(ref):
        return ref
    text = ref.strip().lower()
    if text.isdigit() and len(text) < 32:
        if not _HEX.match(text) or (text[0] != "0" and int(text) <= (await engine.repo.head(volume)).seq):
            return await _by_seq(engine, volume, int(text))
    if _HEX.match(text):
        return await _by_prefix(engine, volume, text)
    raise ConfigError(f"{ref!r} names no snapshot: use {FORMS}")


async def _by_seq(engine: Engine, volume: str, seq: int) -> str:
    head = await engine.repo.head(volume)
    current = head.snapshot
    while current is not None:
        snap = await engine.repo.header(volume, current)
        if snap.seq == seq:
            return current
        if snap.seq < seq:
            break
        current = snap.parent
    raise SnapshotNotFound(f"volume {volume!r} has no snapshot with seq {seq} (latest: seq {head.seq}; "
                           "older ones may have been pruned)")


async def _by_prefix(engine: Engine, volume: str, prefix: str) -> str:
    base = engine.layout.volume_prefix(volume) + "snapshots/"
    found = [o.key[len(base):] async for o in engine.store.list_objects(base + prefix)]
    ids = sorted(i for i in found if is_content_id(i))
    if len(ids) == 1:
        return ids[0]
    if not ids:
        await engine.repo.head(volume)                   # VolumeNotFound first, if that is the problem
        raise SnapshotNotFound(f"volume {volume!r} has no snapshot whose id starts with {prefix!r}")
    raise ConfigError(f"{prefix!r} is the start of {len(ids)} snapshot ids of {volume!r} "
                      f"({', '.join(i[:12] for i in ids[:4])}{' ...' if len(ids) > 4 else ''}): type more of it")
