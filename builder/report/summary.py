"""summary.json: one entry per build of a several-template `azbuild build`; its model is
its schema (`azbuild schema --summary`), as for manifest.json. docs/manifest.md documents
every field."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from builder import __version__
from builder.image.disk import atomic_output
from builder.manifest import MANIFEST_FILE
from builder.records import Record, document_config

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
BuildStatus = Literal["succeeded", "failed", "interrupted", "not started"]


class BuildEntry(Record):
    """One template's build."""

    name: str = Field(description="the template's name")
    template: str = Field(description="the template file as given on the command line, "
                          "made absolute")
    output_directory: str = Field(description="where the build wrote its outputs (absolute)")
    status: BuildStatus = Field(
        description="'succeeded', 'failed', 'interrupted' (stopped by Ctrl-C or SIGTERM), or "
        "'not started' (the run was stopped before its turn)")
    failing_step: str | None = Field(
        description="the step that failed (the manifest's failure.step); null when the build "
        "succeeded, did not start, or failed before it wrote a manifest")
    error: str | None = Field(description="the manifest's failure.error, secrets masked; null "
                              "as for failing_step")
    exit_code: int | None = Field(description="the build's exit code (0, 1, 2, 3, 130, 143); "
                                  "null when it did not start")
    duration_seconds: float | None = Field(
        ge=0, description="wall time from the build's start to its end; null when it did not "
        "start")
    artifacts: list[str] = Field(
        description="absolute paths of the images the manifest lists")
    ready: bool | None = Field(
        description="the manifest's Azure-readiness verdict; null when the check did not run")
    manifest: str | None = Field(
        description="the build's manifest.json (absolute path); null when it wrote none")


class Summary(Record):
    """summary.json, written by `azbuild build` given several templates, or one with
    --output-dir."""

    model_config = document_config("azbuild build summary")

    azbuild_version: str = Field(description="the azbuild that ran the builds")
    started: str = Field(description="when the command started, ISO 8601 with time zone")
    finished: str = Field(description="when the summary was written, ISO 8601 with time zone")
    wall_seconds: float = Field(ge=0, description="the whole command's wall time")
    jobs: int = Field(ge=1, description="--jobs: how many builds could run at once")
    exit_code: int = Field(description="the command's exit code: 0 every build succeeded, 1 "
                           "one failed, 3 every one that failed could not fetch its input, "
                           "130 Ctrl-C, 143 SIGTERM; one template's: the build's own "
                           "(2 included)")
    builds: list[BuildEntry] = Field(description="one entry per template, in command-line "
                                     "order")


def summary_json_schema() -> dict[str, Any]:
    """The JSON Schema of summary.json, as `azbuild schema --summary` prints it."""
    return Summary.model_json_schema()


def entry_from_manifest(
    *, name: str, template: Path, output_dir: Path, status: BuildStatus,
    exit_code: int | None, duration: float | None, manifest_path: Path | None,
) -> BuildEntry:
    """A build's entry: what the parent saw (status, exit code, duration) and what the
    build's own manifest says (failing step, error, artifacts, ready). `manifest_path`
    None: the build wrote no manifest (it did not start, or stopped before its preflight)."""
    data: dict[str, Any] = {}
    if manifest_path is not None:
        data = json.loads(manifest_path.read_text())
    failure = data.get("failure") or {}
    return BuildEntry(
        name=name,
        template=str(template.absolute()),
        output_directory=str(output_dir),
        status=status,
        failing_step=failure.get("step"),
        error=failure.get("error"),
        exit_code=exit_code,
        duration_seconds=None if duration is None else round(duration, 1),
        artifacts=[str(output_dir / a["file"]) for a in data.get("artifacts", [])],
        ready=data.get("ready"),
        manifest=str(manifest_path) if manifest_path is not None else None,
    )


def manifest_of(output_dir: Path) -> Path | None:
    path = output_dir / MANIFEST_FILE
    return path if path.is_file() else None


def write_summary(summary: Summary, target: Path) -> Path:
    """Write summary.json atomically (replacing an earlier run's)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target, force=True) as tmp:
        tmp.write_text(json.dumps(summary.model_dump(mode="json"), indent=2) + "\n")
    log.info("wrote %s", target)
    return target


def summary_table(summary: Summary) -> str:
    """The table printed at the end: one line per build."""
    rows = [("build", "status", "ready", "seconds", "failing step")]
    for b in summary.builds:
        ready = "-" if b.ready is None else "yes" if b.ready else "no"
        seconds = "-" if b.duration_seconds is None else f"{b.duration_seconds:.1f}"
        rows.append((b.name, b.status, ready, seconds, b.failing_step or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)),
                        row[4]]).rstrip() for row in rows]
    ok = sum(b.status == "succeeded" for b in summary.builds)
    lines.append(f"{ok} of {len(summary.builds)} builds succeeded in {summary.wall_seconds:.1f}s")
    return "\n".join(lines)


def new_summary(**fields: Any) -> Summary:
    return Summary(azbuild_version=__version__, **fields)
