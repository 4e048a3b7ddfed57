"""The offline Azure fabric: WireServer, HostGAPlugin and IMDS on threads, every request
logged as a JSON line.

    with Fabric(provisioning, work / "fabric.jsonl", guest_ip="10.0.0.4",
                guest_mac="00:0d:3a:12:34:56") as fabric:
        ...boot the guest...
        fabric.wait(lambda: fabric.ready_at() is not None, 600, what="Ready from the agent")

The servers bind where they are told (in the simulation, addresses of its own network
namespace that the guest reaches as 168.63.129.16 and 169.254.169.254); unit tests bind
loopback ports (port 0 picks a free one: see `addresses`). They stop and close their
sockets when the block ends, however it ends.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

from builder.errors import AzbuildError
from builder.simulate.exchange import (
    AgentReport,
    Answer,
    HealthReport,
    Incoming,
    Request,
    RequestLog,
    agent_reports,
    health_reports,
)
from builder.simulate.hostga import hostga_answer
from builder.simulate.imds import imds_answer, imds_mac
from builder.simulate.ovf_env import Provisioning
from builder.simulate.wireserver import wire_answer
from builder.waits import WaitReporter

log = logging.getLogger(__name__)

Address = tuple[str, int]
MAX_BODY = 16 * 1024 * 1024  # status blobs and telemetry are far smaller
SERVERS = {"wireserver": "WireServer", "hostga": "HostGAPlugin", "imds": "IMDS"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, name: str, address: Address, answer: Callable[[Incoming], Answer],
                 record: Callable[[str, Incoming, Answer], Request]) -> None:
        self.name = name
        self.answer = answer
        self.record = record
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "Microsoft-IIS/10.0"  # what the WireServer says it is
    sys_version = ""

    def _handle(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_error(413)
            return
        incoming = Incoming(
            method=self.command, target=self.path, path=split.path or "/",
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        try:
            answer = self.server.answer(incoming)
        except Exception as exc:  # a bug here must show in the log, not kill the thread
            log.exception("%s: answering %s %s failed", self.server.name, self.command,
                          self.path)
            answer = Answer(500, b"Internal Server Error", summary={"error": repr(exc)})
        # Recorded before the agent has its answer: once it has, the fabric knows.
        self.server.record(self.server.name, incoming, answer)
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s: " + format, self.server.name, *args)


def _bind_error(name: str, address: Address, exc: OSError) -> AzbuildError:
    host, port = address
    where = f"cannot serve the simulated {SERVERS[name]} on {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return AzbuildError(f"{where}: the port is taken",
                            hint="stop what listens there, or run the simulation in its own "
                                 "network namespace")
    if exc.errno == errno.EACCES:
        return AzbuildError(f"{where}: no permission to bind port {port}",
                            hint="ports below 1024 need root or CAP_NET_BIND_SERVICE; the "
                                 "simulation's own network namespace gives both")
    if exc.errno == errno.EADDRNOTAVAIL:
        return AzbuildError(f"{where}: {host} is not an address of this network namespace",
                            hint="add the address to an interface first (ip addr add)")
    return AzbuildError(f"{where}: {exc.strerror or exc}")


class Fabric:
    """The three servers of the simulated fabric, started by `with` (or `start()`)."""

    def __init__(
        self,
        provisioning: Provisioning,
        log_path: Path,
        *,
        guest_ip: str,
        guest_mac: str,
        wire: Address = ("127.0.0.1", 80),
        hostga: Address = ("127.0.0.1", 32526),
        imds: Address = ("169.254.169.254", 80),
        subnet_prefix: int = 24,
    ) -> None:
        imds_mac(guest_mac)  # a wrong MAC fails here, not on the guest's first request
        self.provisioning = provisioning
        self.log_path = log_path
        self.guest_ip = guest_ip
        self.guest_mac = guest_mac
        self.subnet_prefix = subnet_prefix
        self._binds: dict[str, Address] = {"wireserver": wire, "hostga": hostga, "imds": imds}
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []
        self._log: RequestLog | None = None

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> Fabric:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _answer(self, name: str) -> Callable[[Incoming], Answer]:
        p = self.provisioning
        if name == "wireserver":
            return lambda incoming: wire_answer(incoming, p, self.guest_ip)
        if name == "hostga":
            return lambda incoming: hostga_answer(incoming, p)
        return lambda incoming: imds_answer(incoming, p, self.guest_ip, self.guest_mac,
                                            self.subnet_prefix)

    def start(self) -> None:
        if self._log is not None:
            raise RuntimeError("the fabric is already running")
        self._log = RequestLog(self.log_path)
        try:
            for name in SERVERS:
                try:
                    server = _Server(name, self._binds[name], self._answer(name),
                                     self._log.record)
                except OSError as exc:
                    raise _bind_error(name, self._binds[name], exc) from exc
                self._servers[name] = server
            for name, server in self._servers.items():
                thread = threading.Thread(target=server.serve_forever, args=(0.2,),
                                          name=f"fabric-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.stop()
            raise
        log.info("fabric: WireServer on %s, HostGAPlugin on %s, IMDS on %s; log %s",
                 *(f"{h}:{p}" for h, p in self.addresses.values()), self.log_path)

    def stop(self) -> None:
        """Stop serving and close every socket; safe to call twice."""
        for thread, server in zip(self._threads, self._servers.values(), strict=False):
            if thread.is_alive():
                server.shutdown()
        for server in self._servers.values():
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        if self._log is not None:
            self._log.close()

    @property
    def addresses(self) -> dict[str, Address]:
        """Where each server listens, by name ("wireserver", "hostga", "imds"): the real
        port when 0 was asked."""
        return {name: (str(s.server_address[0]), int(s.server_address[1]))
                for name, s in self._servers.items()}

    # -- what the agents did ----------------------------------------------------------

    def _requests(self) -> RequestLog:
        if self._log is None:
            raise RuntimeError("the fabric was never started")
        return self._log

    @property
    def started_at(self) -> float:
        """time.monotonic() when the fabric started."""
        return self._requests().started

    def events(self) -> list[Request]:
        """Every request so far, in order (a snapshot)."""
        return self._requests().events()

    def health_reports(self) -> list[HealthReport]:
        return health_reports(self.events())

    def ready_at(self) -> float | None:
        """time.monotonic() of the first accepted Ready, or None."""
        return next((h.time for h in self.health_reports() if h.state == "Ready"), None)

    def agents(self) -> list[AgentReport]:
        """Which agents spoke, whether each fetched the goal-state chain, what each
        reported."""
        return agent_reports(self.events())

    def progress(self) -> str:
        events = self.events()
        if not events:
            return "no request yet"
        last = events[-1]
        health = ", ".join(h.state + (f"/{h.substatus}" if h.substatus else "")
                           for h in self.health_reports()) or "none"
        return (f"{len(events)} requests, the last {last.method} {last.target} "
                f"({last.status}) from {last.agent}; health reports: {health}")

    def wait(self, predicate: Callable[[], bool], timeout: float, *,
             progress_every: float = 30.0, what: str = "the agent") -> bool:
        """Wait until `predicate()` holds (checked on every request and every second) or
        `timeout` seconds pass; log progress every `progress_every` seconds."""
        fabric = self

        class Reporter(WaitReporter):
            def message(self, now: float) -> str:
                return f"{super().message(now)}; {fabric.progress()}"

        reporter = Reporter(what, timeout, logger=log, first=progress_every,
                            every=progress_every)
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._requests().wait_for_change(min(1.0, remaining))
            reporter.tick()
        return True
