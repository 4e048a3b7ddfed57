"""The unattended install from an installer ISO, ending with the installed disk.

The ISO is fetched and verified, its installer kernel and initrd are copied out,
the answer files reach the installer the way it looks for them (an OEMDRV or
CIDATA CD-ROM, or an archive appended to the initrd), and QEMU boots the kernel
directly with the ISO attached as a CD-ROM. The install phase runs with
on_reboot=destroy, so the installer powering off or rebooting at its end stops
the domain; the serial console is watched for the installer's fatal signs all
along, so a failed install stops the build at once instead of at install.timeout.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

from builder.errors import BuildError, indent
from builder.fetch import fetch_iso
from builder.initrd import append_to_initrd
from builder.iso import extract, find_installer, volume_label
from builder.libvirt import Disk, KernelBoot, RunningDomain
from builder.manifest import source_digest
from builder.pipeline import INSTALL_CONSOLE, BuildContext, timed_guest_wait
from builder.redact import redact
from builder.steps.boot import start_domain
from builder.volume import write_volume
from distros.answers import (
    AnswerContext,
    answer_media,
    hash_password,
    installer_cmdline,
    installer_failure_regex,
    render_answer_files,
)

log = logging.getLogger(__name__)

# Names in the work directory (also what `azbuild render` shows in domain-install.xml).
KERNEL_FILE = "installer-kernel"
INITRD_FILE = "installer-initrd"
INITRD_WITH_ANSWERS_FILE = "installer-initrd-answers"
ANSWER_VOLUME_FILE = "answers.iso"
FAILURE_CONTEXT_LINES = 40
# How the install phase may end: the installer powers off, or reboots (which
# on_reboot=destroy turns into the domain stopping).
_FINISHED = ("the guest powered off", "the domain was destroyed")


def install(ctx: BuildContext, stack: ExitStack) -> None:
    """Run the installer to completion; afterwards ctx.disk holds the installed system."""
    assert ctx.work_dir is not None and ctx.accelerator is not None
    source = ctx.template.source
    assert source.iso is not None and source.checksum is not None
    answers = _answer_context(ctx)
    iso = fetch_iso(source.iso, source.checksum)
    ctx.source_digest = source_digest(iso, source.checksum)
    paths = find_installer(iso, ctx.distro, source.installer_kernel, source.installer_initrd)
    kernel = ctx.work_dir / KERNEL_FILE
    initrd = ctx.work_dir / INITRD_FILE
    extract(iso, paths.kernel, kernel)
    extract(iso, paths.initrd, initrd)

    files = render_answer_files(ctx.distro, ctx.template, answers)
    media = answer_media(ctx.distro, files)
    volume: Path | None = None
    if media.kind == "initrd":
        with_answers = ctx.work_dir / INITRD_WITH_ANSWERS_FILE
        append_to_initrd(initrd, media.files, with_answers)
        initrd = with_answers
        log.info("answer file(s) %s appended to the installer initrd", ", ".join(media.files))
    else:
        assert media.label is not None
        volume = ctx.work_dir / ANSWER_VOLUME_FILE
        write_volume(volume, media.label, media.files)
        log.info("answer file(s) %s on a CD-ROM labelled %s", ", ".join(media.files),
                 media.label)

    ctx.disk = ctx.work_dir / "disk.raw"
    with open(ctx.disk, "xb") as disk:
        disk.truncate(ctx.template.vm.disk_size)  # sparse: the installer writes what it uses

    label = volume_label(iso) if ctx.distro.family == "rhel" else None
    cmdline = installer_cmdline(ctx.distro, ctx.template, label)
    log.info("installer kernel command line: %s", redact(cmdline))
    # A failed build keeps this console in the output directory (see the pipeline).
    serial_log = ctx.work_dir / INSTALL_CONSOLE
    with ExitStack() as phase:
        domain = start_domain(
            ctx, phase, install_disks(ctx.disk, iso, volume), serial_log,
            KernelBoot(kernel=kernel, initrd=initrd, cmdline=cmdline), on_reboot="destroy",
        )
        with timed_guest_wait(ctx):
            _wait_for_installer(ctx, domain)
    log.info("the installer finished (%s)", domain.stop_reason)


def install_disks(disk: Path, iso: Path, answer_volume: Path | None) -> tuple[Disk, ...]:
    """The install phase's drives: the target first (/dev/vda), then the ISO and the
    answer volume as SATA CD-ROMs, which every installer kernel reads."""
    drives = [
        Disk(disk, format="raw", bus="virtio"),
        Disk(iso, format="raw", bus="sata", device="cdrom", readonly=True),
    ]
    if answer_volume is not None:
        drives.append(Disk(answer_volume, format="raw", bus="sata", device="cdrom",
                           readonly=True))
    return tuple(drives)


def _answer_context(ctx: BuildContext) -> AnswerContext:
    assert ctx.client_key is not None
    password = ctx.template.install.root_password
    if ctx.host_key is None:
        raise BuildError(
            "communicator.host_key_file cannot be used with an ISO install: the installed "
            "system gets the host key azbuild generates",
            hint="remove communicator.host_key_file from the template",
        )
    return AnswerContext(
        build_user=ctx.template.communicator.username,
        ssh_public_key=ctx.client_key.public_line,
        host_key_private=ctx.host_key.private_openssh,
        host_key_public=ctx.host_key.public_line,
        root_password_hash=hash_password(password) if password else None,
        firmware=ctx.template.vm.firmware,
        disk_size=ctx.template.vm.disk_size,
        hostname=ctx.template.name[:63],
    )


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
