"""The sidecar: ``syncd agent`` serves mounts, commits and write-back on a Unix socket.

    service.py  ``Agent``: mounts, single-flight hydrates, debounced write-back, crash resume
    api.py      the HTTP API on the socket (aiohttp)
    metrics.py  ``/metrics``: bytes by source
    views.py    mount options: read-only snapshot views, sub-paths
"""
