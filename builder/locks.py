"""Locks between concurrent azbuild processes: fcntl.flock on a lock file.

A flock is released by the kernel when its holder dies, so a killed build never leaves a
held lock behind. `removable_lock` also removes its file on release; a waiter that locked
the file just removed notices (the path no longer names its file) and tries again, so two
holders never coexist.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from builder.errors import UsageError
from builder.paths import work_root


@contextmanager
def removable_lock(lock_path: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path`, created for the purpose and removed on
    release. With `wait` False, raise BlockingIOError at once when another process holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed it as we got it: lock the new one
    try:
        yield
    finally:
        # Unlink while still holding it, so no one can lock this inode and believe it theirs.
        try:
            os.unlink(lock_path)
        finally:
            os.close(fd)


def remove_stale_locks(directory: Path, pattern: str) -> list[Path]:
    """Remove the lock files matching `pattern` in `directory` that no process holds: a
    build killed with SIGKILL leaves its (released) lock file behind. For `azbuild gc`."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.glob(pattern)):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # held: a build is running
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)  # while holding it, as removable_lock does
                removed.append(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


OUTPUT_LOCK_PATTERN = ".output-*.lock"


def output_lock_path(output_dir: Path) -> Path:
    """The lock file of an output directory: in the work root (not in the output
    directory, which holds only the build's outputs), named by the path's hash."""
    key = hashlib.sha256(str(output_dir.absolute()).encode()).hexdigest()[:24]
    return work_root() / f".output-{key}.lock"


@contextmanager
def output_directory_lock(output_dir: Path) -> Iterator[None]:
    """One build at a time writes into `output_dir`; a second one is refused (exit 2)
    rather than made to wait: both would write the same artifacts."""
    with ExitStack() as stack:
        try:
            stack.enter_context(removable_lock(output_lock_path(output_dir), wait=False))
        except BlockingIOError:
            raise UsageError(
                f"another azbuild build is writing into {output_dir}",
                hint="wait for it to finish, or give this build another --output-dir",
            ) from None
        yield
