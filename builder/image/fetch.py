"""Installer ISOs: download with resume and retry into a content-addressed cache, verify.

`fetch_iso(iso, checksum)` returns a local path whose digest matches `checksum`.
A URL is downloaded once into `cache_dir()/iso/<algorithm>-<digest>.iso`
(`AZBUILD_CACHE_DIR` moves the cache); later builds with the same checksum use
that file without any request for the ISO. An interrupted download continues
from its `.part` file with an HTTP Range request. Nothing boots an ISO that has
not matched its checksum. Every request, the checksum file's too, follows the one
retry policy of builder/image/download.py; a download that failed for good leaves a failure
record beside its lock, so that the builds that waited on the lock get the same answer
instead of trying again one after the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from builder.errors import BuildError, FetchError, UsageError, indent
from builder.image.download import (
    DEFAULT_POLICY,
    AttemptFailed,
    Failure,
    RetryPolicy,
    judge,
    open_url,
    read_all,
    retrying,
)
from builder.image.verified import remembered_digest
from builder.paths import cache_dir
from builder.waits import reported_wait

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
LOG_INTERVAL = 10.0  # seconds between progress lines when not on a terminal
_ALGORITHMS = {64: "sha256", 128: "sha512"}
_GNU_RE = re.compile(r"^(?P<digest>[0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *](?P<name>.+)$")
_BSD_RE = re.compile(
    r"^(?P<algo>SHA256|SHA512|SHA2-256|SHA2-512) ?\((?P<name>.+)\) ?= ?(?P<digest>[0-9a-fA-F]+)$",
    re.IGNORECASE,
)
ISO_LOCAL_COPY = ("download it yourself and set source.iso to the local file (the checksum "
                  "still applies)")
CHECKSUM_LOCAL_COPY = ("set source.checksum to 'sha256:<hex>', or to 'file:' and a local copy "
                       "of the checksum file")


@dataclass(frozen=True)
class Digest:
    algorithm: str  # "sha256" or "sha512"
    hexdigest: str  # lower case

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def iso_cache_dir() -> Path:
    return cache_dir() / "iso"


def cached_iso(digest: Digest) -> Path:
    """Where a downloaded ISO with this digest is kept."""
    return iso_cache_dir() / f"{digest.algorithm}-{digest.hexdigest}.iso"


def local_iso(iso: str, checksum: str | None) -> Path | None:
    """The ISO's file if it is already here, without downloading or reading anything:
    the local path, or the cached download when the checksum is written inline (a
    'file:' checksum would have to be fetched first). None when it is not here."""
    if not is_url(iso):
        path = Path(iso).expanduser()
        return path if path.is_file() else None
    kind, _, value = (checksum or "").partition(":")
    if kind.lower() not in ("sha256", "sha512") or not value:
        return None
    path = cached_iso(Digest(kind.lower(), value.lower()))
    return path if path.is_file() else None


def fetch_iso(iso: str, checksum: str, *, policy: RetryPolicy = DEFAULT_POLICY) -> Path:
    """A verified local copy of `iso` (a local path or an http(s) URL).

    `checksum` is 'sha256:<hex>', 'sha512:<hex>' or 'file:<URL or path>' of a
    GNU or BSD checksum file listing the ISO's file name. A download that does
    not match is removed and raises BuildError with both digests; a local file
    that does not match raises UsageError (and is left alone). A URL that cannot be
    fetched raises FetchError (builder/image/download.py).
    """
    expected = resolve_checksum(checksum, iso, policy=policy)
    if not is_url(iso):
        path = Path(iso).expanduser()
        if not path.is_file():
            raise UsageError(f"ISO not found: {path}", hint="check source.iso in the template")
        verify_local_file(path, expected, what="ISO")
        return path

    target = cached_iso(expected)
    if target.is_file():
        log.info("ISO cache hit: %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    record = failure_record_path(target)
    waiting_since = time.time()
    with _locked(target.with_name(target.name + ".lock"), iso):
        if target.is_file():  # another build finished the download while we waited
            log.info("ISO cache hit: %s", target)
            return target
        shared = _failure_since(record, iso, waiting_since)
        if shared is not None:
            raise shared
        part = target.with_name(target.name + ".part")
        try:
            download(iso, part, policy=policy)
        except FetchError as exc:
            _write_failure(record, exc)
            raise
        record.unlink(missing_ok=True)
        actual = file_digest(part, expected.algorithm)
        if actual != expected.hexdigest:
            part.unlink(missing_ok=True)
            raise BuildError(
                _mismatch(iso, expected, actual) + "\nthe download was removed",
                hint="check source.checksum; if it is right, the mirror served a bad file",
            )
        os.replace(part, target)
    log.info("ISO verified and cached: %s", target)
    return target


def failure_record_path(target: Path) -> Path:
    """Where a failed download of `target` says why, beside its lock."""
    return target.with_name(target.name + ".failed")


def _write_failure(record: Path, exc: FetchError) -> None:
    """Written before the lock is released, for the builds waiting on it. Best effort: a
    record that cannot be written only makes them try for themselves."""
    data = {"url": exc.url, "cause": exc.cause, "message": exc.message, "hint": exc.hint,
            "time": time.time(), "pid": os.getpid()}
    try:
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, record)
    except OSError as err:
        log.debug("could not write the failure record %s: %s", record, err)


def _failure_since(record: Path, url: str, since: float) -> FetchError | None:
    """The failure another build recorded for `url` after `since` (while this build waited
    on the lock): the same answer, without trying again. An older record, from a build
    that had ended before this one asked, is ignored: this build tries for itself."""
    try:
        data = json.loads(record.read_text())
        if data["url"] != url or float(data["time"]) < since:
            return None
        message, hint, cause = str(data["message"]), data.get("hint"), str(data["cause"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    log.info("another build's download of %s failed while this one waited for it: "
             "not trying again", url)
    return FetchError(f"{message} (the answer of the build this one waited for)",
                      hint=hint if isinstance(hint, str) else None, url=url, cause=cause)


def verify_local_file(path: Path, expected: Digest, *, what: str) -> None:
    """UsageError unless the local file `path` has the digest `expected`; the file is
    left alone either way. `what` names it in the hint ("ISO", "disk image")."""
    log.info("verifying %s (%s)", path, expected.algorithm)
    actual = remembered_digest(path, expected.algorithm, file_digest)
    if actual != expected.hexdigest:
        raise UsageError(
            _mismatch(path, expected, actual),
            hint=f"the file is corrupt or the checksum is for another {what}",
        )


def _mismatch(name: object, expected: Digest, actual: str) -> str:
    return f"checksum mismatch for {name}:\n" + indent(
        [f"expected {expected}", f"actual   {expected.algorithm}:{actual}"], "  ")


def resolve_checksum(checksum: str, iso: str, *,
                     policy: RetryPolicy = DEFAULT_POLICY) -> Digest:
    """Turn the template's checksum into an algorithm and digest, reading a checksum
    file (local or remote) when given 'file:'."""
    kind, _, value = checksum.partition(":")
    kind = kind.lower()
    if kind in ("sha256", "sha512"):
        want = 64 if kind == "sha256" else 128
        if not re.fullmatch(r"[0-9a-fA-F]+", value) or len(value) != want:
            raise UsageError(f"checksum {checksum!r}: expected {want} hex digits after '{kind}:'")
        return Digest(kind, value.lower())
    if kind == "file" and value:
        text = _read_text(value, policy)
        return parse_checksum_file(text, iso_file_name(iso), source=value)
    raise UsageError(
        f"unsupported checksum {checksum!r}",
        hint="use 'sha256:<hex>', 'sha512:<hex>' or 'file:<URL or path of a checksum file>'",
    )


def iso_file_name(iso: str) -> str:
    if is_url(iso):
        return urllib.parse.unquote(Path(urllib.parse.urlsplit(iso).path).name)
    return Path(iso).name


def parse_checksum_file(text: str, name: str, *, source: str = "checksum file") -> Digest:
    """The digest for `name` in a GNU (`<hex>  name`, `<hex> *name`) or BSD
    (`SHA256 (name) = <hex>`) checksum file. PGP-signed files work too: the
    signature lines match neither format."""
    seen: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        gnu = _GNU_RE.match(line)
        if gnu:
            entry, digest = gnu["name"].strip(), gnu["digest"]
            algorithm = _ALGORITHMS[len(digest)]
        else:
            bsd = _BSD_RE.match(line)
            if not bsd:
                continue
            entry, digest = bsd["name"].strip(), bsd["digest"]
            algorithm = "sha512" if bsd["algo"].upper().endswith("512") else "sha256"
            if len(digest) != {"sha256": 64, "sha512": 128}[algorithm]:
                continue
        entry = entry.removeprefix("./")
        seen.append(entry)
        if entry == name or Path(entry).name == name:
            return Digest(algorithm, digest.lower())
    listed = ", ".join(seen[:10]) or "no entries in a known format"
    raise UsageError(
        f"{source} has no checksum for {name!r} (it lists: {listed})",
        hint="the ISO's file name must appear in the checksum file",
    )


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_text(location: str, policy: RetryPolicy) -> str:
    if is_url(location):
        def attempt() -> bytes:
            with open_url(location, policy.timeout) as resp:
                return read_all(resp)

        data = retrying(location, "checksum file", attempt, policy=policy,
                        local_copy=CHECKSUM_LOCAL_COPY)
        return data.decode("utf-8", errors="replace")
    path = Path(location).expanduser()
    if not path.is_file():
        raise UsageError(f"checksum file not found: {path}")
    return path.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def _locked(lock_path: Path, url: str) -> Iterator[None]:
    """The download's lock; waiting for another build's download is said as a long wait."""
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another build is downloading %s: waiting for it", url)
            with reported_wait(f"another build's download of {url}", None, logger=log):
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download(url: str, part: Path, *, policy: RetryPolicy = DEFAULT_POLICY) -> None:
    """Download `url` into `part`, continuing what is already there, under `policy`
    (builder/image/download.py): an attempt that brought new bytes starts the count again."""
    sizes = [_size(part)]

    def attempt() -> None:
        sizes.append(_size(part))
        _download_once(url, part, policy.timeout)

    def progressed() -> bool:
        return _size(part) > sizes[-1]

    def resume_note() -> str:
        size = _size(part)
        if not size:
            return ""
        return (f"The {size} bytes downloaded so far are kept in {part} and the next build "
                "continues from there.")

    retrying(url, "ISO", attempt, progressed=progressed, policy=policy,
             local_copy=ISO_LOCAL_COPY, resume_note=resume_note)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _download_once(url: str, part: Path, timeout: float) -> None:
    offset = _size(part)
    try:
        resp = open_url(url, timeout, offset)
    except AttemptFailed as exc:
        if exc.failure.status == 416 and offset:
            # Nothing left to send: the .part already holds the whole file.
            log.debug("server answered 416 for offset %d: download complete", offset)
            return
        raise
    with resp:
        status = resp.status
        if offset and status == 206:
            mode = "ab"
            log.info("resuming download of %s at %d bytes", url, offset)
        else:
            mode, offset = "wb", 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with part.open(mode) as out, _progress(url, total, offset) as advance:
            _copy(resp, out, advance)
        size = part.stat().st_size
        if total is not None and size < total:
            raise AttemptFailed(Failure(
                "connection", f"the connection closed at {size} of {total} bytes", True))


def _copy(resp: IO[bytes], out: IO[bytes], advance: _Advance) -> None:
    try:
        while True:
            chunk = resp.read(CHUNK)
            if not chunk:
                return
            out.write(chunk)
            advance(len(chunk))
    except (OSError, http.client.HTTPException) as exc:
        out.flush()
        raise AttemptFailed(judge(exc)) from None


class _Advance:
    def __call__(self, count: int) -> None: ...


@contextlib.contextmanager
def _progress(url: str, total: int | None, done: int) -> Iterator[_Advance]:
    name = iso_file_name(url)
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
        ) as bar:
            task = bar.add_task(name, total=total, completed=done)

            class _Bar(_Advance):
                def __call__(self, count: int) -> None:
                    bar.advance(task, count)

            yield _Bar()
        return

    state = {"done": done, "last": time.monotonic()}

    class _Lines(_Advance):
        def __call__(self, count: int) -> None:
            state["done"] += count
            now = time.monotonic()
            if now - state["last"] >= LOG_INTERVAL:
                state["last"] = now
                _log_progress(name, int(state["done"]), total)

    yield _Lines()
    _log_progress(name, int(state["done"]), total)


def _log_progress(name: str, done: int, total: int | None) -> None:
    mib = 1024 * 1024
    if total:
        log.info("downloading %s: %d of %d MiB (%d%%)", name, done // mib, total // mib,
                 100 * done // total)
    else:
        log.info("downloading %s: %d MiB", name, done // mib)
