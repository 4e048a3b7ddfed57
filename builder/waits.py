"""Saying what a long wait waits for, so that a nightly log never goes silent.

Every wait azbuild makes has a bound. A wait that lasts longer than FIRST_REPORT
seconds logs what it waits for, how long it has waited and its bound, then again
every EVERY seconds. Polling loops call `WaitReporter.tick()`; a blocking call that
cannot poll (a libguestfs launch) runs inside `reported_wait`, whose thread ticks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

FIRST_REPORT = 10.0
EVERY = 30.0


class WaitReporter:
    """Logs `waiting for WHAT: Ns so far (bound Ms)` once the wait is long enough."""

    def __init__(
        self,
        what: str,
        bound: float | None,
        *,
        logger: logging.Logger = log,
        first: float = FIRST_REPORT,
        every: float = EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.bound = bound
        self.logger = logger
        self.every = every
        self.clock = clock
        self.started = clock()
        self.next_report = self.started + first
        self.reports = 0

    def message(self, now: float) -> str:
        bound = f"bound {self.bound:.0f}s" if self.bound is not None else "no bound"
        return f"waiting for {self.what}: {now - self.started:.0f}s so far ({bound})"

    def tick(self) -> None:
        now = self.clock()
        if now >= self.next_report:
            self.logger.info("%s", self.message(now))
            self.reports += 1
            self.next_report = now + self.every


@contextmanager
def reported_wait(
    what: str, bound: float | None, *, logger: logging.Logger = log, poll: float = 1.0
) -> Iterator[WaitReporter]:
    """Report on a blocking call from a helper thread while the block runs."""
    reporter = WaitReporter(what, bound, logger=logger)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll):
            reporter.tick()

    thread = threading.Thread(target=watch, name=f"wait:{what}", daemon=True)
    thread.start()
    try:
        yield reporter
    finally:
        done.set()
        thread.join(timeout=poll + 1)


class WaitBoard:
    """Many waits at once (requests in flight on several threads), reported by one helper
    thread instead of one per wait: each registered wait gets its `WaitReporter`, ticked
    every `poll` seconds while it lasts. The thread ends when no wait is left."""

    def __init__(self, logger: logging.Logger = log, *, first: float = FIRST_REPORT,
                 every: float = EVERY, poll: float = 0.25) -> None:
        self.logger = logger
        self.first = first
        self.every = every
        self.poll = poll
        self._waits: set[WaitReporter] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def waiting(self, what: str, bound: float | None) -> Iterator[WaitReporter]:
        reporter = WaitReporter(what, bound, logger=self.logger, first=self.first,
                                every=self.every)
        with self._lock:
            self._waits.add(reporter)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="waits", daemon=True)
                self._thread.start()
        try:
            yield reporter
        finally:
            with self._lock:
                self._waits.discard(reporter)

    def _watch(self) -> None:
        while True:
            time.sleep(self.poll)
            with self._lock:
                if not self._waits:
                    self._thread = None
                    return
                waits = list(self._waits)
            for reporter in waits:
                reporter.tick()
