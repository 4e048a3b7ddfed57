"""Seed, accelerator, boot, and the SSH connection to the booted guest."""

from __future__ import annotations

import logging
from contextlib import ExitStack

from builder.accel import choose_accelerator
from builder.context import BuildContext
from builder.guest import boot_disk, open_session
from builder.seed import write_seed

log = logging.getLogger(__name__)


def write_seed_volume(ctx: BuildContext, stack: ExitStack) -> None:
    """The CIDATA volume: the build user with the ephemeral key, and the pinned host key."""
    assert ctx.work_dir is not None and ctx.client_key is not None
    if ctx.host_key is None:
        log.info("communicator.host_key_file is set: the guest keeps its own host keys, "
                 "and only the one in that file is accepted")
    ctx.seed = ctx.work_dir / "seed.iso"
    write_seed(
        ctx.seed,
        username=ctx.template.communicator.username,
        authorized_key=ctx.client_key.public_line,
        host_key_private=ctx.host_key.private_openssh if ctx.host_key else None,
        host_key_public=ctx.host_key.public_line if ctx.host_key else None,
        hostname=ctx.template.name[:63],
    )


def pick_accelerator(ctx: BuildContext, stack: ExitStack) -> None:
    choice = choose_accelerator(ctx.template.vm.accelerator, ctx.uri)
    ctx.accelerator = choice.accelerator
    ctx.accelerator_reason = choice.reason


def boot(ctx: BuildContext, stack: ExitStack) -> None:
    boot_disk(ctx, stack)


def connect(ctx: BuildContext, stack: ExitStack) -> None:
    open_session(ctx, stack, ctx.template.communicator.timeout)
