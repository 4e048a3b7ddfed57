"""`azbuild cache list` and `azbuild cache prune`: the stage cache's entries, and removing
old ones without ever breaking a chain.

An entry removed takes its descendants with it (a child is a qcow2 overlay on its
parent: it is useless without it). An entry some build is making or reading is left
alone, with its ancestors (removing one of them would take it along).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from builder.cache.store import Entry, StageCache
from builder.report.table import aligned
from builder.units import format_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listed:
    entry: Entry
    last_used: float  # epoch seconds

    def to_json(self) -> dict[str, Any]:
        return {**self.entry.to_json(),
                "last_used": _iso(self.last_used)}


def list_entries(cache: StageCache) -> list[Listed]:
    return [Listed(e, cache.last_used(e.key)) for e in cache.entries()]


def table(listed: list[Listed]) -> str:
    if not listed:
        return "the stage cache is empty"
    rows = [("KEY", "KIND", "TEMPLATE", "SIZE", "CREATED", "LAST USED", "DESCRIPTION")]
    for item in listed:
        e = item.entry
        rows.append((e.key[:12], e.kind, e.template, _human(e.size), e.created,
                     _iso(item.last_used), e.description))
    return "\n".join(aligned(rows))


def descendants(key: str, entries: list[Entry]) -> list[str]:
    """`key` and every entry below it, parents before children."""
    children: dict[str, list[str]] = {}
    for e in entries:
        if e.parent is not None:
            children.setdefault(e.parent, []).append(e.key)
    found, queue = [], [key]
    while queue:
        current = queue.pop(0)
        found.append(current)
        queue += sorted(children.get(current, []))
    return found


def plan_prune(listed: list[Listed], *, older_than: float | None, max_size: int | None,
               now: float) -> list[list[str]]:
    """The groups to remove, each an entry and its descendants: first every entry last used
    more than `older_than` seconds ago, then the least recently used until the total
    is at most `max_size` bytes. An entry whose parent is gone goes too."""
    entries = [item.entry for item in listed]
    keys = {e.key for e in entries}
    last_used = {item.entry.key: item.last_used for item in listed}
    size = {e.key: e.size for e in entries}
    removed: set[str] = set()
    groups: list[list[str]] = []

    def take(key: str) -> None:
        group = [k for k in descendants(key, entries) if k not in removed]
        if group:
            groups.append(group)
            removed.update(group)

    for e in entries:
        if e.parent is not None and e.parent not in keys:
            take(e.key)  # an orphan: its backing file is gone
    if older_than is not None:
        for e in sorted(entries, key=lambda e: last_used[e.key]):
            if now - last_used[e.key] > older_than:
                take(e.key)
    if max_size is not None:
        for e in sorted(entries, key=lambda e: last_used[e.key]):
            if sum(size[k] for k in keys - removed) <= max_size:
                break
            take(e.key)
    return groups


def prune(cache: StageCache, *, older_than: float | None, max_size: int | None,
          dry_run: bool = False) -> list[str]:
    """Remove what plan_prune picks (skipping groups a build holds); one line per entry."""
    listed = list_entries(cache)
    lines = []
    for group in plan_prune(listed, older_than=older_than, max_size=max_size,
                            now=time.time()):
        by_key = {item.entry.key: item.entry for item in listed}
        with cache.unless_busy(group) as free:
            if not free:
                lines.append(f"kept {group[0][:12]}: a build is using it or its chain")
                continue
            for key in group:
                entry = by_key[key]
                if not dry_run:
                    cache.remove(key)
                verb = "would remove" if dry_run else "removed"
                lines.append(f"{verb} {key[:12]} ({entry.kind}, {entry.template}, "
                             f"{_human(entry.size)}): {entry.description}")
    if not dry_run:
        for path in cache.remove_stale_temps():
            lines.append(f"removed {path.name}: left by a build killed while storing it")
    if not lines:
        lines.append("nothing to remove")
    return lines


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _human(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return format_size(size)
