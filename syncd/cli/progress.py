"""Rich progress bars for long transfers (bytes, rate, ETA) on an interactive terminal."""

from __future__ import annotations

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn


class RichProgress:
    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: object = None
        self._label, self._total, self._done = "", 0, 0
        self._streaming = False      # the total grows as the writer walks: done == total is not the end

    def start(self, total_bytes: int, label: str) -> None:
        self._label, self._total, self._done = label, total_bytes, 0
        if total_bytes < 8 << 20:  # not worth a bar (yet: a streaming commit adds to it, ``more``)
            return
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
        self._progress.start()
        self._task = self._progress.add_task(label, total=total_bytes)

    def more(self, nbytes: int) -> None:
        self._streaming = True
        self._total += nbytes
        if self._progress is not None:
            self._progress.update(self._task, total=self._total)  # type: ignore[arg-type]
        elif self._total >= 8 << 20 and self._label:
            done = self._done
            self.start(self._total, self._label)
            self._done = done
            if self._progress is not None and done:
                self._progress.advance(self._task, done)

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        if self._progress is not None:
            self._progress.advance(self._task, nbytes)  # type: ignore[arg-type]
            task = self._progress.tasks[0]
            if task.finished and not self._streaming:    # a stream's bar stops with the command
                self.close()

    def close(self) -> None:
        """Stop the bar (and its refresh thread) now: after an error or Ctrl-C nothing redraws it."""
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.stop()
