"""Export: the RAW and/or fixed VHD, the offline check (with the SBOM), and the manifest."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from builder import manifest
from builder.cache.chain import flatten_to_raw
from builder.context import BuildContext, on_failure
from builder.errors import BuildError, indent
from builder.image.convert import raw_to_vhd
from builder.image.digest import BackgroundDigests
from builder.image.disk import atomic_output, copy_sparse
from builder.offline_check.check import run_check
from builder.paths import BUILD_LOG
from builder.sbom import sbom_document, sbom_path, write_sbom

log = logging.getLogger(__name__)


def export(ctx: BuildContext, stack: ExitStack) -> None:
    """RAW: a sparse, atomic copy. VHD: the build's disk becomes it in place when no RAW
    is kept (constant time), else a sparse copy plus the footer. A disk on the stage
    cache is first read from its qcow2 chain into one sparse raw disk."""
    flatten_to_raw(ctx)
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
    _hash_in_background(ctx, stack)


def _hash_in_background(ctx: BuildContext, stack: ExitStack) -> None:
    """Hash the artifacts while the check runs; the manifest step waits for the digests.
    Both outputs come from the one work disk, so the VHD's digest is derived from the
    RAW's. The thread only reads; a build that fails (other than by its check or publish,
    whose failed manifest still lists the artifacts) stops it before its files go."""
    digests = BackgroundDigests(ctx.artifacts, vhd_holds_raw=True)
    ctx.digests = digests
    on_failure(stack, digests.stop, unless_outputs_kept=True)


def _on_failure_remove(stack: ExitStack, path: Path) -> None:
    """An artifact of a build that then fails (other than by its check) is not an output."""
    on_failure(stack, partial(path.unlink, missing_ok=True), unless_outputs_kept=True)


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
    # The appliance runs on the build's own accelerator decision (never libguestfs's
    # KVM-first fallback, which hangs for many minutes on a broken KVM).
    ctx.report = run_check(image, skip=list(skip),
                           accelerator="kvm" if ctx.accelerator == "kvm" else "tcg",
                           inventory=True)
    write_image_sbom(ctx, stack)
    failed = ctx.report.failed()
    if failed:
        # The pipeline writes the failed manifest (with the check's lines) as it unwinds.
        details = indent(f"{c.id} {c.title}: {c.evidence}" for c in failed)
        raise CheckFailed(
            f"the image {image} is not Azure-ready:\n{details}\n"
            f"it is kept with \"ready\": false in {ctx.output_dir / 'manifest.json'}",
            hint="fix the cause in the template, or skip the requirement with a reason",
        )
    log.info("%s passed the Azure-readiness check", image)


def write_image_sbom(ctx: BuildContext, stack: ExitStack) -> None:
    """<name>.spdx.json from the check's inventory; removed with the image if the build
    then fails (kept with it when only the check fails)."""
    inventory = ctx.report.inventory if ctx.report else None
    if inventory is None:
        return
    target = sbom_path(ctx.output_dir, ctx.template.name)
    document = sbom_document(inventory, ctx.template.name, datetime.now(UTC),
                             namespace_id=ctx.build_id)
    write_sbom(target, document, force=ctx.options.force)
    _on_failure_remove(stack, target)
    log.info("wrote the SBOM %s (%d packages)", target, len(inventory.packages))


def write_manifest(ctx: BuildContext, stack: ExitStack) -> None:
    """The succeeded manifest; the pipeline copies build.log beside it as the build ends.
    The step's time is what was left of the background hashing, plus the writing."""
    if ctx.digests is not None:
        ctx.digests.wait()
        log.info("hashed the artifacts in %.1f s, alongside the check", ctx.digests.seconds)
    manifest.write_manifest(ctx, None, [BUILD_LOG])


__all__ = ["check", "export", "write_manifest"]
