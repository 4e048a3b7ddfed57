"""The content-addressed stage cache: disk states after the install and after cache points.

An entry is a qcow2 file named by its key (a sha256 hex digest) under
<cache dir>/stages, read-only (0444), with a JSON sidecar written last that records
its size and sha256: an entry without a sidecar is unfinished, one whose file no
longer matches its sidecar is corrupt and is removed, never used. A child entry is a
qcow2 overlay whose backing file is its parent entry, so an entry is usable only
while its whole chain is. Entries are created under an flock per key: a second build
wanting the same key waits and then uses the finished entry. docs/cache.md explains
the keys and the commands.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from builder.image.digest import sha256_file
from builder.image.disk import fsync_dir
from builder.paths import cache_dir
from builder.vm.keys import KeyPair, fingerprint

log = logging.getLogger(__name__)

# Bump when what azbuild does to make a stage changes (the install's disk layout, the
# answer files' shape, how entries are written): every older entry then misses.
STAGE_FORMAT = 1
ENTRY_SUFFIX = ".qcow2"
SIDECAR_SUFFIX = ".json"
KEYS_SUFFIX = ".keys.json"
LOCK_SUFFIX = ".lock"

StageKind = Literal["install", "source", "provision"]


@dataclass(frozen=True)
class Entry:
    """One finished cache entry, as its sidecar records it."""

    key: str
    parent: str | None
    kind: StageKind
    description: str
    template: str
    size: int
    sha256: str
    created: str  # ISO 8601, UTC
    format: int = STAGE_FORMAT
    keys_sha256: str | None = None  # the stored SSH keys' file (install entries)
    seconds: float = 0.0  # what making the stage took: a hit saves about this much
    parent_sha256: str | None = None  # the parent entry this overlay was made on

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StoredKeys:
    """The SSH keys the system in an install entry trusts and presents."""

    client: KeyPair
    host: KeyPair


def stage_key(*parts: str | bytes) -> str:
    """sha256 over length-prefixed parts (so no two part lists collide)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def stages_dir() -> Path:
    return cache_dir() / "stages"


