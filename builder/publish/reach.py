"""Reaching Azure, bounded: the storage, ARM and identity clients fail fast and say why.

Every client azbuild makes (storage, Compute, DefaultAzureCredential's token requests)
gets the same bounds, set on the client (docs/publish.md#when-azure-cannot-be-reached):

- a connection is given CONNECT_TIMEOUT seconds, an answer READ_TIMEOUT seconds;
- a connection that fails is retried once, so an endpoint that cannot be reached fails
  within UNREACHABLE_BOUND seconds; throttling and 5xx answers are retried up to
  STATUS_RETRIES times with the SDK's backoff;
- DefaultAzureCredential asks the environment, workload and managed identity, the
  shared token cache and the Azure CLI (each command given CLI_TIMEOUT seconds);
  Azure PowerShell and the Azure Developer CLI, two more processes to wait for, are
  not asked.

Their requests go through `WatchedTransport`, which says what it waits for once a
request has waited FIRST_REPORT seconds (builder/waits.py), and remembers which hosts
could not be reached and which answered, so that a failure to get a token is told as
"cannot reach HOST" or "credentials refused by HOST", not one for the other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from azure.core.exceptions import (
    ClientAuthenticationError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport

from builder.errors import UsageError, indent
from builder.redact import redact
from builder.waits import WaitBoard

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 4.0
READ_TIMEOUT = 15.0
CONNECT_RETRIES = 1
READ_RETRIES = 1
STATUS_RETRIES = 4
CLI_TIMEOUT = 10
# Two connection attempts and the pause between them (storage: at most 3 s).
UNREACHABLE_BOUND = (CONNECT_RETRIES + 1) * CONNECT_TIMEOUT + 3
# DefaultAzureCredential probes the instance metadata service, which only an Azure VM
# has: not reaching it (or its 400 on a VM without an identity) means "no managed
# identity here", neither a network failure nor refused credentials.
PROBE_HOSTS = frozenset({"169.254.169.254", "169.254.169.254:80"})
DISCOVERY = ("DefaultAzureCredential to find a credential (environment, workload or "
             "managed identity, Azure CLI)")
T = TypeVar("T")


@dataclass
class Reach:
    """What the requests of one publish met, host by host (thread-safe)."""

    unreachable: dict[str, str] = field(default_factory=dict)  # host -> why, in words
    refused: dict[str, int] = field(default_factory=dict)  # host -> 400/401/403
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cannot_reach(self, host: str, why: str) -> None:
        with self._lock:
            self.unreachable[host] = why

    def answered(self, host: str, status: int) -> None:
        with self._lock:
            self.unreachable.pop(host, None)
            if status in (400, 401, 403):
                self.refused[host] = status

    def snapshot(self) -> tuple[dict[str, str], dict[str, int]]:
        with self._lock:
            return dict(self.unreachable), dict(self.refused)


class WatchedTransport(RequestsTransport):  # type: ignore[misc]
    """The SDK's requests transport with azbuild's timeouts, saying what it waits for and
    recording what it met in `reach`."""

    def __init__(self, reach: Reach, board: WaitBoard, **kwargs: Any) -> None:
        super().__init__(connection_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                         **kwargs)
        self.reach = reach
        self.board = board

    def send(self, request: Any, **kwargs: Any) -> Any:
        parts = urlsplit(request.url)
        host = parts.netloc
        what = f"an answer from {host} ({request.method} {parts.path or '/'})"
        with self.board.waiting(what, CONNECT_TIMEOUT + READ_TIMEOUT):
            try:
                response = super().send(request, **kwargs)
            except ServiceRequestError as exc:
                self.reach.cannot_reach(host, reason(exc))
                raise
            except ServiceResponseError as exc:
                self.reach.cannot_reach(host, "no answer: " + reason(exc))
                raise
        self.reach.answered(host, response.status_code)
        return response


def reason(exc: BaseException) -> str:
    """The root of a connection error in a few words (urllib3 nests them deeply)."""
    text = str(exc)
    for marker, words in _REASONS:
        if marker in text:
            return words
    lines = text.strip().splitlines()
    return redact(lines[0] if lines else type(exc).__name__)


# What urllib3 and requests say, in ours; the first that matches (most precise first).
_REASONS = (
    ("Read timed out", f"no answer within {READ_TIMEOUT:.0f}s"),
    ("timed out", f"no connection within {CONNECT_TIMEOUT:.0f}s"),
    ("Failed to resolve", "the host name does not resolve (DNS)"),
    ("Name or service not known", "the host name does not resolve (DNS)"),
    ("Temporary failure in name resolution", "the host name does not resolve (DNS)"),
    ("Connection refused", "connection refused"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network unreachable"),
    ("CERTIFICATE_VERIFY_FAILED", "TLS: certificate not trusted"),
    ("Connection aborted", "the connection was closed without an answer"),
    ("Connection reset", "connection reset"),
)


@dataclass
class Clients:
    """What every client of one publish shares: the record of what was reached, and the
    board that reports long waits."""

    reach: Reach = field(default_factory=Reach)
    board: WaitBoard = field(default_factory=lambda: WaitBoard(log))

    def options(self) -> dict[str, Any]:
        """Keyword arguments for an azure-core client (ARM, identity)."""
        return {"transport": WatchedTransport(self.reach, self.board),
                "retry_total": STATUS_RETRIES, "retry_connect": CONNECT_RETRIES,
                "retry_read": READ_RETRIES, "retry_status": STATUS_RETRIES}

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for a storage client: its own retry policy, bounded."""
        from azure.storage.blob import ExponentialRetry

        # Pauses of 2, 4, 8, 16 s (give or take 1 s): the first retry comes quickly.
        retry = ExponentialRetry(initial_backoff=0, increment_base=2, random_jitter_range=1,
                                 retry_total=STATUS_RETRIES, retry_connect=CONNECT_RETRIES,
                                 retry_read=READ_RETRIES, retry_status=STATUS_RETRIES)
        return {"transport": WatchedTransport(self.reach, self.board,
                                              connection_data_block_size=256 * 1024),
                "retry_policy": retry}

    def credential(self) -> WatchedCredential:
        """DefaultAzureCredential with the same bounds, its discovery watched."""
        from azure.identity import DefaultAzureCredential

        inner = DefaultAzureCredential(
            exclude_interactive_browser_credential=True, exclude_powershell_credential=True,
            exclude_developer_cli_credential=True, process_timeout=CLI_TIMEOUT,
            **self.options())
        return WatchedCredential(inner, self)


