"""``syncd cache check``: hash every entry of this worker's chunk cache again (the local scrub).

Warm hydrates copy a chunk from a file this worker published without hashing it
again while the file's stat fingerprint is unchanged (data/stamp.py). A
fingerprint sees every change made through the file system, not damage below
it (a bad sector, a flipped bit); this command finds that: it reads every
entry and every reference of the owner's cache, trusting no fingerprint,
forgets the ones that do not hash to their id (the next read fetches them
again) and exits 4 if it found any.
"""

from __future__ import annotations

import argparse
from typing import Any

from syncd.cli.core import command
from syncd.config import Config
from syncd.errors import IntegrityError


@command("cache check", "hash every entry of the local chunk cache again; forget the bad ones")
async def _check(args: argparse.Namespace, config: Config) -> Any:
    from syncd.data.cache import ChunkCache
    cache = ChunkCache(config.cache_dir, config.cache_size, config.owner)
    try:
        result = await cache.scrub()
    finally:
        cache.close()
    if result.bad:
        raise IntegrityError(f"{len(result.bad)} of {result.checked} cache entries in {config.cache_dir} did not "
                             f"hash to their ids and were forgotten: {', '.join(result.bad[:5])}")
    return result
