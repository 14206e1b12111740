"""Rich progress bars for long transfers (bytes, rate, ETA) on an interactive terminal."""

from __future__ import annotations

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn


class RichProgress:
    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: object = None

    def start(self, total_bytes: int, label: str) -> None:
        if total_bytes < 8 << 20:  # not worth a bar
            return
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
        self._progress.start()
        self._task = self._progress.add_task(label, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, nbytes)  # type: ignore[arg-type]
            task = self._progress.tasks[0]
            if task.finished:
                self.close()

    def close(self) -> None:
        """Stop the bar (and its refresh thread) now: after an error or Ctrl-C nothing redraws it."""
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.stop()
