"""The build's guest: starting its domain (the installer's, or the disk's boot) and
opening the SSH session to it. Shared by the steps and the stage cache's cache points."""

from __future__ import annotations

import logging
import re
import threading
from contextlib import ExitStack
from pathlib import Path

from builder.context import BuildContext, timed_guest_wait
from builder.paths import BOOT_CONSOLE
from builder.plan import Runtime
from builder.vm.keys import load_private_key
from builder.vm.libvirt import (
    Disk,
    DomainMetadata,
    DomainSpec,
    RunningDomain,
    default_dac_label,
    free_port,
    running_domain,
)
from builder.vm.ssh import SSHSession, wait_for_ssh

log = logging.getLogger(__name__)

# How long a guest may stay silent on its serial console before we call it dead.
START_WATCHDOG_SECONDS = {"kvm": 60.0, "tcg": 180.0}
SERIAL_TAIL_LINES = 30


def boot_disk(ctx: BuildContext, stack: ExitStack) -> None:
    """Boot the build's disk (with the seed, if any); the domain becomes ctx.domain."""
    assert ctx.work_dir is not None and ctx.disk is not None
    spec = ctx.the_plan.boot_domain(runtime(ctx), Disk(ctx.disk, format=ctx.disk_format),
                                    ctx.seed, ctx.work_dir / BOOT_CONSOLE)
    ctx.domain = start_domain(ctx, stack, spec)
    skip_boot_menu(ctx.domain, stack, START_WATCHDOG_SECONDS[spec.accelerator])


# GRUB 2's menu counting down on the serial console ("The highlighted entry will be
# executed automatically in 5s."): Enter boots that default entry at once. Legacy
# GRUB's "Press any key to enter the menu" countdown is not matched: a key opens it.
GRUB_COUNTDOWN = re.compile(r"executed automatically in \d+s")


def skip_boot_menu(domain: RunningDomain, stack: ExitStack, within: float) -> None:
    """Press Enter when the disk's GRUB shows its menu with a countdown, instead of
    waiting it out (5 s on a Debian or RHEL install): the entry booted is the one the
    countdown would boot. Watches in the background for `within` s at most; a GRUB that
    reads only the serial line ignores the key, and the countdown runs as before."""
    done = threading.Event()

    def watch() -> None:
        found = domain.serial.wait_for(GRUB_COUNTDOWN, within, stop=done)
        if found is not None and not done.is_set() and domain.press_enter():
            log.info("pressed Enter at GRUB's menu: its default entry boots without "
                     "the countdown")

    thread = threading.Thread(target=watch, name=f"boot-menu:{domain.name}", daemon=True)
    thread.start()
    stack.callback(thread.join, 2)
    stack.callback(done.set)


def runtime(ctx: BuildContext, iso: Path | None = None) -> Runtime:
    """What the plan's domain specs take from this build: its work directory, a free
    port for SSH, the accelerator chosen, this process as the owner (for `gc`)."""
    assert ctx.work_dir is not None and ctx.accelerator is not None
    return Runtime(
        work_dir=ctx.work_dir, ssh_port=free_port(),
        accelerator="kvm" if ctx.accelerator == "kvm" else "tcg",
        metadata=DomainMetadata.for_this_process(ctx.template.name, ctx.work_dir),
        dac_label=default_dac_label(ctx.uri), iso=iso,
    )


def start_domain(ctx: BuildContext, stack: ExitStack, spec: DomainSpec) -> RunningDomain:
    """Start the domain `spec` (destroyed when `stack` closes), stream its console with
    --debug, and return once the start watchdog has seen the guest's OS on the console.
    Used for the installer and for booting the disk."""
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
