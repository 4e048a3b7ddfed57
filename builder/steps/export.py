"""Export: the RAW and/or fixed VHD, the offline check, and the manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder import __version__
from builder.check import run_check
from builder.convert import raw_to_vhd
from builder.disk import allocated_bytes, atomic_output, copy_sparse
from builder.errors import BuildError
from builder.pipeline import BuildContext
from builder.redact import redact, redact_data

log = logging.getLogger(__name__)


def export(ctx: BuildContext, stack: ExitStack) -> None:
    """RAW: a sparse, atomic copy. VHD: the build's disk becomes it in place when no RAW
    is kept (constant time), else a sparse copy plus the footer."""
    assert ctx.disk is not None
    formats = ctx.template.output.formats
    force = ctx.options.force
    if "raw" in formats:
        target = ctx.artifact_path("raw")
        with atomic_output(target, force=force) as tmp:
            fd = os.open(tmp, os.O_WRONLY)
            try:
                copy_sparse(ctx.disk, fd)
            finally:
                os.close(fd)
        _on_failure_remove(stack, target)
        ctx.artifacts["raw"] = target
        log.info("exported RAW %s", target)
    if "vhd" in formats:
        target = ctx.artifact_path("vhd")
        # The work disk is not an output: it becomes the VHD in place (constant time).
        raw_to_vhd(ctx.disk, target, keep_raw=False, force=force)
        _on_failure_remove(stack, target)
        ctx.artifacts["vhd"] = target
        log.info("exported fixed VHD %s", target)


def _on_failure_remove(stack: ExitStack, path: Path) -> None:
    """An artifact of a build that then fails (other than by its check) is not an output."""

    def cleanup(exc_type: type[BaseException] | None, exc: BaseException | None,
                tb: object) -> bool:
        if exc_type is not None and not getattr(exc, "keep_outputs", False):
            path.unlink(missing_ok=True)
        return False

    stack.push(cleanup)


class CheckFailed(BuildError):
    """The image was built but is not Azure-ready: it stays for examination."""

    keep_outputs = True


def check(ctx: BuildContext, stack: ExitStack) -> None:
    """Run `azbuild check` on the image: R01/R02 from the bytes, the rest offline."""
    skip = dict(ctx.template.azure.skip)
    image = ctx.artifacts.get("vhd") or ctx.artifacts["raw"]
    if "vhd" not in ctx.artifacts:
        skip.setdefault("R01", "RAW output only: no VHD was asked for")
        skip.setdefault("R02", "RAW output only: no VHD was asked for")
    ctx.report = run_check(image, skip=list(skip))
    failed = ctx.report.failed()
    if failed:
        write_manifest(ctx, stack)
        details = "\n".join(f"    {c.id} {c.title}: {c.evidence}" for c in failed)
        raise CheckFailed(
            f"the image {image} is not Azure-ready:\n{details}\n"
            f"it is kept with \"ready\": false in {ctx.output_dir / 'manifest.json'}",
            hint="fix the cause in the template, or skip the requirement with a reason",
        )
    log.info("%s passed the Azure-readiness check", image)


def write_manifest(ctx: BuildContext, stack: ExitStack) -> None:
    data = manifest(ctx)
    target = ctx.output_dir / "manifest.json"
    with atomic_output(target, force=True) as tmp:
        tmp.write_text(redact(json.dumps(data, indent=2)) + "\n")
    assert ctx.work_dir is not None
    build_log = ctx.work_dir / "build.log"
    if build_log.exists():
        with atomic_output(ctx.output_dir / "build.log", force=True) as tmp:
            shutil.copyfile(build_log, tmp)
    log.info("wrote %s", target)


def manifest(ctx: BuildContext) -> dict[str, Any]:
    template = ctx.template
    finished = datetime.now(UTC)
    wall = (finished - ctx.started).total_seconds()
    artifacts = []
    for fmt, path in ctx.artifacts.items():
        artifacts.append({
            "file": path.name,
            "format": "vhd-fixed" if fmt == "vhd" else "raw",
            "size": path.stat().st_size,
            "allocated": allocated_bytes(path),
            "sha256": sha256_file(path),
        })
    data: dict[str, Any] = {
        "template": template.name,
        "template_sha256": ctx.loaded.digest(),
        "distro": {"name": template.distro.name, "version": template.distro.version,
                   "label": ctx.distro.label},
        "azbuild_version": __version__,
        "started": ctx.started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "accelerator": {"used": ctx.accelerator, "reason": ctx.accelerator_reason},
        "firmware": template.vm.firmware,
        "provisioning": template.azure.provisioning,
        "artifacts": artifacts,
        "skipped_requirements": dict(template.azure.skip),
        "ready": ctx.report.ready if ctx.report else None,
        "check": ctx.report.to_dict()["checks"] if ctx.report else None,
        "publish": ctx.published,
        "steps": dict(ctx.timer.timings),
        "time": {
            "wall_seconds": round(wall, 1),
            "waiting_on_guest_seconds": round(ctx.guest_seconds, 1),
            "azbuild_seconds": round(wall - ctx.guest_seconds, 1),
        },
    }
    redacted: dict[str, Any] = redact_data(data)
    return redacted


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(4 * 1024 * 1024)
        view = memoryview(buffer)
        while count := f.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


__all__ = ["check", "export", "manifest", "write_manifest"]
