"""Shared fixtures for end-to-end tests: real libvirt, real QEMU, real images."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.libvirt import connection_uri, open_connection
from builder.run import run

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """The libvirt URI the engine would use by default (qemu:///system as root)."""
    return connection_uri(None)


@pytest.fixture(scope="session")
def libvirt_conn(libvirt_uri: str) -> Iterator[Any]:
    """An open libvirt connection (the event loop running), closed after the session."""
    conn = open_connection(libvirt_uri)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def cloud_image() -> Path:
    """The cached Debian 12 cloud image (scripts/make-cloud-image.sh; builds it when
    cold, several minutes under TCG). Use only from tests marked e2e."""
    started = time.monotonic()
    proc = run(["bash", REPO / "scripts" / "make-cloud-image.sh"], timeout=3600)
    path = Path(proc.stdout.strip().splitlines()[-1])
    log.info("cloud image %s ready in %.1fs", path, time.monotonic() - started)
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def test_installer_iso() -> Path:
    """The cached test installer ISO (scripts/make-test-installer-iso.sh; builds it when
    cold from the cached root, seconds). Use only from tests marked e2e."""
    proc = run(["bash", REPO / "scripts" / "make-test-installer-iso.sh"], timeout=3600)
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file(), path
    return path
