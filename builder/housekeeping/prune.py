"""`azbuild prune`: keep the N newest good builds of each template in an output directory.

A build is a directory under the output directory (at any depth, not inside another
build) that holds a manifest.json; its template is the manifest's `template` and its age
the manifest's `finished`. A good build succeeded and was found ready; only good builds
count towards N, so failed nights never push the last good image out. A build that is
not good is kept while it is newer than the newest good build (to diagnose it), and
removed once a good build came after it. Anything else is never removed: a directory
without a readable manifest, a symbolic link, a file. A build is removed whole: renamed
to a hidden name first, so a removal cut short leaves no half build that passes for a
whole one, and the next prune finishes it. Directories the removals leave empty go too,
and so does a summary.json none of whose builds is left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from builder.errors import AzbuildError, UsageError
from builder.manifest import MANIFEST_FILE
from builder.report.summary import SUMMARY_FILE

log = logging.getLogger(__name__)

# A build being removed is renamed to this prefix plus its name, in the same directory.
REMOVING_PREFIX = ".azbuild-pruning-"


@dataclass(frozen=True)
class Build:
    path: Path
    template: str
    finished: datetime
    status: str
    ready: bool | None = None

    @property
    def good(self) -> bool:
        """Succeeded and found ready: an image to keep."""
        return self.status == "succeeded" and self.ready is True

    def state(self) -> str:
        if self.status != "succeeded":
            return self.status
        return "succeeded, ready" if self.ready else "succeeded, not ready" \
            if self.ready is False else "succeeded, not checked"


@dataclass
class Scan:
    """What an output directory holds."""

    builds: list[Build] = field(default_factory=list)
    # Directories left alone, and why: no manifest, an unreadable one, a symbolic link.
    left_alone: list[tuple[Path, str]] = field(default_factory=list)
    # Removals an earlier prune began and did not finish.
    unfinished: list[Path] = field(default_factory=list)
    summaries: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    """One build kept or removed, and why."""

    build: Build
    remove: bool
    reason: str


Action = Literal["keep", "remove", "not removed", "left alone"]


@dataclass(frozen=True)
class Event:
    """What prune did (or, in a dry run, would do) with one path."""

    action: Action
    path: Path
    reason: str
    build: Build | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": str(self.path), "reason": self.reason}
        if self.build is not None:
            data.update(template=self.build.template,
                        finished=self.build.finished.isoformat(),
                        status=self.build.status, ready=self.build.ready)
        return data


@dataclass
class Outcome:
    """Everything prune did, in order, and the counts of its last line."""

    keep: int
    dry_run: bool
    events: list[Event] = field(default_factory=list)
    builds: int = 0
    templates: int = 0
    failures: list[str] = field(default_factory=list)

    def of(self, action: Action) -> list[Event]:
        return [e for e in self.events if e.action == action]

    def last_line(self) -> str:
        counts = (f"{_count(self.builds, 'build')} of {_count(self.templates, 'template')},"
                  f" keeping up to {self.keep} good each")
        removed = len([e for e in self.of("remove") if e.build is not None])
        if self.dry_run:
            return f"dry run: would remove {removed} of {counts}; nothing was removed"
        return f"removed {removed} of {counts}"

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "keep": self.keep,
            "removed": [e.to_json() for e in self.of("remove")],
            "kept": [e.to_json() for e in self.of("keep")],
            "not_removed": [e.to_json() for e in self.of("not removed")],
            "left_alone": [e.to_json() for e in self.of("left alone")],
        }

    def raise_failures(self) -> None:
        """AzbuildError naming what could not be removed, if anything."""
        if self.failures:
            count = len(self.failures)
            raise AzbuildError(
                f"could not remove {count} path{'' if count == 1 else 's'}:\n"
                + "\n".join(f"  - {failure}" for failure in self.failures),
                hint="check the permissions there, then run azbuild prune again",
            )


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
    status, ready = data.get("status"), data.get("ready")
    return Build(directory, template, when, status if isinstance(status, str) else "unknown",
                 ready if isinstance(ready, bool) else None)


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
            if entry.name == SUMMARY_FILE:
                found.summaries.append(entry)
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


def decide(builds: list[Build], keep: int) -> list[Decision]:
    """For each template, newest first (ties: the later path first): the `keep` newest good
    builds kept, and the builds that are not good while newer than the newest good one."""
    by_template: dict[str, list[Build]] = {}
    for build in builds:
        by_template.setdefault(build.template, []).append(build)
    decisions: list[Decision] = []
    for template in sorted(by_template):
        newest_first = sorted(by_template[template], key=lambda b: (b.finished, str(b.path)),
                              reverse=True)
        good = 0
        for build in newest_first:
            if build.good:
                good += 1
                decisions.append(Decision(build, good > keep, _good_reason(good, keep)))
            elif good == 0:
                decisions.append(Decision(build, False, (
                    "not good, and newer than the newest good build: kept to diagnose it"
                    if any(b.good for b in newest_first) else
                    "not good, and no good build of this template: kept to diagnose it")))
            else:
                decisions.append(Decision(build, True, "not good, and a newer good build "
                                          "exists"))
    return decisions


def _good_reason(rank: int, keep: int) -> str:
    if rank == 1:
        return "the newest good build (never removed)"
    if rank <= keep:
        return f"good, one of the {keep} newest good builds"
    return f"good, older than the {keep} newest good builds"


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


def prune(output_dir: Path, keep: int, dry_run: bool,
          on_event: Callable[[Event], None] = lambda event: None) -> Outcome:
    """Remove (or, with `dry_run`, only decide) what goes; `on_event` hears of each path as
    it is handled. What could not be removed is in the outcome's failures."""
    check_arguments(output_dir, keep)
    found = scan(output_dir)
    outcome = Outcome(keep=keep, dry_run=dry_run, builds=len(found.builds),
                      templates=len({build.template for build in found.builds}))

    def said(event: Event) -> None:
        outcome.events.append(event)
        on_event(event)

    failures = outcome.failures
    for path in found.unfinished:
        error = None if dry_run else _remove_tree(path)
        if error is not None:
            failures.append(f"{path}: {error}")
        said(Event("not removed" if error else "remove", path,
                   f"an interrupted prune's{': ' + error if error else ''}"))
    gone: set[Path] = set()
    for decision in decide(found.builds, keep):
        build = decision.build
        if not decision.remove:
            said(Event("keep", build.path, decision.reason, build))
            continue
        error = None if dry_run else remove_build(build.path)
        if error is not None:
            failures.append(f"{build.path}: {error}")
            said(Event("not removed", build.path, f"{decision.reason}; {error}", build))
            continue
        gone.add(build.path.absolute())
        said(Event("remove", build.path, decision.reason, build))
        if not dry_run:
            _remove_empty_parents(build.path, output_dir)
    for summary in found.summaries:
        if _all_builds_gone(summary, gone):
            error = None if dry_run else _remove_file(summary)
            if error is not None:
                failures.append(f"{summary}: {error}")
            said(Event("not removed" if error else "remove", summary,
                       f"none of its builds is left{': ' + error if error else ''}"))
            if not dry_run and error is None:
                _remove_empty_parents(summary, output_dir)
    for path, reason in found.left_alone:
        said(Event("left alone", path, reason))
    return outcome


