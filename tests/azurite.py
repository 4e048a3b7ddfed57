"""Azurite, the Azure Storage emulator, as a real blob service on 127.0.0.1 for the tests.

scripts/setup.sh installs it from the npm registry into AZURITE_DIR (Node.js from Debian).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AZURITE_DIR = Path(os.environ.get("AZBUILD_AZURITE_DIR", "/var/cache/azbuild/azurite"))
AZURITE_BIN = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
# Azurite's documented development account, the same in every install: not a secret.
ACCOUNT = "devstoreaccount1"
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")


@dataclass(frozen=True)
class Azurite:
    port: int
    workspace: Path

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint={self.account_url};")

    def service(self) -> object:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)


def available() -> bool:
    return AZURITE_BIN.exists() and shutil.which("node") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Azurite gets SIGTERM when the test process dies, even killed: no orphan server."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def running(workspace: Path) -> Iterator[Azurite]:
    """Start Azurite's blob service on a free port with its data in `workspace`; stop it."""
    port = _free_port()
    log = open(workspace / "azurite.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port),
         "--location", str(workspace), "--skipApiVersionCheck", "--loose", "--silent",
         "--disableTelemetry"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "Azurite did not start: " + (workspace / "azurite.log").read_text()
                    ) from None
                time.sleep(0.1)
        yield Azurite(port, workspace)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def blob_sha256(blob: Any) -> str:
    """The sha256 of a whole blob as the service returns it (every byte downloaded)."""
    digest = hashlib.sha256()
    for chunk in blob.download_blob(max_concurrency=4).chunks():
        digest.update(chunk)
    return digest.hexdigest()
