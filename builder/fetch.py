"""Installer ISOs: download with resume and retry into a content-addressed cache, verify.

`fetch_iso(iso, checksum)` returns a local path whose digest matches `checksum`.
A URL is downloaded once into `cache_dir()/iso/<algorithm>-<digest>.iso`
(`AZBUILD_CACHE_DIR` moves the cache); later builds with the same checksum use
that file without any request for the ISO. An interrupted download continues
from its `.part` file with an HTTP Range request. Nothing boots an ISO that has
not matched its checksum.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from builder.errors import BuildError, UsageError, indent
from builder.paths import cache_dir
from builder.verified import remembered_digest

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
USER_AGENT = "azbuild"
LOG_INTERVAL = 10.0  # seconds between progress lines when not on a terminal
_ALGORITHMS = {64: "sha256", 128: "sha512"}
_GNU_RE = re.compile(r"^(?P<digest>[0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *](?P<name>.+)$")
_BSD_RE = re.compile(
    r"^(?P<algo>SHA256|SHA512|SHA2-256|SHA2-512) ?\((?P<name>.+)\) ?= ?(?P<digest>[0-9a-fA-F]+)$",
    re.IGNORECASE,
)
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Digest:
    algorithm: str  # "sha256" or "sha512"
    hexdigest: str  # lower case

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


class _Transient(Exception):
    """A failure worth another attempt (connection dropped, timeout, 5xx)."""


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


def fetch_iso(iso: str, checksum: str, *, retries: int = 6, backoff: float = 2.0) -> Path:
    """A verified local copy of `iso` (a local path or an http(s) URL).

    `checksum` is 'sha256:<hex>', 'sha512:<hex>' or 'file:<URL or path>' of a
    GNU or BSD checksum file listing the ISO's file name. A download that does
    not match is removed and raises BuildError with both digests; a local file
    that does not match raises UsageError (and is left alone).
    """
    expected = resolve_checksum(checksum, iso)
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
    with _locked(target.with_name(target.name + ".lock")):
        if target.is_file():  # another build finished the download while we waited
            log.info("ISO cache hit: %s", target)
            return target
        part = target.with_name(target.name + ".part")
        download(iso, part, retries=retries, backoff=backoff)
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


def resolve_checksum(checksum: str, iso: str) -> Digest:
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
        text = _read_text(value)
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


def _read_text(location: str) -> str:
    if is_url(location):
        for attempt in range(4):
            try:
                with urllib.request.urlopen(_request(location), timeout=60) as resp:
                    return bytes(resp.read()).decode("utf-8", errors="replace")
            except urllib.error.HTTPError as exc:
                if exc.code not in _RETRY_STATUS or attempt == 3:
                    raise BuildError(f"cannot fetch checksum file {location}: HTTP {exc.code}") \
                        from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if attempt == 3:
                    raise BuildError(f"cannot fetch checksum file {location}: {exc}") from None
            time.sleep(2**attempt)
    path = Path(location).expanduser()
    if not path.is_file():
        raise UsageError(f"checksum file not found: {path}")
    return path.read_text(encoding="utf-8", errors="replace")


def _request(url: str, offset: int = 0) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.Request(url, headers=headers)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download(url: str, part: Path, *, retries: int = 6, backoff: float = 2.0) -> None:
    """Download `url` into `part`, continuing what is already there. Transient failures
    are retried with exponential backoff; an attempt that made progress resets the count."""
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _download_once(url, part)
            return
        except _Transient as exc:
            after = part.stat().st_size if part.exists() else 0
            failures = 0 if after > before else failures + 1
            if failures > retries:
                raise BuildError(
                    f"download of {url} failed after {retries} retries: {exc}",
                    hint=f"rerun the build: the partial download {part} is kept and resumed",
                ) from None
            delay = backoff * 2 ** max(failures - 1, 0)
            log.warning("download interrupted (%s) at %d bytes; retrying in %.1fs",
                        exc, after, delay)
            time.sleep(delay)


def _download_once(url: str, part: Path) -> None:
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = urllib.request.urlopen(_request(url, offset), timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Nothing left to send: the .part already holds the whole file.
            log.debug("server answered 416 for offset %d: download complete", offset)
            return
        if exc.code in _RETRY_STATUS:
            raise _Transient(f"HTTP {exc.code}") from None
        raise BuildError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Transient(str(reason)) from None
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
            raise _Transient(f"connection closed at {size} of {total} bytes")


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
        raise _Transient(f"connection lost: {exc or type(exc).__name__}") from None


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
