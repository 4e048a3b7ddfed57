"""The build's disk on the stage cache: overlays on entries, the manifest's record, and
the chain read back as one sparse raw disk for the export."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

from builder.manifest import CacheStage
from builder.pipeline import BuildContext
from builder.qemu_img import chain_to_raw_argv, create_overlay_argv
from builder.run import run
from builder.stage_cache import Entry

log = logging.getLogger(__name__)

RAW_DISK = "disk.raw"


def boot_overlay(ctx: BuildContext, entry_path: Path) -> None:
    """A fresh copy-on-write overlay on the cache entry at `entry_path` becomes the build's
    disk: the entry itself is never written (it is read-only, and only ever a backing file)."""
    assert ctx.work_dir is not None
    number = sum(1 for _ in ctx.work_dir.glob("disk-*.qcow2"))
    overlay = ctx.work_dir / f"disk-{number}.qcow2"
    run(create_overlay_argv(entry_path, overlay))
    ctx.disk = overlay
    ctx.disk_format = "qcow2"
    log.info("the build's disk is %s, an overlay on the cache entry %s", overlay.name,
             entry_path)


def record_stage(ctx: BuildContext, stage: str, entry: Entry,
                 result: Literal["hit", "stored", "miss"]) -> None:
    ctx.cache_stages.append(CacheStage(
        stage=stage, description=entry.description, key=entry.key, result=result,
        seconds_saved=entry.seconds if result == "hit" else None))


def flatten_to_raw(ctx: BuildContext) -> None:
    """The overlay chain read as one sparse raw disk in the work directory, which then
    goes the raw export path (a reflinked RAW, the VHD in place)."""
    assert ctx.work_dir is not None and ctx.disk is not None
    if ctx.disk_format == "raw":
        return
    raw = ctx.work_dir / RAW_DISK
    started = time.monotonic()
    run(chain_to_raw_argv(ctx.disk, raw))
    top = ctx.disk
    ctx.disk = raw
    ctx.disk_format = "raw"
    top.unlink(missing_ok=True)
    log.info("read the disk's qcow2 chain into the sparse raw %s in %.1f s", raw,
             time.monotonic() - started)
