"""Long waits say what they wait for, how long so far, and their bound."""

from __future__ import annotations

import logging
import time

import pytest

from builder.waits import WaitReporter, reported_wait


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reporter_is_silent_for_ten_seconds_then_every_thirty(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    reporter = WaitReporter("the installer to finish", 3600, clock=clock)
    caplog.set_level(logging.INFO, logger="builder.waits")
    for second in range(0, 75):
        clock.now = 100.0 + second
        reporter.tick()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "waiting for the installer to finish: 10s so far (bound 3600s)",
        "waiting for the installer to finish: 40s so far (bound 3600s)",
        "waiting for the installer to finish: 70s so far (bound 3600s)",
    ]


def test_reporter_without_a_bound_says_so() -> None:
    clock = Clock()
    reporter = WaitReporter("x", None, clock=clock)
    assert reporter.message(112.0) == "waiting for x: 12s so far (no bound)"


def test_reported_wait_reports_from_a_thread_while_a_call_blocks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.waits")
    logger = logging.getLogger("test.waits")
    with reported_wait("a blocking call", 60, logger=logger, poll=0.05) as reporter:
        reporter.next_report = reporter.started + 0.1  # report soon, not after 10 s
        reporter.every = 0.2
        time.sleep(0.6)
    assert reporter.reports >= 2
    assert all("waiting for a blocking call" in r.getMessage() and "bound 60s" in
               r.getMessage() for r in caplog.records)
    count = reporter.reports
    time.sleep(0.3)
    assert reporter.reports == count, "the reporter must stop with the block"
