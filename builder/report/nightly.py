"""`azbuild report OUTPUT_DIR`: the latest build of each template in an output directory,
and what changed against the previous good build of the same template.

The builds are found as `azbuild prune` finds them (a directory holding a manifest.json, at
any depth); the comparison is `azbuild diff`'s (builder/report/diff.py). This module only reads:
the HTML page (builder/report/html.py) and the JUnit file (builder/report/junit.py) are made from
what it returns.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder.errors import UsageError
from builder.housekeeping.prune import scan
from builder.manifest import MANIFEST_FILE
from builder.paths import BOOT_CONSOLE, BUILD_LOG, INSTALL_CONSOLE
from builder.report.diff import Change, compare, manifest_snapshot
from builder.report.summary import SUMMARY_FILE
from builder.report.table import aligned
from builder.sbom import sbom_path

log = logging.getLogger(__name__)

# What the report compares: what the image holds. The inputs (template digest, source,
# azbuild version) say why it may have changed, not what changed.
CONSOLES = {INSTALL_CONSOLE: "install console", BOOT_CONSOLE: "boot console"}
COMPARED = ("packages", "kernels", "kernel arguments", "services", "sizes", "requirements")


@dataclass(frozen=True)
class Build:
    """One build's output directory and its manifest. A build of a several-template run
    that wrote no manifest (not started, or stopped before its preflight) has the fields
    its summary.json entry gives instead (`from_summary`): its directory may hold an
    earlier build's files, which are then not its own."""

    directory: Path
    manifest: dict[str, Any]
    from_summary: bool = False

    @property
    def name(self) -> str:
        return str(self.manifest["template"])

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "unknown"))

    @property
    def ready(self) -> bool | None:
        ready = self.manifest.get("ready")
        return ready if isinstance(ready, bool) else None

    @property
    def good(self) -> bool:
        """Succeeded and ready for Azure: what a later build is compared with."""
        return self.status == "succeeded" and self.ready is True

    @property
    def finished(self) -> datetime:
        return datetime.fromisoformat(str(self.manifest["finished"]))

    @property
    def seconds(self) -> float | None:
        wall = (self.manifest.get("time") or {}).get("wall_seconds")
        return float(wall) if isinstance(wall, (int, float)) else None

    @property
    def steps(self) -> dict[str, float]:
        steps = self.manifest.get("steps") or {}
        return {str(k): float(v) for k, v in steps.items() if isinstance(v, (int, float))}

    @property
    def failure(self) -> dict[str, Any] | None:
        failure = self.manifest.get("failure")
        return failure if isinstance(failure, dict) else None

    @property
    def check(self) -> list[dict[str, Any]]:
        check = self.manifest.get("check")
        return [line for line in check if isinstance(line, dict)] if isinstance(check,
                                                                                list) else []

    @property
    def cache(self) -> list[dict[str, Any]]:
        cache = self.manifest.get("cache")
        return [s for s in cache if isinstance(s, dict)] if isinstance(cache, list) else []

    def files(self) -> dict[str, Path]:
        """The files a reader follows, those that exist: manifest, log, SBOM, consoles."""
        if self.from_summary:
            return {}
        found = {"manifest": self.directory / MANIFEST_FILE, "log": self.directory / BUILD_LOG,
                 "SBOM": sbom_path(self.directory, self.name)}
        for name in self.manifest.get("logs") or []:
            console = name.removeprefix(f"{self.name}.") if isinstance(name, str) else None
            if console in CONSOLES:
                found[CONSOLES[console]] = self.directory / name
        return {label: path for label, path in found.items() if path.is_file()}


