"""Following a guest's serial console, which libvirt writes to `serial.log` in the work dir.

QEMU appends to the file as the guest prints; this module reads it without
holding it open between reads, so it works while the domain runs and after it
stopped. Text is cleaned of terminal escape sequences (GRUB and systemd colour
their output) before anything matches or logs it.
"""

from __future__ import annotations

import codecs
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builder.waits import WaitReporter

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1

# CSI sequences (colours, cursor moves), OSC sequences, and two-byte ESC sequences.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean(text: str) -> str:
    """Serial text as a person reads it: no escape sequences, no carriage returns."""
    text = _ESCAPES.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


class SerialLog:
    """A view of one serial log file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read_from(self, offset: int) -> bytes:
        try:
            with self.path.open("rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def text(self) -> str:
        """The whole log so far, cleaned."""
        return clean(self._read_from(0).decode("utf-8", errors="replace"))

    def has_output(self) -> bool:
        """Whether the guest printed anything visible at all."""
        return bool(self.text().strip())

    def tail(self, lines: int = 30) -> str:
        """The last `lines` non-blank lines, cleaned."""
        kept = [line.rstrip() for line in self.text().splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def wait_for(
        self,
        pattern: str | re.Pattern[str],
        timeout: float,
        stop: threading.Event | None = None,
        what: str | None = None,
    ) -> re.Match[str] | None:
        """Wait until the log (from its start) matches `pattern`; return the match.

        Returns None after `timeout` seconds, or as soon as `stop` is set (for
        instance the domain's `stopped_event`) and the log still does not match.
        With `what`, a long wait says what it waits for (builder/waits.py).
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        reporter = WaitReporter(what, timeout) if what else None
        raw = b""
        searched_len = -1
        while True:
            raw += self._read_from(len(raw))
            if len(raw) != searched_len:
                searched_len = len(raw)
                match = regex.search(clean(raw.decode("utf-8", errors="replace")))
                if match:
                    return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if reporter is not None:
                reporter.tick()
            if stop is not None and stop.is_set():
                # One last read: the guest may have printed just before it stopped.
                raw += self._read_from(len(raw))
                match = regex.search(clean(raw.decode("utf-8", errors="replace")))
                return match
            if stop is not None:
                stop.wait(min(POLL_SECONDS, remaining))
            else:
                time.sleep(min(POLL_SECONDS, remaining))

    @contextmanager
    def streaming(
        self, logger: logging.Logger | None = None, level: int = logging.DEBUG
    ) -> Iterator[None]:
        """Log every serial line (prefixed `serial:`) while the block runs (for --debug)."""
        target = logger or log
        done = threading.Event()

        def follow() -> None:
            offset = 0
            pending = ""
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            while True:
                finished = done.is_set()
                data = self._read_from(offset)
                offset += len(data)
                pending += decoder.decode(data)
                *complete, pending = pending.split("\n")
                for line in complete:
                    text = clean(line).strip()
                    if text:
                        target.log(level, "serial: %s", text)
                if finished:
                    if clean(pending).strip():
                        target.log(level, "serial: %s", clean(pending).strip())
                    return
                done.wait(POLL_SECONDS)

        thread = threading.Thread(target=follow, name=f"serial:{self.path}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=2)
