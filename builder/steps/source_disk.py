"""The build's own disk: a raw copy of the source image, never the source itself."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack

from builder.disk import copy_sparse, detect_image_format
from builder.errors import UsageError
from builder.fetch import resolve_checksum, verify_local_file
from builder.inputs import verify_image
from builder.manifest import source_digest
from builder.pipeline import BuildContext
from builder.qemu_img import convert_to_raw_argv, virtual_size
from builder.run import run
from builder.units import format_size

log = logging.getLogger(__name__)


def prepare_disk(ctx: BuildContext, stack: ExitStack) -> None:
    source = ctx.template.source.disk_image
    assert source is not None  # ISO builds make their disk in the install step
    if not source.is_file():
        raise UsageError(f"source.disk_image not found: {source}")
    assert ctx.work_dir is not None
    disk = ctx.work_dir / "disk.raw"
    checksum = ctx.template.source.checksum
    if checksum is not None:
        verify_local_file(source, resolve_checksum(checksum, str(source)), what="disk image")
    image_format = detect_image_format(source)
    verify_image(source, image_format, role="source.disk_image")
    ctx.source_digest = source_digest(source, checksum)
    log.info("copying %s (%s) to the build's disk %s", source, image_format.name, disk)
    if image_format.name == "raw":
        fd = os.open(disk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            copy_sparse(source, fd)
        finally:
            os.close(fd)
    elif image_format.name in ("qcow2", "vhd-fixed", "vhd-dynamic", "vhdx"):
        run(convert_to_raw_argv(source, image_format.qemu_format, disk))
    else:
        raise UsageError(
            f"source.disk_image {source} is a {image_format.name} image, which azbuild "
            "cannot start from; use raw, qcow2, VHD or VHDX"
        )
    virtual = virtual_size(disk, "raw")
    wanted = ctx.template.vm.disk_size
    if wanted < virtual:
        raise UsageError(
            f"vm.disk_size ({format_size(wanted)}) is smaller than the source image "
            f"({format_size(virtual)})",
            hint=f"set vm.disk_size to at least {format_size(virtual)}",
        )
    if wanted > virtual:
        os.truncate(disk, wanted)  # sparse growth; the guest grows its partition itself
    ctx.disk = disk


