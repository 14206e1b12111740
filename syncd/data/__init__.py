"""The byte path: moving chunk bytes between the store, the gateways, the cache and local files.

    cache.py        the verified, best-effort local chunk cache
    chunkindex.py   the volume's chunk index: "does the volume hold this chunk?" at the change's cost
    chunkread.py    files and streams cut by content (FastCDC) into chunks, hashed in a worker thread
    fetch.py        chunk source chain (cache, gateways, store), single-flight, verified
    gatewayclient.py  gateways as chunk sources, rendezvous order, warm-up; large chunks streamed
                    into place through store/rangeread.py
    httpget.py      the small stdlib HTTP/1.1 GET client for the gateways' metadata and packs
    gatewaystore.py   HEAD and snapshots through the gateway pool (a store wrapper under the VolumeRepo)
    localcopy.py    warm hydrates: copy_file_range from a copy this worker holds (one call per run
                    of chunks), trusted on its stat fingerprint (stamp.py) or verified over mmap
    stamp.py        stat fingerprints: when a local copy may be served without hashing it again
    flight.py       a lock file per large file: processes on one worker share one download
    upload.py       new chunks and packs -> store (compressed where it pays, deduped through the index)

A layer of its own below the volume operations (``syncd.engine``): these modules know
chunks, packs and blobs, never snapshots, indexes or local trees, and import only
``syncd.store``, ``syncd.format``, ``syncd.config``, ``syncd.limits`` and ``syncd.errors``
(import-linter checks it).
"""
