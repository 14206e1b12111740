"""How the agent's write-back watches a volume directory: the settings both watchers read.

Kept apart from ``watch.py`` (inotify) and ``poll.py`` (the polling fallback) so that the
fallback needs nothing of the inotify watcher: ``watch.py`` imports ``poll.py``, never the
other way round.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WatchSettings:
    poll: float = 0.5          # seconds between scans (polling) (at least)
    debounce: float = 1.0      # quiet time before a background commit
    max_delay: float = 10.0    # commit anyway once dirty this long
    mode: str = "auto"         # "auto" (inotify, else polling) or "poll"
    max_watches: int = 0       # fall back to polling beyond this many watched directories (0: kernel limit)
