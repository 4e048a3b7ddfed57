"""Shared test setup: every test starts with no registered secrets and no user layer path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from builder import redact


@pytest.fixture(autouse=True)
def _isolated_process_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Secrets registered by one test's template must not mask (or hide leaks in) another's.
    redact.clear()
    monkeypatch.delenv("AZBUILD_TEMPLATE_PATH", raising=False)
    yield
    redact.clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
