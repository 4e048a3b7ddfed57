"""Source files over HTTP(S), under one retry policy for ISOs and checksum files alike.

A failure is transient or permanent (docs/iso.md#when-the-mirror-cannot-be-reached):

- transient: no answer within the timeout, a connection refused, reset or closed early,
  HTTP 408, 425, 429 and 5xx. Retried with backoff, at most `RetryPolicy.attempts`
  attempts in a row that bring no new bytes (an attempt that brings some starts the count
  again), so a mirror that cannot be reached costs at most `RetryPolicy.bound()` seconds.
- permanent: a host name that does not resolve, a TLS failure (an untrusted or wrong
  certificate), any other HTTP status (404, 403, ...). Fails at once: trying again would
  give the same answer.

Either way the error is a FetchError (exit code 3, "input unavailable") naming the URL,
whether the name (DNS), TLS or the server failed, and how to use a local copy instead.
"""

from __future__ import annotations

import errno
import http.client
import logging
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TypeVar

from builder.errors import FetchError

log = logging.getLogger(__name__)

USER_AGENT = "azbuild"
T = TypeVar("T")
_TRANSIENT_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a fetch tries. The defaults are documented in docs/iso.md."""

    attempts: int = 4  # in a row without progress, the first one included
    first_delay: float = 1.0  # seconds before the first retry, doubled for each next one
    timeout: float = 15.0  # seconds to connect, and for each read of the answer

    def delay(self, failures: int) -> float:
        """The pause after the `failures`-th failure in a row (1, 2, ...)."""
        return float(self.first_delay * 2 ** (failures - 1))

    def bound(self) -> float:
        """The longest a fetch that never gets a byte takes to fail: every attempt waits
        out its timeout, plus the pauses between them."""
        return self.attempts * self.timeout + sum(self.delay(n)
                                                  for n in range(1, self.attempts))


DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True)
class Failure:
    """Why one attempt failed, judged once."""

    cause: str  # "dns", "tls", "http", "timeout", "connection"
    detail: str  # for people: "HTTP 503 Service Unavailable", "connection refused", ...
    transient: bool
    status: int | None = None


class AttemptFailed(Exception):
    """One attempt failed; carries the judgement."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def judge(exc: BaseException) -> Failure:
    """Transient or permanent, and in which words, for what urllib raised."""
    if isinstance(exc, urllib.error.HTTPError):
        reason = f" {exc.reason}" if exc.reason else ""
        transient = exc.code in _TRANSIENT_STATUS or 500 <= exc.code < 600
        return Failure("http", f"HTTP {exc.code}{reason}", transient, exc.code)
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return judge(exc.reason)
    if isinstance(exc, urllib.error.URLError):
        return Failure("connection", str(exc.reason), True)
    if isinstance(exc, socket.gaierror):
        return Failure("dns", exc.strerror or str(exc), False)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure("tls", f"certificate not trusted: {exc.verify_message}", False)
    if isinstance(exc, ssl.SSLError):
        return Failure("tls", exc.reason or str(exc), False)
    if isinstance(exc, TimeoutError):
        return Failure("timeout", "no answer within the timeout", True)
    if isinstance(exc, ConnectionRefusedError):
        return Failure("connection", "connection refused", True)
    if isinstance(exc, http.client.RemoteDisconnected):
        return Failure("connection", "the server closed the connection without an answer",
                       True)
    if isinstance(exc, ConnectionResetError):
        return Failure("connection", "connection reset", True)
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return Failure("connection", exc.strerror or "network unreachable", True)
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return Failure("connection", str(exc) or type(exc).__name__, True)
    raise exc


def host_of(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def request(url: str, offset: int = 0) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.Request(url, headers=headers)


def open_url(url: str, timeout: float, offset: int = 0) -> http.client.HTTPResponse:
    """The server's answer, or AttemptFailed. HTTP errors are judged too, but the caller
    sees HTTP 416 on a resumed download as the AttemptFailed with `status` 416."""
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(
            request(url, offset), timeout=timeout)
    except (OSError, http.client.HTTPException) as exc:
        raise AttemptFailed(judge(exc)) from None
    return response


def read_all(response: IO[bytes]) -> bytes:
    try:
        return response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise AttemptFailed(judge(exc)) from None


def retrying(url: str, what: str, attempt: Callable[[], T], *,
             progressed: Callable[[], bool] = lambda: False,
             policy: RetryPolicy = DEFAULT_POLICY,
             local_copy: str, resume_note: Callable[[], str] = lambda: "") -> T:
    """`attempt()` until it returns, under `policy`; a FetchError when it gives up.
    `progressed()` says whether the last failed attempt brought new bytes (which starts
    the count again); `local_copy` says how to use a local copy instead, `resume_note()`
    what is kept for next time."""
    failures = 0
    started = time.monotonic()
    while True:
        try:
            return attempt()
        except AttemptFailed as exc:
            failure = exc.failure
        failures = 1 if progressed() else failures + 1
        if not failure.transient:
            raise unavailable(url, what, failure, local_copy=local_copy) from None
        if failures >= policy.attempts:
            raise unavailable(url, what, failure, local_copy=local_copy, tries=failures,
                              seconds=time.monotonic() - started,
                              resume_note=resume_note()) from None
        delay = policy.delay(failures)
        log.warning("fetching the %s %s failed (%s); attempt %d of %d in %.0fs",
                    what, url, failure.detail, failures + 1, policy.attempts, delay)
        time.sleep(delay)


def unavailable(url: str, what: str, failure: Failure, *, local_copy: str, tries: int = 1,
                seconds: float = 0.0, resume_note: str = "") -> FetchError:
    """The error for a fetch that failed for good: what failed, and what to do."""
    host = host_of(url)
    head = f"cannot fetch the {what} {url}: "
    if failure.cause == "dns":
        return FetchError(
            head + f"the host name {urllib.parse.urlsplit(url).hostname} does not resolve "
            f"(DNS: {failure.detail})",
            hint=f"check the host name and this machine's DNS and network; or {local_copy}",
            url=url, cause="dns")
    if failure.cause == "tls":
        return FetchError(
            head + f"the TLS connection to {host} failed ({failure.detail})",
            hint="the server's certificate is not trusted here (a wrong host name, or a "
                 f"proxy that intercepts TLS?); or {local_copy}",
            url=url, cause="tls")
    if not failure.transient:
        moved = (" the mirror may have moved or removed it;" if failure.status in (404, 410)
                 else "")
        return FetchError(
            head + f"the server {host} answered {failure.detail}",
            hint=f"check the URL:{moved} or {local_copy}", url=url, cause="http")
    times = f"{tries} attempts failed over {seconds:.0f}s" if tries > 1 else "it failed"
    note = f" {resume_note}" if resume_note else ""
    return FetchError(
        head + f"the server {host} cannot be reached or failed ({times}; the last: "
        f"{failure.detail})",
        hint=f"the server or the network to it is down or overloaded: try again later or "
             f"another mirror; or {local_copy}.{note}",
        url=url, cause=failure.cause)
