"""Upload progress: a bar on a terminal, JSON records under --log-format json, else log lines.

Counters are updated from the upload's worker threads; one reporter thread shows them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any

from builder import log as azlog

log = logging.getLogger(__name__)
INTERVAL = 1.0  # seconds between records (JSON) or refreshes (bar)
TEXT_INTERVAL = 10.0  # a plain log line this often when stderr is not a terminal


class Progress:
    """Bytes handled (sent or skipped) out of `total`, thread-safe."""

    def __init__(self, label: str, total: int, mode: str | None = None) -> None:
        self.label = label
        self.total = total
        self.mode = mode or _default_mode()
        self.sent = 0
        self.skipped = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None

    def add(self, sent: int = 0, skipped: int = 0) -> None:
        with self._lock:
            self.sent += sent
            self.skipped += skipped

    def record(self) -> dict[str, Any]:
        with self._lock:
            sent, skipped = self.sent, self.skipped
        seconds = time.monotonic() - self.started
        return {"phase": self.label, "total": self.total, "sent": sent, "skipped": skipped,
                "done": sent + skipped, "seconds": round(seconds, 2),
                "bytes_per_second": int(sent / seconds) if seconds > 0 else 0}

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar("[progress.description]{task.description}", BarColumn(),
                            DownloadColumn(binary_units=True), TransferSpeedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._emit()  # the bar's last state, even for a phase shorter than INTERVAL
            self._bar.stop()
        if exc_type is None and self.mode == "json":
            self._emit()

    def _run(self) -> None:
        interval = TEXT_INTERVAL if self.mode == "text" else INTERVAL
        while not self._stop.wait(interval):
            self._emit()

    def _emit(self) -> None:
        record = self.record()
        if self.mode == "bar":
            self._bar.update(self._task, completed=record["done"])
        elif self.mode == "json":
            log.info("%s: %d of %d bytes", self.label, record["done"], self.total,
                     extra={"progress": record})
        else:
            log.info("%s: %s of %s (%s sent)", self.label, human_bytes(record["done"]),
                     human_bytes(self.total), human_bytes(record["sent"]))


def _default_mode() -> str:
    if azlog.current_format() == "json":
        return "json"
    return "bar" if sys.stderr.isatty() else "text"


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB': approximate, for people (the manifest keeps exact bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
