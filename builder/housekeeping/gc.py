"""Finding (and with --yes removing) what killed builds left behind.

Conventions this module defines:
- every build's work directory under `paths.work_root()` holds `owner.pid`:
  the owning process's PID on the first line and its start time (clock ticks
  since boot, from /proc/PID/stat) on the second, so a recycled PID is not
  mistaken for the owner (`claim_work_dir` writes it);
- every domain azbuild starts is named `azbuild-...` and carries azbuild
  metadata naming the owning PID (see builder/vm/libvirt.py).
A work directory or domain is leftover when its owner is gone. A domain with
the prefix but no metadata is leftover too (nothing else should use the name).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from builder.cache.store import StageCache
from builder.errors import indent
from builder.housekeeping.salvage import salvage
from builder.locks import OUTPUT_LOCK_PATTERN, remove_stale_locks
from builder.paths import work_root
from builder.vm.libvirt import (
    FoundDomain,
    connected,
    connection_uri,
    list_azbuild_domains,
    process_alive,
    process_start_ticks,
    remove_domain,
)

log = logging.getLogger(__name__)

OWNER_FILE = "owner.pid"


def claim_work_dir(work_dir: Path, pid: int | None = None) -> None:
    """Mark `work_dir` as owned by `pid` (default: this process)."""
    pid = pid or os.getpid()
    ticks = process_start_ticks(pid)
    text = f"{pid}\n{ticks}\n" if ticks is not None else f"{pid}\n"
    tmp = work_dir / (OWNER_FILE + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, work_dir / OWNER_FILE)


def read_owner(work_dir: Path) -> tuple[int, int | None] | None:
    """(pid, start ticks or None) from `owner.pid`, or None when absent or unreadable."""
    try:
        lines = (work_dir / OWNER_FILE).read_text().split()
        pid = int(lines[0])
        ticks = int(lines[1]) if len(lines) > 1 else None
    except (OSError, ValueError, IndexError):
        return None
    return pid, ticks


def _owner_alive(pid: int, ticks: int | None) -> bool:
    return pid > 0 and process_alive(pid, ticks)


def leftover_work_dirs(root: Path | None = None) -> list[tuple[Path, int]]:
    """Work directories whose owning process is gone, with that PID."""
    root = root or work_root()
    found: list[tuple[Path, int]] = []
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.is_symlink():
            continue
        owner = read_owner(entry)
        if owner is None:
            log.debug("gc: %s has no readable %s; left alone", entry, OWNER_FILE)
            continue
        if not _owner_alive(*owner):
            found.append((entry, owner[0]))
    return found


def _leftover_domains(conn: Any) -> list[tuple[FoundDomain, str]]:
    found: list[tuple[FoundDomain, str]] = []
    for domain in list_azbuild_domains(conn):
        meta = domain.metadata
        if meta is None:
            found.append((domain, "no azbuild metadata"))
        elif not _owner_alive(meta.pid, meta.pid_start):
            found.append((domain, f"pid {meta.pid} gone, template {meta.template}"))
    return found


def collect_garbage(remove: bool, connect: str | None) -> list[str]:
    """Lines describing leftover azbuild domains and work directories; with `remove`,
    destroy/remove them too. The CLI prints the lines."""
    lines: list[str] = []
    uri = connection_uri(connect)
    with connected(uri) as conn:
        for domain, why in _leftover_domains(conn):
            if remove:
                remove_domain(domain)
                lines.append(f"domain {domain.name} ({why}): destroyed")
            else:
                lines.append(f"domain {domain.name} ({why}): leftover")
    for path, pid in leftover_work_dirs():
        if remove:
            kept = salvage(path)
            shutil.rmtree(path, ignore_errors=True)
            lines.append(f"work dir {path} (pid {pid} gone): removed")
            lines += indent(kept, "  ").splitlines()
        else:
            lines.append(f"work dir {path} (pid {pid} gone): leftover")
    # What a build killed with SIGKILL leaves besides its work directory: its output
    # directory's lock file and a half-made stage-cache entry.
    if remove:
        for path in remove_stale_locks(work_root(), OUTPUT_LOCK_PATTERN):
            lines.append(f"lock file {path} (no build holds it): removed")
    for path in StageCache().remove_stale_temps(dry_run=not remove):
        state = "removed" if remove else "leftover"
        lines.append(f"stage cache temp {path} (left by a killed build): {state}")
    if not lines:
        lines.append(f"nothing to collect (libvirt {uri}, work dirs under {work_root()})")
    elif not remove:
        lines.append("run again with --yes to remove these")
    return lines
