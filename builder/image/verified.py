"""Digests of local source files (ISOs, disk images) remembered between builds.

A local multi-GB ISO would otherwise be hashed on every build before anything
boots. The digest is kept under the cache directory with the file's stamp (size,
mtime, ctime, inode, device); it is used only while the file still has that
stamp. Any write to the file moves its ctime, which no user call sets back, so a
changed file is always hashed again. A record that cannot be read or written is
ignored: the file is hashed, as without this memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from builder.image.digest import Stamp
from builder.paths import cache_dir

log = logging.getLogger(__name__)


def records_dir() -> Path:
    return cache_dir() / "verified"


def _record_path(path: Path, algorithm: str) -> Path:
    name = hashlib.sha256(f"{algorithm}\0{path.resolve()}".encode()).hexdigest()[:32]
    return records_dir() / f"{name}.json"


def remembered_digest(path: Path, algorithm: str, compute: Callable[[Path, str], str]) -> str:
    """The `algorithm` digest of `path`: remembered when the file is unchanged since it
    was last hashed, else `compute(path, algorithm)`, remembered for next time."""
    stamp = Stamp.of(path)
    record = _record_path(path, algorithm)
    known = _read(record, stamp)
    if known is not None:
        log.info("%s is unchanged since it was hashed (%s): not hashed again", path, algorithm)
        return known
    digest = compute(path, algorithm)
    if Stamp.of(path) == stamp:  # not changed while it was read
        _write(record, stamp, digest)
    return digest


def _read(record: Path, stamp: Stamp) -> str | None:
    try:
        data = json.loads(record.read_text())
        if data.get("stamp") == dataclasses.asdict(stamp) and isinstance(data["digest"], str):
            return str(data["digest"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def _write(record: Path, stamp: Stamp, digest: str) -> None:
    """Write the record atomically; a cache directory we cannot write to only costs
    the next build a hash."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=record.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"stamp": dataclasses.asdict(stamp), "digest": digest}, f)
            os.replace(tmp, record)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("could not remember the digest in %s: %s", record, exc)