class StageCache:
    """The entries under `root` (default: <cache dir>/stages)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else stages_dir()
        self._verified: set[str] = set()  # hashed once per build, not once per lookup

    # --- names ------------------------------------------------------------------------

    def entry_path(self, key: str) -> Path:
        return self.root / f"{key}{ENTRY_SUFFIX}"

    def sidecar_path(self, key: str) -> Path:
        return self.root / f"{key}{SIDECAR_SUFFIX}"

    def keys_path(self, key: str) -> Path:
        return self.root / f"{key}{KEYS_SUFFIX}"

    def lock_path(self, key: str) -> Path:
        return self.root / f"{key}{LOCK_SUFFIX}"

    def temp_path(self, key: str) -> Path:
        """A fresh name in the cache directory for an entry being made (same filesystem
        as the entry, so storing it is a rename)."""
        self.ensure_root()
        return self.root / f".{key}.{secrets.token_hex(4)}.tmp"

    def ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    # --- creating ---------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the key's creation lock (blocking until another holder is done)."""
        self.ensure_root()
        fd = os.open(self.lock_path(key), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not _try_lock(fd):
                log.info("waiting for another build making the cache entry %s", key[:12])
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    @contextlib.contextmanager
    def in_use(self, key: str) -> Iterator[None]:
        """A shared hold on `key` for as long as a build reads it (as a backing file):
        `azbuild cache prune` leaves held entries, and their parents, alone."""
        self.ensure_root()
        fd = os.open(self.lock_path(key), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def unless_busy(self, keys: list[str]) -> Iterator[bool]:
        """Exclusive holds on every key in `keys` without waiting; yields False (holding
        nothing) when any is being made or read by a build."""
        fds: list[int] = []
        try:
            for key in keys:
                fd = os.open(self.lock_path(key), os.O_RDWR | os.O_CREAT, 0o600)
                fds.append(fd)
                if not _try_lock(fd):
                    yield False
                    return
            yield True
        finally:
            for fd in fds:
                os.close(fd)

    def store(self, key: str, tmp: Path, *, parent: str | None, kind: StageKind,
              description: str, template: str, seconds: float,
              keys: StoredKeys | None = None) -> Entry:
        """Make the finished disk `tmp` (in this cache's directory) the entry `key`:
        fsync, read-only, rename, then the sidecar with its size and sha256, written last.
        Call with the key's lock held."""
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o444)
        size = tmp.stat().st_size
        digest = sha256_file(tmp)
        parent_sha256 = None
        if parent is not None:
            parent_entry = self.sidecar(parent)
            parent_sha256 = parent_entry.sha256 if parent_entry is not None else None
        keys_sha256 = None
        if keys is not None:
            keys_sha256 = self._write_keys(key, keys)
        os.replace(tmp, self.entry_path(key))
        entry = Entry(key=key, parent=parent, kind=kind, description=description,
                      template=template, size=size, sha256=digest,
                      created=datetime.now(UTC).isoformat(timespec="seconds"),
                      keys_sha256=keys_sha256, seconds=round(seconds, 1),
                      parent_sha256=parent_sha256)
        _write_atomically(self.sidecar_path(key),
                          json.dumps(entry.to_json(), indent=2).encode() + b"\n", 0o444)
        fsync_dir(self.root)
        log.info("stored the cache entry %s (%s, %d bytes)", key[:12], description, size)
        return entry

    def _write_keys(self, key: str, keys: StoredKeys) -> str:
        data = json.dumps({
            "client_private": keys.client.private_openssh,
            "client_public": keys.client.public_line,
            "host_private": keys.host.private_openssh,
            "host_public": keys.host.public_line,
        }).encode()
        _write_atomically(self.keys_path(key), data, 0o600)
        return hashlib.sha256(data).hexdigest()

    # --- reading ----------------------------------------------------------------------

    def sidecar(self, key: str) -> Entry | None:
        """What the sidecar of `key` says, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads(self.sidecar_path(key).read_text())
            return Entry(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("the cache entry %s has an unreadable record (%s); discarding it",
                        key[:12], exc)
            self.remove(key)
            return None

    def lookup(self, key: str) -> Entry | None:
        """The entry `key` if it and its whole chain are present and intact, else None.
        A corrupt entry is removed with a warning (so it gets made again)."""
        entry = self.sidecar(key)
        if entry is None:
            return None
        if entry.format != STAGE_FORMAT:
            return None
        if entry.parent is not None:
            parent = self.lookup(entry.parent)
            if parent is None:
                log.info("the cache entry %s lost its parent %s: a miss", key[:12],
                         entry.parent[:12])
                return None
            if parent.sha256 != entry.parent_sha256:
                # The parent was made again since: this overlay was made on other bytes.
                log.warning("the cache entry %s was made on another %s; discarding it",
                            key[:12], entry.parent[:12])
                self.remove(key)
                return None
        problem = None if key in self._verified else self._integrity_problem(entry)
        if problem is None:
            self._verified.add(key)
        else:
            log.warning("the cache entry %s is corrupt (%s); discarding it", key[:12], problem)
            self.remove(key)
            return None
        self.touch(key)
        return entry

    def _integrity_problem(self, entry: Entry) -> str | None:
        path = self.entry_path(entry.key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "its disk is missing"
        if size != entry.size:
            return f"{size} bytes, {entry.size} recorded"
        if sha256_file(path) != entry.sha256:
            return "its sha256 differs from the recorded one"
        if entry.keys_sha256 is not None:
            try:
                data = self.keys_path(entry.key).read_bytes()
            except OSError:
                return "its SSH keys are missing"
            if hashlib.sha256(data).hexdigest() != entry.keys_sha256:
                return "its SSH keys' sha256 differs from the recorded one"
        return None

    def load_keys(self, key: str) -> StoredKeys:
        data = json.loads(self.keys_path(key).read_text())
        return StoredKeys(
            client=KeyPair(private_openssh=data["client_private"],
                           public_line=data["client_public"],
                           fingerprint=fingerprint(data["client_public"])),
            host=KeyPair(private_openssh=data["host_private"],
                         public_line=data["host_public"],
                         fingerprint=fingerprint(data["host_public"])),
        )

    def root_of(self, key: str) -> str:
        """The first entry of the chain `key` is on (the install or source copy)."""
        entry = self.sidecar(key)
        while entry is not None and entry.parent is not None:
            key = entry.parent
            entry = self.sidecar(key)
        return key

    def touch(self, key: str) -> None:
        """Record a use: the sidecar's mtime is the entry's last use."""
        with contextlib.suppress(OSError):
            os.utime(self.sidecar_path(key))

    def last_used(self, key: str) -> float:
        try:
            return self.sidecar_path(key).stat().st_mtime
        except OSError:
            return 0.0

    def entries(self) -> list[Entry]:
        """Every finished entry (by its sidecar), oldest first; nothing is verified."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.glob(f"*{SIDECAR_SUFFIX}"):
            if path.name.endswith(KEYS_SUFFIX):
                continue
            entry = self.sidecar(path.name.removesuffix(SIDECAR_SUFFIX))
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: e.created)

    def remove(self, key: str) -> None:
        """Remove the entry `key`: the sidecar first, so a half-removed entry is no entry."""
        self._verified.discard(key)
        # The lock file stays: unlinking it under a waiting build would split the lock.
        for path in (self.sidecar_path(key), self.entry_path(key), self.keys_path(key)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def remove_stale_temps(self, *, dry_run: bool = False) -> list[Path]:
        """Temp files of builds killed while making an entry: a disk being made is always
        under its key's exclusive lock, so a temp whose key's lock is free is stale.
        With `dry_run`, only say which."""
        if not self.root.is_dir():
            return []
        removed = []
        for path in self.root.glob(".*.tmp"):
            key = path.name[1:].split(".", 1)[0]
            if len(key) != 64:
                continue
            with self.unless_busy([key]) as free:
                if free:
                    if not dry_run:
                        path.unlink(missing_ok=True)
                    removed.append(path)
        return removed


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
