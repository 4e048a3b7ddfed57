"""The build's guest: starting its domain (the installer's, or the disk's boot) and
opening the SSH session to it. Shared by the steps and the stage cache's cache points."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from builder.context import BOOT_CONSOLE, BuildContext, timed_guest_wait
from builder.keys import load_private_key
from builder.libvirt import (
    Disk,
    DomainMetadata,
    DomainSpec,
    KernelBoot,
    RunningDomain,
    default_dac_label,
    domain_name,
    free_port,
    running_domain,
)
from builder.ssh import SSHSession, wait_for_ssh

log = logging.getLogger(__name__)

# How long a guest may stay silent on its serial console before we call it dead.
START_WATCHDOG_SECONDS = {"kvm": 60.0, "tcg": 180.0}
SERIAL_TAIL_LINES = 30


def boot_disk(ctx: BuildContext, stack: ExitStack) -> None:
    """Boot the build's disk (with the seed, if any); the domain becomes ctx.domain."""
    assert ctx.work_dir is not None and ctx.disk is not None
    disks = [Disk(ctx.disk, format=ctx.disk_format, bus="virtio")]
    if ctx.seed is not None:
        disks.append(Disk(ctx.seed, format="raw", bus="virtio", readonly=True))
    ctx.domain = start_domain(ctx, stack, tuple(disks), ctx.work_dir / BOOT_CONSOLE)


def start_domain(
    ctx: BuildContext,
    stack: ExitStack,
    disks: tuple[Disk, ...],
    serial_log: Path,
    kernel_boot: KernelBoot | None = None,
    on_reboot: Literal["restart", "destroy"] = "restart",
) -> RunningDomain:
    """Start the build's domain (destroyed when `stack` closes), stream its console with
    --debug, and return once the start watchdog has seen the guest's OS on the console.
    Used for the installer and for booting the disk."""
    assert ctx.work_dir is not None and ctx.accelerator is not None
    vm = ctx.template.vm
    spec = DomainSpec(
        name=domain_name(ctx.template.name, ctx.build_id),
        vcpus=vm.cpus,
        memory=vm.memory,
        accelerator="kvm" if ctx.accelerator == "kvm" else "tcg",
        serial_log=serial_log,
        metadata=DomainMetadata.for_this_process(ctx.template.name, ctx.work_dir),
        firmware=vm.firmware,
        disks=disks,
        kernel_boot=kernel_boot,
        on_reboot=on_reboot,
        # Forwarded to the guest's sshd; installers that fetch packages use the NIC too.
        ssh_port=free_port(),
        dac_label=default_dac_label(ctx.uri),
    )
    domain = stack.enter_context(running_domain(spec, ctx.uri))
    if ctx.options.debug:
        stack.enter_context(domain.serial.streaming())
    with timed_guest_wait(ctx):
        domain.wait_started(START_WATCHDOG_SECONDS[spec.accelerator])
    return domain


def open_session(ctx: BuildContext, stack: ExitStack, timeout: float) -> SSHSession:
    """Wait for the guest's sshd and log in, pinned to the expected host key; used for
    the first connection and again after a reboot. The session becomes ctx.session."""
    domain = ctx.domain
    assert domain is not None and domain.ssh_port is not None
    assert ctx.client_key is not None and ctx.host_key_line is not None
    comm = ctx.template.communicator
    pkey = (
        load_private_key(comm.private_key_file)
        if comm.private_key_file is not None
        else None if comm.password is not None else ctx.client_key.to_paramiko()
    )

    def serial_tail() -> str:
        tail = domain.serial.tail(SERIAL_TAIL_LINES) or "(the serial console is empty)"
        return f"the end of the serial console ({domain.spec.serial_log}):\n{tail}"

    with timed_guest_wait(ctx):
        session = wait_for_ssh(
            "127.0.0.1",
            domain.ssh_port,
            username=comm.username,
            host_key=ctx.host_key_line,
            pkey=pkey,
            password=comm.password,
            timeout=timeout,
            alive=lambda: _still_watched(domain) and domain.is_running(),
            failure_context=serial_tail,
        )
    session.watchdogs.append(domain.check_connection)
    stack.callback(session.close)
    ctx.session = session
    return session


def _still_watched(domain: RunningDomain) -> bool:
    domain.check_connection()  # raises once libvirtd is gone: the guest is unwatched
    return True
