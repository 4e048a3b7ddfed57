"""SHA-256 of disk images, as cheaply as it can be had.

- Holes are hashed as zeros from one preallocated buffer, never read from disk
  (SEEK_DATA/SEEK_HOLE through builder.image.disk.data_ranges).
- A build's fixed VHD holds its RAW's bytes, then zeros up to a whole MiB, then the
  512-byte footer: its digest is the RAW's hash state, copied, fed that tail.
- A build hashes its artifacts in a background thread while the offline check runs;
  the manifest and the publish step take the digests from it when the file is unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from builder.image.disk import data_ranges
from builder.image.vhd import FOOTER_SIZE, aligned_size

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024  # one read, and one update of zeros: big enough to amortise calls
_ZEROS = memoryview(bytes(CHUNK))


class Cancelled(Exception):
    """The hashing was told to stop (the build is being torn down)."""


def hash_zeros(digest: hashlib._Hash, count: int) -> None:
    """Feed `count` zero bytes to `digest`, what reading a hole would give."""
    while count > 0:
        step = min(count, CHUNK)
        digest.update(_ZEROS[:step])
        count -= step


def update_sparse(digest: hashlib._Hash, fd: int, size: int,
                  cancel: threading.Event | None = None) -> None:
    """Feed the first `size` bytes of `fd` to `digest`, reading only its data (as the file
    system reports it) and hashing zeros for the holes."""
    ranges = data_ranges(fd, size)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    offset = 0
    for start, end in [*ranges, (size, size)]:
        hash_zeros(digest, start - offset)
        pos = start
        while pos < end:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            want = min(CHUNK, end - pos)
            got = os.preadv(fd, [view[:want]], pos)
            if got != want:
                raise OSError(errno.EIO, f"short read at offset {pos}: {got} of {want} bytes")
            digest.update(view[:want])
            pos += want
        offset = max(offset, end)


def sha256_file(path: Path) -> str:
    """The sha256 of the whole file at `path`, holes hashed without being read."""
    return _hash_path(path, path.stat().st_size, None).hexdigest()


@dataclass(frozen=True)
class Stamp:
    """What tells that a file is still the one that was hashed."""

    size: int
    mtime_ns: int
    inode: int
    device: int
    # Any write or chmod moves ctime, and no call sets it back (touch -d only sets mtime).
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> Stamp:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    stamp: Stamp  # taken before hashing: a file changed since no longer matches it


def artifact_digests(raw: Path | None, vhd: Path | None, *, vhd_holds_raw: bool,
                     cancel: threading.Event | None = None) -> dict[Path, FileDigest]:
    """The digests of a build's RAW and/or VHD. With `vhd_holds_raw` (both made from the
    same disk: the VHD's first bytes are the RAW's), the RAW is read once and the VHD's
    digest is derived from it, reading only the VHD's tail (padding and footer)."""
    digests: dict[Path, FileDigest] = {}
    raw_state: hashlib._Hash | None = None
    if raw is not None:
        stamp = Stamp.of(raw)
        raw_state = _hash_path(raw, stamp.size, cancel)
        digests[raw] = FileDigest(raw_state.hexdigest(), stamp)
    if vhd is not None:
        stamp = Stamp.of(vhd)
        if (raw_state is not None and vhd_holds_raw and raw is not None
                and stamp.size == aligned_size(digests[raw].stamp.size) + FOOTER_SIZE):
            state = raw_state.copy()
            _update_tail(state, vhd, digests[raw].stamp.size, stamp.size)
        else:
            state = _hash_path(vhd, stamp.size, cancel)
        digests[vhd] = FileDigest(state.hexdigest(), stamp)
    return digests


def _hash_path(path: Path, size: int, cancel: threading.Event | None) -> hashlib._Hash:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        update_sparse(digest, fd, size, cancel=cancel)
    finally:
        os.close(fd)
    return digest


def _update_tail(digest: hashlib._Hash, path: Path, start: int, size: int) -> None:
    """Feed bytes [start, size) of `path`: under a MiB of padding and the footer."""
    fd = os.open(path, os.O_RDONLY)
    try:
        tail = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    if len(tail) != size - start:
        raise OSError(errno.EIO, f"short read of the tail of {path}")
    digest.update(tail)


class BackgroundDigests:
    """A build's artifacts hashed on a thread of their own. It only reads: stopping it
    (an interrupted or failed build) leaves nothing behind."""

    def __init__(self, artifacts: Mapping[str, Path], *, vhd_holds_raw: bool) -> None:
        self._raw = artifacts.get("raw")
        self._vhd = artifacts.get("vhd")
        self._vhd_holds_raw = vhd_holds_raw
        self._cancel = threading.Event()
        self._digests: dict[Path, FileDigest] = {}
        self._error: BaseException | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="hash-artifacts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self._digests = artifact_digests(self._raw, self._vhd,
                                             vhd_holds_raw=self._vhd_holds_raw,
                                             cancel=self._cancel)
        except Cancelled:
            pass
        except BaseException as exc:  # handed to whoever waits for the result
            self._error = exc
        self.seconds = time.monotonic() - started

    def wait(self) -> dict[Path, FileDigest]:
        """The digests, once hashing is done; a hashing error is raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digests

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop hashing and wait for the thread (at most one chunk's read)."""
        self._cancel.set()
        self._thread.join()

    def known(self, path: Path) -> str | None:
        """The digest of `path` if it was hashed and is unchanged since, else None."""
        found = self.wait().get(path)
        if found is None or not path.is_file() or Stamp.of(path) != found.stamp:
            return None
        return found.sha256