@dataclass(frozen=True)
class Row:
    """One template: its latest build and what changed against its previous good one."""

    latest: Build
    previous_good: Build | None
    changes: list[Change] = field(default_factory=list)
    not_compared: str | None = None  # why there is no comparison, when there is none

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass(frozen=True)
class RunReport:
    output_dir: Path
    generated: datetime
    rows: list[Row]
    # Directories that look like builds but could not be read, and why.
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def collect(output_dir: Path, now: datetime | None = None) -> RunReport:
    """The report of `output_dir`: one row per template, by name."""
    if not output_dir.is_dir():
        what = "does not exist" if not output_dir.exists() else "is not a directory"
        raise UsageError(f"output directory {output_dir} {what}",
                         hint="give the directory that holds the builds' output directories")
    found = scan(output_dir)
    builds: list[Build] = []
    unreadable = [(path, why) for path, why in found.left_alone if "never removed" in why]
    for entry in found.builds:
        try:
            manifest = json.loads((entry.path / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            unreadable.append((entry.path, f"cannot read {MANIFEST_FILE}: {exc}"))
            continue
        builds.append(Build(entry.path, manifest))
    if (output_dir / MANIFEST_FILE).is_file():  # one build's own directory
        builds += _one_build(output_dir, unreadable)
    builds += _without_manifest(output_dir)
    by_name: dict[str, list[Build]] = {}
    for build in builds:
        by_name.setdefault(build.name, []).append(build)
    rows = [_row(sorted(group, key=_age, reverse=True)) for _, group in sorted(by_name.items())]
    return RunReport(output_dir, now or datetime.now(UTC), rows, unreadable)


def _one_build(directory: Path, unreadable: list[tuple[Path, str]]) -> list[Build]:
    try:
        return [Build(directory, json.loads((directory / MANIFEST_FILE).read_text()))]
    except (OSError, ValueError) as exc:
        unreadable.append((directory, f"cannot read {MANIFEST_FILE}: {exc}"))
        return []


def _without_manifest(output_dir: Path) -> list[Build]:
    """The builds that summary.json files under `output_dir` list without a manifest."""
    found = []
    for summary in sorted(output_dir.rglob(SUMMARY_FILE)):
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
            finished = str(data["finished"])
            entries = [e for e in data["builds"] if e.get("manifest") is None]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read %s: %s", summary, exc)
            continue
        for entry in entries:
            status = str(entry.get("status", "failed"))
            error = entry.get("error") or (
                "the run was stopped before its turn" if status == "not started"
                else f"{status} (exit code {entry.get('exit_code')}) before it wrote a "
                     "manifest")
            found.append(Build(Path(str(entry.get("output_directory", summary.parent))), {
                "template": str(entry.get("name")), "status": status, "finished": finished,
                "started": str(data.get("started", "")), "build_id": "-",
                "failure": {"step": entry.get("failing_step"), "error": error},
                "time": {"wall_seconds": entry.get("duration_seconds")}}, from_summary=True))
    return found


def _age(build: Build) -> tuple[datetime, str, str]:
    """Newest last; builds that finished in the same second by start, then by path."""
    return build.finished, str(build.manifest.get("started", "")), str(build.directory)


def _row(newest_first: list[Build]) -> Row:
    latest = newest_first[0]
    previous = next((b for b in newest_first[1:] if b.good), None)
    if previous is None:
        return Row(latest, None, not_compared="no earlier good build of this template")
    if latest.status != "succeeded":
        why = {"not started": "this build did not start", "interrupted":
               "this build was interrupted"}.get(latest.status, "this build failed")
        return Row(latest, previous, not_compared=why)
    try:
        comparison = compare(manifest_snapshot(str(previous.directory), previous.manifest),
                             manifest_snapshot(str(latest.directory), latest.manifest))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        log.warning("cannot compare %s with %s: %s", latest.directory, previous.directory, exc)
        return Row(latest, previous, not_compared=f"a manifest is not as azbuild writes it "
                                                  f"({exc})")
    changes = [c for c in comparison.changes if c.section in COMPARED]
    return Row(latest, previous, changes)


def summary_table(report: RunReport) -> str:
    """What `azbuild report` prints: one line per template."""
    rows = [("template", "status", "ready", "seconds", "changes", "directory")]
    for row in report.rows:
        build = row.latest
        ready = "-" if build.ready is None else "yes" if build.ready else "no"
        seconds = "-" if build.seconds is None else f"{build.seconds:.1f}"
        changes = row.not_compared or (f"{len(row.changes)}" if row.changes else "none")
        rows.append((build.name, build.status, ready, seconds, changes, str(build.directory)))
    lines = aligned(rows)
    good = sum(row.latest.status == "succeeded" for row in report.rows)
    lines.append(f"{good} of {len(report.rows)} templates' latest builds succeeded; "
                 f"{sum(row.changed for row in report.rows)} changed")
    return "\n".join(lines)
