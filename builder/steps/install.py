"""The unattended install from an installer ISO, ending with the installed disk.

The ISO was fetched and verified by the fetch step. Its installer kernel and initrd
are copied out, the answer files reach the installer the way it looks for them (an OEMDRV or
CIDATA CD-ROM, or an archive appended to the initrd), and QEMU boots the kernel
directly with the ISO attached as a CD-ROM. The install phase runs with
on_reboot=destroy, so the installer powering off or rebooting at its end stops
the domain; the serial console is watched for the installer's fatal signs all
along, so a failed install stops the build at once instead of at install.timeout.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from builder.answers import answer_media, installer_failure_regex
from builder.cache.chain import adopt_stored_keys, record_stage, start_from_longest_prefix
from builder.cache.store import Entry, StageCache, StoredKeys
from builder.context import BuildContext, timed_guest_wait
from builder.errors import BuildError, indent
from builder.image.initrd import append_to_initrd
from builder.image.iso import extract_files
from builder.local_facts import read_iso_facts
from builder.manifest import source_digest
from builder.paths import INSTALL_CONSOLE
from builder.plan import ANSWER_VOLUME_FILE, CMDLINE_FILE, INITRD_FILE
from builder.redact import redact
from builder.run import run
from builder.vm.guest import runtime, start_domain
from builder.vm.libvirt import Disk, RunningDomain
from builder.vm.qemu_img import create_qcow2_argv
from builder.vm.volume import write_volume

log = logging.getLogger(__name__)

FAILURE_CONTEXT_LINES = 40
# How the install phase may end: the installer powers off, or reboots (which
# on_reboot=destroy turns into the domain stopping).
_FINISHED = ("the guest powered off", "the domain was destroyed")


def install(ctx: BuildContext, stack: ExitStack) -> None:
    """Run the installer to completion; afterwards ctx.disk holds the installed system:
    a qcow2 overlay on the stage-cache entry of this install (made now, or found), or
    with --no-cache a raw disk of its own."""
    assert ctx.work_dir is not None and ctx.accelerator is not None
    source = ctx.template.source
    assert source.checksum is not None
    iso = ctx.source_file  # fetched and verified by the fetch step
    assert iso is not None
    ctx.source_digest = source_digest(iso, source.checksum)
    # The plan anew with the ISO's facts, now that it is here (it may not have been).
    ctx.plan = ctx.the_plan.with_iso(read_iso_facts(iso, ctx.template))
    if not ctx.options.use_cache:
        ctx.disk = ctx.work_dir / "disk.raw"
        with open(ctx.disk, "xb") as disk:
            disk.truncate(ctx.template.vm.disk_size)  # sparse: the installer writes what it uses
        _run_installer(ctx, iso, ctx.disk, "raw")
        return
    key = ctx.plan.install_key(ctx.source_digest)
    cache = StageCache()
    entry = cache.lookup(key)
    stored = False
    if entry is None:
        with cache.locked(key):
            entry = cache.lookup(key)  # another build may have made it while we waited
            if entry is None:
                entry = _install_into_cache(ctx, cache, key, iso)
                stored = True
    if stored:
        record_stage(ctx, "install", entry, "stored")
    else:
        log.info("the install is cached (entry %s, made in %.0f s): skipping the installer",
                 key[:12], entry.seconds)
        adopt_stored_keys(ctx, cache, key)
        record_stage(ctx, "install", entry, "hit")
    start_from_longest_prefix(ctx, stack, cache, key)


def _install_into_cache(ctx: BuildContext, cache: StageCache, key: str, iso: Path) -> Entry:
    """Install straight onto a qcow2 file in the cache directory, then keep it as the
    entry `key` with this build's SSH keys. Called with the key's lock held."""
    assert ctx.client_key is not None and ctx.host_key is not None
    iso_name = str(ctx.template.source.iso)
    tmp = cache.temp_path(key)
    try:
        run(create_qcow2_argv(tmp, ctx.template.vm.disk_size))
        started = time.monotonic()
        _run_installer(ctx, iso, tmp, "qcow2")
        return cache.store(
            key, tmp, parent=None, kind="install",
            description=f"install {ctx.distro.label} from {Path(iso_name).name}",
            template=ctx.template.name, seconds=time.monotonic() - started,
            keys=StoredKeys(client=ctx.client_key, host=ctx.host_key))
    finally:
        tmp.unlink(missing_ok=True)


def _run_installer(ctx: BuildContext, iso: Path, disk: Path,
                   disk_format: Literal["raw", "qcow2"]) -> None:
    """Boot the installer on the empty `disk` and wait until it has finished: the plan's
    answer files, kernel command line and install domain, with this build's keys."""
    assert ctx.work_dir is not None
    plan = ctx.the_plan
    assert plan.facts.iso is not None
    installer = plan.facts.iso.installer
    log.info("installer kernel %s, initrd %s (from %s)", installer.kernel, installer.initrd,
             installer.source)
    rt = runtime(ctx, iso)
    boot = plan.installer_boot(rt)
    extract_files(iso, {installer.kernel: boot.kernel, installer.initrd: rt.work_dir / INITRD_FILE})

    files = plan.answer_files(ctx.generated())
    media = answer_media(ctx.distro, files)
    if media.kind == "initrd":
        assert boot.initrd is not None
        append_to_initrd(rt.work_dir / INITRD_FILE, media.files, boot.initrd)
        log.info("answer file(s) %s appended to the installer initrd", ", ".join(media.files))
    else:
        assert media.label is not None
        write_volume(rt.work_dir / ANSWER_VOLUME_FILE, media.label, media.files)
        log.info("answer file(s) %s on a CD-ROM labelled %s", ", ".join(media.files),
                 media.label)
    ctx.record_fed([*files, CMDLINE_FILE])
    log.info("installer kernel command line: %s", redact(boot.cmdline))
    # A failed build keeps this console in the output directory (see the pipeline).
    spec = plan.install_domain(rt, Disk(disk, format=disk_format), ctx.work_dir / INSTALL_CONSOLE)
    with ExitStack() as phase:
        domain = start_domain(ctx, phase, spec)
        with timed_guest_wait(ctx):
            _wait_for_installer(ctx, domain)
    log.info("the installer finished (%s)", domain.stop_reason)


