"""`azbuild prune`: keep the N newest builds of each template in an output directory.

A build is a directory under the output directory (at any depth, not inside another
build) that holds a manifest.json; its template is the manifest's `template` and its age
the manifest's `finished`. Anything else is never removed: a directory without a
readable manifest, a symbolic link, a file. A build is removed whole: renamed to a
hidden name first, so a removal cut short leaves no half build that passes for a whole
one, and the next prune finishes it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from builder.errors import AzbuildError, UsageError
from builder.manifest import MANIFEST_FILE

log = logging.getLogger(__name__)

# A build being removed is renamed to this prefix plus its name, in the same directory.
REMOVING_PREFIX = ".azbuild-pruning-"


@dataclass(frozen=True)
class Build:
    path: Path
    template: str
    finished: datetime
    status: str


@dataclass
class Scan:
    """What an output directory holds."""

    builds: list[Build] = field(default_factory=list)
    # Directories left alone, and why: no manifest, an unreadable one, a symbolic link.
    left_alone: list[tuple[Path, str]] = field(default_factory=list)
    # Removals an earlier prune began and did not finish.
    unfinished: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """Every build, by template name and newest first (ties: the later path first), and which
    of them go."""

    builds: list[Build]
    remove: set[Path]


def read_build(directory: Path) -> Build | str:
    """The build in `directory` (which holds manifest.json), or why its manifest is unreadable."""
    manifest = directory / MANIFEST_FILE
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except OSError as exc:
        return f"cannot read {MANIFEST_FILE}: {exc.strerror or exc}"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{MANIFEST_FILE} is not JSON"
    if not isinstance(data, dict):
        return f"{MANIFEST_FILE} is not a JSON object"
    template, finished = data.get("template"), data.get("finished")
    if not isinstance(template, str) or not template:
        return f"{MANIFEST_FILE} names no template"
    try:
        when = datetime.fromisoformat(finished) if isinstance(finished, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        return f"{MANIFEST_FILE} has no finished time (ISO 8601 with a time zone)"
    status = data.get("status")
    return Build(directory, template, when, status if isinstance(status, str) else "unknown")


def scan(output_dir: Path) -> Scan:
    """Every build under `output_dir`, and what is left alone; symbolic links are not followed."""
    found = Scan()
    _scan_into(output_dir, found)
    return found


def _scan_into(directory: Path, found: Scan) -> bool:
    """Scan below `directory`; True when anything but directories without builds is there."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        found.left_alone.append((directory, f"cannot list it: {exc.strerror or exc}"))
        return True
    something = False
    for entry in entries:
        if entry.is_symlink():
            if entry.is_dir():
                found.left_alone.append((entry, "a symbolic link, not followed"))
                something = True
            continue
        if not entry.is_dir():
            continue
        if entry.name.startswith(REMOVING_PREFIX):
            found.unfinished.append(entry)
            something = True
        elif (entry / MANIFEST_FILE).exists() or (entry / MANIFEST_FILE).is_symlink():
            build = read_build(entry)
            if isinstance(build, Build):
                found.builds.append(build)
            else:
                found.left_alone.append((entry, f"{build}; never removed"))
            something = True
        else:
            mark = len(found.left_alone)
            if _scan_into(entry, found):
                something = True
            else:  # said once, for the highest directory with no build anywhere below
                del found.left_alone[mark:]
                found.left_alone.append((entry, f"no {MANIFEST_FILE}: not a build"))
    return something


def plan(builds: list[Build], keep: int) -> Plan:
    """The `keep` newest builds of each template kept, the others removed."""
    by_template: dict[str, list[Build]] = {}
    for build in builds:
        by_template.setdefault(build.template, []).append(build)
    ordered: list[Build] = []
    remove: set[Path] = set()
    for template in sorted(by_template):
        newest_first = sorted(by_template[template], key=lambda b: (b.finished, str(b.path)),
                              reverse=True)
        ordered += newest_first
        remove.update(build.path for build in newest_first[keep:])
    return Plan(builds=ordered, remove=remove)


def check_arguments(output_dir: Path, keep: int) -> None:
    if keep < 1:
        raise UsageError(f"--keep must be at least 1, found {keep}",
                         hint="to remove every build of a template, remove its directories")
    if not output_dir.exists():
        raise UsageError(f"output directory {output_dir} does not exist",
                         hint="give the directory that holds the builds' output directories")
    if not output_dir.is_dir():
        raise UsageError(f"output directory {output_dir} is not a directory")
    if (output_dir / MANIFEST_FILE).exists():
        raise UsageError(
            f"{output_dir} holds a {MANIFEST_FILE}: it is one build's output directory",
            hint=f"give the directory that holds the builds, e.g. {output_dir.absolute().parent}",
        )


def prune(output_dir: Path, keep: int, dry_run: bool) -> Iterator[str]:
    """Lines saying what is kept, removed and left alone, as the removals happen; raises
    AzbuildError at the end when something could not be removed."""
    check_arguments(output_dir, keep)
    found = scan(output_dir)
    decided = plan(found.builds, keep)
    removing = "would remove" if dry_run else "removed"
    failures: list[str] = []
    for path in found.unfinished:
        error = None if dry_run else _remove_tree(path)
        if error is not None:
            failures.append(f"{path}: {error}")
        yield _line(removing if error is None else "NOT removed",
                    f"{path} (an interrupted prune's)" + (f": {error}" if error else ""))
    removed = 0
    for build in decided.builds:
        described = f"{build.path}  ({build.template}, finished {build.finished.isoformat()}," \
            f" {build.status})"
        if build.path not in decided.remove:
            yield _line("keep", described)
            continue
        error = None if dry_run else remove_build(build.path)
        if error is not None:
            failures.append(f"{build.path}: {error}")
            yield _line("NOT removed", f"{described}: {error}")
        else:
            removed += 1
            yield _line(removing, described)
    for path, reason in found.left_alone:
        yield _line("left alone", f"{path}: {reason}")
    templates = len({build.template for build in found.builds})
    counts = (f"{_count(len(found.builds), 'build')} of {_count(templates, 'template')},"
              f" keeping up to {keep} each")
    if dry_run:
        yield f"dry run: would remove {len(decided.remove)} of {counts}; nothing was removed"
    else:
        yield f"removed {removed} of {counts}"
    if failures:
        raise AzbuildError(
            f"could not remove {len(failures)} director{'y' if len(failures) == 1 else 'ies'}:\n"
            + "\n".join(f"  - {failure}" for failure in failures),
            hint="check the permissions there, then run azbuild prune again",
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _line(action: str, text: str) -> str:
    return f"{action.ljust(12)}  {text}"


def remove_build(path: Path) -> str | None:
    """Remove a build's directory whole; None, or what went wrong."""
    hidden = path.parent / (REMOVING_PREFIX + path.name)
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return None  # removed meanwhile (another prune)
    except OSError as exc:
        return f"cannot rename it for removal: {exc.strerror or exc}"
    return _remove_tree(hidden)


def _remove_tree(path: Path) -> str | None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot remove{where}: {exc.strerror or exc} (what is left is in {path})"
    return None
