"""A tiny progress seam: engines report bytes, the CLI decides how to show them."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, total_bytes: int, label: str) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def more(self, nbytes: int) -> None:
        """The total grew by ``nbytes``: a streaming writer learns it as it walks."""


class NoProgress:
    def start(self, total_bytes: int, label: str) -> None:
        return None

    def more(self, nbytes: int) -> None:
        return None

    def advance(self, nbytes: int) -> None:
        return None