def describe(event: Event, dry_run: bool) -> str:
    """One line of prune's text output."""
    action = {"remove": "would remove" if dry_run else "removed"}.get(event.action,
                                                                      event.action)
    if event.build is None:
        return _line("NOT removed" if event.action == "not removed" else action,
                     f"{event.path}: {event.reason}")
    build = event.build
    return _line("NOT removed" if event.action == "not removed" else action,
                 f"{build.path}  ({build.template}, finished {build.finished.isoformat()},"
                 f" {build.state()}): {event.reason}")


def _all_builds_gone(summary: Path, gone: set[Path]) -> bool:
    """True when every build a summary.json lists is removed now or was before (a summary
    that cannot be read, or lists none, is not azbuild's to judge: False)."""
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
        listed = [Path(entry["output_directory"]) for entry in data["builds"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return False
    return bool(listed) and all(path in gone or not path.exists() for path in listed)


def _remove_empty_parents(path: Path, top: Path) -> None:
    """Remove the directories above `path` that are left empty, up to `top` (kept)."""
    parent = path.parent
    top = top.absolute()
    while parent.absolute() != top and top in parent.absolute().parents:
        try:
            parent.rmdir()
        except OSError:
            return  # not empty (or not ours to remove): stop here
        parent = parent.parent


def _remove_file(path: Path) -> str | None:
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot remove it: {exc.strerror or exc}"
    return None


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