class WatchedCredential:
    """A token credential whose discovery is reported while it lasts, and whose failure
    is told for what it is: a host that cannot be reached, credentials a host refused, or
    no credential found. The SDK clients call it as any credential."""

    def __init__(self, inner: Any, clients: Clients) -> None:
        self.inner = inner
        self.clients = clients

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return self._watched(lambda: self.inner.get_token(*scopes, **kwargs))

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        return self._watched(lambda: self.inner.get_token_info(*scopes, options=options))

    def close(self) -> None:
        self.inner.close()

    def _watched(self, get: Callable[[], T]) -> T:
        reach = self.clients.reach
        before_unreachable, before_refused = reach.snapshot()
        with self.clients.board.waiting(DISCOVERY, None):
            try:
                return get()
            except ClientAuthenticationError as exc:
                unreachable, refused = reach.snapshot()
                new_refused = {h: s for h, s in refused.items()
                               if h not in PROBE_HOSTS and h not in before_refused}
                new_unreachable = {h: w for h, w in unreachable.items()
                                   if h not in PROBE_HOSTS and h not in before_unreachable}
                raise token_error(exc, new_refused, new_unreachable) from None


def token_error(exc: ClientAuthenticationError, refused: dict[str, int],
                unreachable: dict[str, str]) -> UsageError:
    """What getting a token failed on, in words (refused beats unreachable: a host that
    answered no is the answer)."""
    attempts = _attempts(str(exc.message or exc))
    if refused:
        host, status = next(iter(refused.items()))
        return UsageError(
            f"credentials refused by {host} (HTTP {status}): the identity could not get a "
            "token" + (":\n" + indent(attempts) if attempts else ""),
            hint="check AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET (or the "
                 "certificate), or `az login`; see docs/publish.md#authentication")
    if unreachable:
        host, why = next(iter(unreachable.items()))
        return UsageError(
            f"cannot reach {host} to get a token: {why}",
            hint="check the network, a proxy (HTTPS_PROXY) and AZURE_AUTHORITY_HOST; no "
                 "credential was refused, none could be asked")
    return UsageError(
        "no Azure credential found: DefaultAzureCredential tried"
        + (":\n" + indent(attempts) if attempts else " every source and none applied"),
        hint="`az login`, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET; "
             "or give a SAS in the URL; see docs/publish.md#authentication")


def _attempts(message: str) -> list[str]:
    """The per-credential lines of DefaultAzureCredential's message, masked."""
    lines = []
    for line in message.splitlines():
        stripped = line.strip()
        if stripped.startswith("To mitigate"):
            break
        if "Credential" in stripped and ":" in stripped and not stripped.startswith(
                ("DefaultAzureCredential failed", "Attempted credentials")):
            lines.append(redact(stripped.split("\n")[0])[:300])
    return lines
