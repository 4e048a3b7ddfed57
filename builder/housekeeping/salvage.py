"""What `azbuild gc` keeps of a build whose process died without cleaning up (kill -9,
an OOM kill, a power cut).

At the start of every step the pipeline records, in the build's work directory, the
failed manifest the build would leave if it died in that step. `azbuild gc --yes`
then keeps that build's (already masked) build.log and that manifest in its output
directory before removing the work directory, and removes half-written outputs. The
consoles are not kept: masking them needs the build's secrets, which died with it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import EXIT_FAILED
from builder.image.disk import atomic_output
from builder.manifest import MANIFEST_FILE, Failure, build_manifest
from builder.paths import BUILD_LOG
from builder.redact import redact_data

if TYPE_CHECKING:
    from builder.context import BuildContext

log = logging.getLogger(__name__)

RECORD = "salvage.json"
DIED = ("the azbuild process ended without cleaning up (killed, or the machine "
        "stopped); `azbuild gc --yes` removed what it left")
# atomic_output's temporary names: .<name>.<8 hex digits>.tmp
_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def record(ctx: BuildContext) -> None:
    """Write the manifest this build would leave if its process died now."""
    if ctx.work_dir is None:
        return
    failure = Failure(step=ctx.step or "prepare", error=DIED,
                      hint="build again; the log shows how far it got",
                      exit_code=EXIT_FAILED)
    manifest = build_manifest(ctx, failure, [BUILD_LOG], with_artifacts=False)
    data = {"output_dir": str(ctx.output_dir),
            "manifest": redact_data(manifest.model_dump(mode="json"))}
    tmp = ctx.work_dir / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, ctx.work_dir / RECORD)


def salvage(work_dir: Path) -> list[str]:
    """Keep a dead build's log and failed manifest; lines saying what was kept."""
    try:
        data: dict[str, Any] = json.loads((work_dir / RECORD).read_text())
        output_dir = Path(data["output_dir"])
        manifest: dict[str, Any] = data["manifest"]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # died before its first step: nothing to keep
    lines = []
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for partial in output_dir.iterdir():
            if _PARTIAL.match(partial.name):
                partial.unlink(missing_ok=True)
                lines.append(f"removed the half-written {partial}")
        source = work_dir / BUILD_LOG
        if source.is_file():
            with atomic_output(output_dir / BUILD_LOG, force=True) as tmp:
                shutil.copyfile(source, tmp)
                with tmp.open("a") as f:
                    f.write(f"{datetime.now(UTC):%H:%M:%S} ERROR   {DIED}\n")
        manifest["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        with atomic_output(output_dir / MANIFEST_FILE, force=True) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        lines.append(f"kept its build.log and a failed {MANIFEST_FILE} in {output_dir}")
    except OSError as exc:
        lines.append(f"could not keep its log in {output_dir}: {exc}")
    return lines
