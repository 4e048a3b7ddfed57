"""The build's disk on the stage cache: overlays on entries, the manifest's record, and
the chain read back as one sparse raw disk for the export."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from builder.cache.keys import provisioner_key
from builder.cache.store import Entry, StageCache
from builder.context import BuildContext, timed_guest_wait
from builder.errors import BuildError
from builder.manifest import CacheStage
from builder.provision import AnyProvisioner, describe
from builder.run import run
from builder.vm.guest import boot_disk, open_session
from builder.vm.qemu_img import chain_to_raw_argv, create_overlay_argv

log = logging.getLogger(__name__)

RAW_DISK = "disk.raw"
POWEROFF_COMMAND = "sleep 1; systemctl poweroff || poweroff || shutdown -h now"
"""Run detached as root at a cache point; the pause lets the SSH command return first."""
ACPI_GRACE_SECONDS = 60.0


def start_from_longest_prefix(ctx: BuildContext, stack: ExitStack, cache: StageCache,
                              root_key: str) -> None:
    """With the first stage's entry `root_key` in hand: the keys of the provisioners'
    chain, the last cache point whose entry is intact (or the first stage), held for the
    build and booted as an overlay."""
    ctx.chain_keys = chain_keys(root_key, ctx.template.provision)
    start_key = root_key
    found = longest_cached_prefix(cache, ctx.chain_keys, ctx.template.provision)
    if found is not None:
        done, entry = found
        log.info("provisioners 1..%d are cached (entry %s)", done, entry.key[:12])
        record_stage(ctx, f"provision {done}", entry, "hit")
        ctx.provision_start = done
        start_key = entry.key
    use_entry(ctx, stack, cache, start_key)


def chain_keys(root_key: str, provisioners: Sequence[AnyProvisioner]) -> list[str]:
    """The key after each provisioner: each from the one before and its definition."""
    keys: list[str] = []
    key = root_key
    for provisioner in provisioners:
        key = provisioner_key(key, provisioner)
        keys.append(key)
    return keys


def longest_cached_prefix(cache: StageCache, keys: list[str],
                          provisioners: Sequence[AnyProvisioner]) -> tuple[int, Entry] | None:
    """The last cache point with an intact entry (and chain): how many provisioners it
    holds, and the entry; None when no cache point is cached."""
    for index in reversed(range(len(provisioners))):
        if provisioners[index].cache:
            entry = cache.lookup(keys[index])
            if entry is not None:
                return index + 1, entry
    return None


def adopt_stored_keys(ctx: BuildContext, cache: StageCache, key: str) -> None:
    """The cached system trusts the client key of the build that made it and presents
    that build's host key: this build uses both instead of its own."""
    keys = cache.load_keys(key)
    ctx.client_key, ctx.host_key = keys.client, keys.host
    ctx.host_key_line = keys.host.public_line


def use_entry(ctx: BuildContext, stack: ExitStack, cache: StageCache, key: str) -> None:
    """Hold the entry `key` until the build ends (`azbuild cache prune` leaves it alone)
    and make an overlay on it the build's disk."""
    stack.enter_context(cache.in_use(key))
    if not cache.entry_path(key).is_file():
        raise BuildError(f"the stage-cache entry {key[:12]} was removed as the build began",
                         hint="build again (azbuild cache prune ran at the same moment)")
    ctx.cache_parent = key
    boot_overlay(ctx, cache.entry_path(key))


def store_cache_point(ctx: BuildContext, stack: ExitStack, index: int) -> None:
    """After the provisioner at `index` (cache = true): power the guest off cleanly, keep
    its disk as an entry on the previous one, and boot on from a new overlay on it."""
    key = ctx.chain_keys[index]
    stage = f"provision {index + 1}"
    cache = StageCache()
    with cache.locked(key):
        found = cache.lookup(key)
        if found is not None:
            # Another build made it meanwhile: this one goes on with its own disk.
            record_stage(ctx, stage, found, "miss")
            return
        power_off(ctx)
        assert ctx.disk is not None and ctx.cache_parent is not None
        parent = cache.sidecar(ctx.cache_parent)
        made_in = time.monotonic() - ctx.stage_started + (parent.seconds if parent else 0.0)
        tmp = cache.temp_path(key)
        try:
            _move(ctx.disk, tmp)
            entry = cache.store(
                key, tmp, parent=ctx.cache_parent, kind="provision",
                description=describe(ctx.template.provision[index]),
                template=ctx.template.name, seconds=made_in)
        finally:
            tmp.unlink(missing_ok=True)
    record_stage(ctx, stage, entry, "stored")
    use_entry(ctx, stack, cache, key)
    boot_disk(ctx, stack)
    open_session(ctx, stack, ctx.template.communicator.timeout)


def power_off(ctx: BuildContext) -> None:
    """The guest powers itself off (then ACPI); never forced, which could leave a dirty
    filesystem in the cache entry."""
    session, domain = ctx.session, ctx.domain
    assert session is not None and domain is not None
    timeout = ctx.template.shutdown.timeout
    log.info("cache point: powering the guest off to keep its disk")
    session.run_detached(POWEROFF_COMMAND, sudo=True)
    with timed_guest_wait(ctx):
        stopped = domain.wait_stopped(timeout)
        if not stopped:
            domain.shutdown()
            stopped = domain.wait_stopped(ACPI_GRACE_SECONDS, "the guest to power off after ACPI")
    session.close()
    if not stopped:
        raise BuildError(
            f"the guest did not power off at the cache point within shutdown.timeout "
            f"({timeout:.0f}s) nor after an ACPI shutdown; not forcing it off",
            hint="raise shutdown.timeout, or check what keeps the guest from powering off")
    domain.destroy()  # already stopped: only forgets it


def _move(source: Path, target: Path) -> None:
    """The overlay into the cache directory: a rename on one filesystem, else a copy
    (the qcow2 names its backing file by absolute path, so it stays valid)."""
    try:
        os.replace(source, target)
    except OSError:
        shutil.copyfile(source, target)
        source.unlink()


def boot_overlay(ctx: BuildContext, entry_path: Path) -> None:
    """A fresh copy-on-write overlay on the cache entry at `entry_path` becomes the build's
    disk: the entry itself is never written (it is read-only, and only ever a backing file)."""
    assert ctx.work_dir is not None
    number = sum(1 for _ in ctx.work_dir.glob("disk-*.qcow2"))
    overlay = ctx.work_dir / f"disk-{number}.qcow2"
    run(create_overlay_argv(entry_path, overlay))
    ctx.disk = overlay
    ctx.disk_format = "qcow2"
    ctx.stage_started = time.monotonic()
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
