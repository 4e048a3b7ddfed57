"""Endpoints that fail, on this machine only, for the tests of what azbuild does then.

On the loopback: `closed_port()` (connections refused) and `silent_server()` (accepts,
never answers). In a private network namespace made with `unshare -rn` (`run`,
`run_python`): its only interface is its own loopback, and 10.99.0.0/24 is routed into
it, where packets are dropped without an answer. Nothing sent there leaves the machine: a
host name does not resolve (no name server can be reached), a connection to BLACKHOLE
times out, one to a closed port of its loopback is refused."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

BLACKHOLE = "10.99.0.2"
BLACKHOLE_2 = "10.99.0.3"
_SETUP = 'ip link set lo up && ip route add 10.99.0.0/24 dev lo && exec "$@"'


def command(argv: Sequence[str]) -> list[str]:
    return ["unshare", "-rn", "sh", "-c", _SETUP, "sh", *argv]


@functools.cache
def available() -> bool:
    try:
        return subprocess.run(command(["true"]), capture_output=True, timeout=10,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 60,
        cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` inside a fresh private namespace; TimeoutExpired when it takes longer."""
    return subprocess.run(command(argv), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd, check=False)


def run_python(code: str, **options: object) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-c", code], **options)  # type: ignore[arg-type]


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A server on the loopback that accepts connections and never answers: its port,
    and the connections accepted so far."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), accepted
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()
