"""The libguestfs adapter: failure-tolerant reads of a launched, mounted guest."""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger(__name__)


class Guest:
    """Failure-tolerant helpers over a launched guestfs handle. Every call is a round trip
    to the appliance (tens of milliseconds under TCG), so each helper makes as few as it can."""

    def __init__(self, g: Any, tmp: Path) -> None:
        self.g = g
        self.tmp = tmp
        self._ls: dict[str, list[str]] = {}

    def exists(self, path: str) -> bool:
        try:
            return bool(self.g.exists(path))
        except RuntimeError:
            return False

    def is_file(self, path: str) -> bool:
        try:
            return bool(self.g.is_file(path, followsymlinks=True))
        except RuntimeError:
            return False

    def is_symlink(self, path: str) -> bool:
        try:
            return bool(self.g.is_symlink(path))
        except RuntimeError:
            return False

    def read_bytes(self, path: str) -> bytes | None:
        """The file's bytes (symlinks followed), or None when it is missing or not a file."""
        try:
            return bytes(self.g.read_file(path))
        except RuntimeError as exc:
            msg = str(exc)
            if any(m in msg for m in ("No such file", "Not a directory", "Is a directory",
                                      "Too many levels", "Permission denied")):
                return None
        return self.download(path)  # too large for one protocol message

    def download(self, path: str) -> bytes | None:
        local = self.tmp / "download"
        try:
            self.g.download(path, str(local))
        except RuntimeError as exc:
            log.debug("cannot download %s: %s", path, exc)
            return None
        data = local.read_bytes()
        local.unlink()
        return data

    def read_tree(self, directory: str) -> dict[str, str]:
        """The text of every regular file under `directory` (its path -> text), in one
        download (a tar), where reading them one by one would take a round trip each."""
        local = self.tmp / "tree.tar"
        try:
            self.g.tar_out(directory, str(local))
        except RuntimeError as exc:
            log.debug("cannot download %s: %s", directory, exc)
            return {}
        files: dict[str, str] = {}
        try:
            with tarfile.open(local) as tar:
                for member in tar:
                    data = tar.extractfile(member) if member.isfile() else None
                    if data is not None:
                        name = member.name.removeprefix("./")
                        files[f"{directory}/{name}"] = data.read().decode("utf-8", "replace")
        except tarfile.TarError as exc:
            log.debug("cannot read the files of %s: %s", directory, exc)
        finally:
            local.unlink(missing_ok=True)
        return files

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode("utf-8", "replace")

    def forget(self) -> None:
        """Drop cached listings (after mounting or unmounting)."""
        self._ls.clear()

    def ls(self, path: str) -> list[str]:
        if path not in self._ls:
            try:
                self._ls[path] = sorted(self.g.ls(path))
            except RuntimeError:
                self._ls[path] = []
        return self._ls[path]

    def stat(self, directory: str, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        """name -> (st_mode, st_size) without following symlinks, for entries of one dir."""
        if not names:
            return {}
        try:
            stats = self.g.lstatnslist(directory, list(names))
        except RuntimeError:
            return {}
        return {n: (int(st["st_mode"]), int(st["st_size"]))
                for n, st in zip(names, stats, strict=False) if int(st["st_ino"]) >= 0}

    def nonempty_files(self, directory: str, names: Sequence[str] | None = None) -> list[str]:
        """Regular files of `directory` (optionally only `names`) with a size above zero."""
        present = self.ls(directory)
        wanted = [n for n in present if names is None or n in names]
        return [f"{directory}/{n}" for n, (mode, size) in self.stat(directory, wanted).items()
                if mode & 0o170000 == 0o100000 and size > 0]

    def glob(self, pattern: str) -> list[str]:
        try:
            return sorted(self.g.glob_expand(pattern))
        except RuntimeError:
            return []

    def links_in(self, directory: str) -> dict[str, str]:
        names = self.ls(directory)
        if not names:
            return {}
        try:
            targets = self.g.readlinklist(directory, names)
        except RuntimeError:
            return {}
        return {f"{directory}/{n}": t for n, t in zip(names, targets, strict=False) if t}


def listed(guest: Guest, path: str) -> bool:
    """Whether `path` exists (even as a dangling symlink), from its directory's cached
    listing: most checks look at a few names in the same directories."""
    parent = PurePosixPath(path).parent
    return PurePosixPath(path).name in guest.ls(str(parent))


def is_reg(mode: int) -> bool:
    return mode & 0o170000 == 0o100000
