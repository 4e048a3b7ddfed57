"""One HTTP exchange with the simulated fabric, and the log of them all.

Each server turns an `Incoming` request into an `Answer`; the `RequestLog` keeps every
exchange in memory as a `Request` and writes it as one JSON line (flushed at once, so a
killed run keeps what it saw). From the requests it tells which agents spoke, whether
each fetched the goal-state chain, and what health they reported.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

# The WireServer documents an agent fetches to learn its goal state, in order.
GOAL_STATE_CHAIN = ("goalstate", "hostingEnvironmentConfig", "sharedConfig", "extensionsConfig")
_LOGGED_HEADERS = ("metadata", "content-type")  # besides every x-ms-* header
_LONG = 120  # header values longer than this are logged by length (the agents' certificates)


@dataclass(frozen=True)
class Incoming:
    """A request as a server sees it. Header names are lower case."""

    method: str
    target: str  # path and query, as sent
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    summary: Mapping[str, str] = field(default_factory=dict)  # what the log says it was


@dataclass(frozen=True)
class Request:
    """One logged exchange. `time` is time.monotonic() when it was answered."""

    time: float
    server: str  # "wireserver", "hostga" or "imds"
    method: str
    target: str
    status: int
    user_agent: str
    headers: Mapping[str, str]
    summary: Mapping[str, str]

    @property
    def agent(self) -> str:
        """The User-Agent without waagent's "+health" suffix (its heartbeat requests)."""
        return self.user_agent.removesuffix("+health") or "(no User-Agent)"


@dataclass(frozen=True)
class HealthReport:
    """A health report the WireServer accepted. `time` is time.monotonic()."""

    time: float
    state: str  # "Ready" or "NotReady"
    substatus: str | None  # e.g. "Provisioning", "ProvisioningFailed"
    description: str | None
    user_agent: str


@dataclass(frozen=True)
class AgentReport:
    """What one agent (one User-Agent) did against the fabric."""

    agent: str  # e.g. "WALinuxAgent/2.7.3.0", "Cloud-Init/22.4.2"
    requests: int
    documents: tuple[str, ...]  # WireServer documents fetched, in the order first fetched
    goal_state_chain: bool  # fetched every document of GOAL_STATE_CHAIN, goal state first
    health: tuple[str, ...]  # accepted reports, "State" or "State/SubStatus"
    imds: bool  # read the instance metadata (any part of /metadata/instance)


def _logged_headers(headers: Mapping[str, str]) -> dict[str, str]:
    kept = {name: value for name, value in headers.items()
            if name.startswith("x-ms-") or name in _LOGGED_HEADERS}
    return {name: value if len(value) <= _LONG else f"<{len(value)} characters>"
            for name, value in sorted(kept.items())}


class RequestLog:
    """Thread-safe record of every exchange, in memory and as JSON lines in `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.monotonic()
        self._requests: list[Request] = []
        self._changed = threading.Condition()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = path.open("w", encoding="utf-8")

    def record(self, server: str, incoming: Incoming, answer: Answer) -> Request:
        request = Request(
            time=time.monotonic(), server=server, method=incoming.method,
            target=incoming.target, status=answer.status,
            user_agent=incoming.headers.get("user-agent", ""),
            headers=_logged_headers(incoming.headers), summary=dict(answer.summary),
        )
        line = json.dumps({
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "elapsed": round(request.time - self.started, 3),
            "server": server, "method": request.method, "path": request.target,
            "status": request.status, "user_agent": request.user_agent,
            "headers": request.headers, "summary": request.summary,
        }, sort_keys=False)
        with self._changed:
            self._requests.append(request)
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            self._changed.notify_all()
        return request

    def wait_for_change(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)

    def events(self) -> list[Request]:
        with self._changed:
            return list(self._requests)

    def close(self) -> None:
        with self._changed:
            if self._file is not None:
                self._file.close()
                self._file = None


def health_reports(requests: list[Request]) -> list[HealthReport]:
    """The health reports the WireServer accepted, in order."""
    return [
        HealthReport(time=r.time, state=r.summary["state"],
                     substatus=r.summary.get("substatus"),
                     description=r.summary.get("description"), user_agent=r.user_agent)
        for r in requests
        if r.server == "wireserver" and r.status == 200 and "state" in r.summary
    ]


def agent_reports(requests: list[Request]) -> list[AgentReport]:
    """One report per agent, in the order the agents first spoke."""
    by_agent: dict[str, list[Request]] = {}
    for request in requests:
        by_agent.setdefault(request.agent, []).append(request)
    reports = []
    for agent, mine in by_agent.items():
        documents: list[str] = []
        for r in mine:
            document = r.summary.get("document")
            if r.server == "wireserver" and r.status == 200 and document \
                    and document not in documents:
                documents.append(document)
        chain = all(d in documents for d in GOAL_STATE_CHAIN) and documents.index(
            "goalstate") < min(documents.index(d) for d in GOAL_STATE_CHAIN[1:])
        health = tuple(
            f"{h.state}/{h.substatus}" if h.substatus else h.state
            for h in health_reports(mine)
        )
        imds = any(r.server == "imds" and r.status == 200
                   and r.summary.get("document", "").startswith("instance") for r in mine)
        reports.append(AgentReport(agent, len(mine), tuple(documents), chain, health, imds))
    return reports