def _wait_for_installer(ctx: BuildContext, domain: RunningDomain) -> None:
    """Until the installer stops the domain; fail at once on a fatal sign on the console."""
    timeout = ctx.template.install.timeout
    fatal = installer_failure_regex(ctx.distro)
    match = domain.serial.wait_for(fatal, timeout, stop=domain.attention,
                                   what=f"the {ctx.distro.label} installer to finish")
    domain.check_connection()
    if match is not None:
        raise BuildError(
            f"the {ctx.distro.label} installer failed: its console says\n"
            + indent(_context_around(domain.serial.text(), match.group(0)))
            + f"\nthe full installer console is kept in "
            f"{ctx.output_dir / _kept_log_name(ctx)}",
            hint="fix the cause above (the answer file, install.packages, the ISO) and "
            "build again",
        )
    if not domain.stopped_event.is_set() and domain.is_running():
        raise BuildError(
            f"the {ctx.distro.label} installer did not finish within install.timeout "
            f"({timeout:.0f}s); the end of its console:\n"
            + indent(domain.serial.tail(FAILURE_CONTEXT_LINES) or "(empty)"),
            hint="raise install.timeout if the install is just slow (TCG is), or look for "
            f"a prompt waiting for input in {ctx.output_dir / _kept_log_name(ctx)}",
        )
    reason = domain.stop_reason or "the domain stopped"
    if reason not in _FINISHED:
        raise domain.stopped_error("installing", FAILURE_CONTEXT_LINES)


def _context_around(text: str, matched: str) -> str:
    """The failure line with the installer's lines after it (d-i and Anaconda explain
    below the marker), at most FAILURE_CONTEXT_LINES lines."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if matched in line:
            return "\n".join(lines[max(0, index - 2): index + FAILURE_CONTEXT_LINES])
    return "\n".join(lines[-FAILURE_CONTEXT_LINES:])


def _kept_log_name(ctx: BuildContext) -> str:
    return ctx.kept_console(INSTALL_CONSOLE).name
