"""The build's own disk: a raw copy of the source image, never the source itself."""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from builder.cache.chain import adopt_stored_keys, record_stage, start_from_longest_prefix
from builder.cache.keys import source_key
from builder.cache.store import StageCache, StoredKeys
from builder.context import BuildContext
from builder.errors import UsageError
from builder.image.disk import ImageFormat, copy_sparse, detect_image_format
from builder.image.fetch import resolve_checksum, verify_local_file
from builder.image.inputs import verify_source_image
from builder.manifest import source_digest
from builder.run import run
from builder.units import format_size
from builder.vm.qemu_img import convert_to_raw_argv, raw_to_qcow2_argv, virtual_size

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
        # A 'file:' checksum was read by the fetch step; an inline one is read here.
        expected = ctx.source_checksum or resolve_checksum(checksum, str(source))
        verify_local_file(source, expected, what="disk image")
    image_format = detect_image_format(source)
    verify_source_image(source, image_format, role="source.disk_image")
    ctx.source_digest = source_digest(source, checksum)
    if _caches(ctx):
        _from_cache(ctx, stack, disk, image_format)
        return
    _copy_source(ctx, disk, image_format)


def _caches(ctx: BuildContext) -> bool:
    """A disk-image build goes through the stage cache only when the template has a cache
    point: the source copy alone is cheaper to redo than to keep (docs/cache.md)."""
    if not ctx.options.use_cache or not any(p.cache for p in ctx.template.provision):
        return False
    if ctx.host_key is None:
        log.info("communicator.host_key_file is set: no stage cache for this build (an "
                 "entry keeps the host key azbuild generates)")
        return False
    return True


def _from_cache(ctx: BuildContext, stack: ExitStack, disk: Path,
                image_format: ImageFormat) -> None:
    """The source copy as a stage-cache entry (made now, or found), with this build's SSH
    keys: every build on this chain uses them, as the cached systems trust them."""
    assert ctx.source_digest is not None
    assert ctx.client_key is not None and ctx.host_key is not None
    key = source_key(source_digest=ctx.source_digest, disk_size=ctx.template.vm.disk_size)
    cache = StageCache()
    entry = cache.lookup(key)
    result: Literal["hit", "stored"] = "hit"
    if entry is None:
        with cache.locked(key):
            entry = cache.lookup(key)
            if entry is None:
                started = time.monotonic()
                _copy_source(ctx, disk, image_format)
                tmp = cache.temp_path(key)
                try:
                    run(raw_to_qcow2_argv(disk, tmp))
                    entry = cache.store(
                        key, tmp, parent=None, kind="source",
                        description=f"copy of {ctx.template.source.disk_image}",
                        template=ctx.template.name, seconds=time.monotonic() - started,
                        keys=StoredKeys(client=ctx.client_key, host=ctx.host_key))
                finally:
                    tmp.unlink(missing_ok=True)
                disk.unlink()
                result = "stored"
    if result == "hit":
        adopt_stored_keys(ctx, cache, key)
    record_stage(ctx, "source", entry, result)
    start_from_longest_prefix(ctx, stack, cache, key)


def _copy_source(ctx: BuildContext, disk: Path, image_format: ImageFormat) -> None:
    """The source image as the raw disk `disk`, grown to vm.disk_size (sparse)."""
    source = ctx.template.source.disk_image
    assert source is not None
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


