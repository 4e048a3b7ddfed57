"""JUnit XML of builds (`azbuild build --junit FILE`, `azbuild report --junit FILE`): one
test case per build, failing with the failing step, the error and the tail of its log, so
that GitLab, Azure Pipelines and GitHub show a nightly run's builds as tests.

The format is the one those tools and Jenkins read (testsuites > testsuite > testcase, with
failure and skipped elements, times in seconds), checked in the tests against a real
consumer (junitparser).
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from builder.image.disk import write_named_output
from builder.manifest import MANIFEST_FILE
from builder.paths import BUILD_LOG
from builder.redact import redact

log = logging.getLogger(__name__)

SUITE = "azbuild"
LOG_TAIL_LINES = 40
# Characters XML 1.0 cannot carry (a console's escape codes and NULs): dropped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True)
class Case:
    """One build as a test case. `failure` and `skipped` are None for a build that
    succeeded."""

    name: str
    seconds: float
    failure: str | None = None  # the message: step and error
    details: str = ""  # the failure's text: hint, log tail
    skipped: str | None = None
    output: str = ""  # where the build's outputs are


def case_of_manifest(directory: Path, manifest: dict[str, Any], log_file: Path | None) -> Case:
    """The test case of a build that wrote a manifest."""
    seconds = float((manifest.get("time") or {}).get("wall_seconds") or 0.0)
    name = str(manifest.get("template", directory.name))
    output = f"output directory: {directory}"
    failure = manifest.get("failure")
    if manifest.get("status") == "succeeded" and manifest.get("ready") is not False:
        return Case(name, seconds, output=output)
    if manifest.get("status") == "not started":
        return Case(name, seconds, skipped="not started: the run was stopped before its turn",
                    output=output)
    if isinstance(failure, dict):
        step, error = failure.get("step"), failure.get("error")
        message = f"failed in step {step}: {error}" if step else str(error)
        hint = f"hint: {failure['hint']}\n" if failure.get("hint") else ""
    else:
        message, hint = "the image is not ready for Azure", ""
    return Case(name, seconds, failure=message, details=hint + log_tail(log_file),
                output=output)


def case_of_output_dir(directory: Path, build_id: str) -> Case | None:
    """The case of build `build_id` from its output directory; None when the manifest there
    is missing or an earlier build's (this one stopped before writing its own)."""
    manifest = _read_json(directory / MANIFEST_FILE)
    if manifest is None or manifest.get("build_id") != build_id:
        return None
    return case_of_manifest(directory, manifest, directory / BUILD_LOG)


def case_of_error(name: str, message: str) -> Case:
    """A build that stopped before it wrote a manifest (an invalid input, an interrupt):
    the error is all there is (a build.log beside an older manifest is the older build's)."""
    return Case(name, 0.0, failure=message)


def cases_of_summary(summary: Path) -> list[Case]:
    """One case per build of a several-template run's summary.json (none when it was not
    written: the run stopped before its end, and says why)."""
    data = _read_json(summary)
    if data is None:
        log.warning("no %s: the JUnit file lists no build", summary)
        return []
    cases = []
    for entry in data.get("builds", []):
        directory = Path(entry["output_directory"])
        manifest = _read_json(Path(entry["manifest"])) if entry.get("manifest") else None
        if manifest is not None:
            cases.append(case_of_manifest(directory, manifest, directory / BUILD_LOG))
        elif entry["status"] == "not started":
            cases.append(Case(entry["name"], 0.0, skipped="not started: the run was stopped "
                              "before its turn"))
        else:
            error = entry.get("error") or f"{entry['status']} (exit code {entry['exit_code']})" \
                " before it wrote a manifest"
            cases.append(Case(entry["name"], float(entry.get("duration_seconds") or 0.0),
                              failure=error, output=f"output directory: {directory}"))
    return cases


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log, introduced by its path ('' without a log)."""
    if path is None or not path.is_file():
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}\n"
    tail = text.splitlines()[-lines:]
    return f"last {len(tail)} lines of {path}:\n" + "\n".join(tail) + "\n"


def junit_xml(cases: Iterable[Case], timestamp: datetime | None = None) -> str:
    """The JUnit XML document of `cases`, secrets masked."""
    cases = list(cases)
    when = (timestamp or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    total = sum(case.seconds for case in cases)
    counts = {"tests": str(len(cases)),
              "failures": str(sum(case.failure is not None for case in cases)),
              "errors": "0", "skipped": str(sum(case.skipped is not None for case in cases)),
              "time": f"{total:.3f}"}
    root = ElementTree.Element("testsuites", {"name": SUITE, **counts})
    suite = ElementTree.SubElement(root, "testsuite", {
        "name": SUITE, **counts, "timestamp": when.isoformat(timespec="seconds"),
        "hostname": socket.gethostname()})
    for case in cases:
        element = ElementTree.SubElement(suite, "testcase", {
            "name": _text(case.name), "classname": f"{SUITE}.build",
            "time": f"{case.seconds:.3f}"})
        if case.failure is not None:
            failure = ElementTree.SubElement(element, "failure", {
                "message": _text(case.failure), "type": "BuildFailed"})
            failure.text = _text(case.details or case.failure)
        elif case.skipped is not None:
            ElementTree.SubElement(element, "skipped", {"message": _text(case.skipped)})
        if case.output:
            ElementTree.SubElement(element, "system-out").text = _text(case.output)
    ElementTree.indent(root)
    body = ElementTree.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


def _text(value: str) -> str:
    return _NOT_XML.sub("", redact(value))


def write_junit(target: Path, cases: Iterable[Case]) -> Path:
    """Write the JUnit file atomically (--junit FILE)."""
    write_named_output(target, junit_xml(cases), "--junit")
    log.info("wrote the JUnit file %s", target)
    return target
