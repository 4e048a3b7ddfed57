"""Shared test setup: every test starts with no registered secrets and no user layer path."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import redact

# The test installer's code (tests/installer/installer.py) is importable as `installer`.
sys.path.insert(0, str(Path(__file__).resolve().parent / "installer"))


@pytest.fixture(autouse=True)
def _isolated_process_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Secrets registered by one test's template must not mask (or hide leaks in) another's.
    redact.clear()
    monkeypatch.delenv("AZBUILD_TEMPLATE_PATH", raising=False)
    for name in [n for n in os.environ if n.startswith("AZBUILD_VAR_")]:  # set template vars
        monkeypatch.delenv(name)
    yield
    redact.clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A running Azurite blob service (tests/azurite.py), shared by the session."""
    import azurite as emulator

    if not emulator.available():
        pytest.fail(f"Azurite is not installed at {emulator.AZURITE_BIN}: run scripts/setup.sh")
    with emulator.running(tmp_path_factory.mktemp("azurite")) as service:
        yield service
