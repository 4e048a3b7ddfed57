"""Seed, accelerator, boot, and the SSH connection to the booted guest."""

from __future__ import annotations

import logging
from contextlib import ExitStack

from builder.context import BuildContext
from builder.plan import SEED_FILE
from builder.vm.accel import choose_accelerator
from builder.vm.guest import boot_disk, open_session
from builder.vm.seed import CIDATA_LABEL
from builder.vm.volume import write_volume

log = logging.getLogger(__name__)


def write_seed_volume(ctx: BuildContext, stack: ExitStack) -> None:
    """The CIDATA volume: the build user with the ephemeral key, and the pinned host key."""
    assert ctx.work_dir is not None and ctx.client_key is not None
    if ctx.host_key is None:
        log.info("communicator.host_key_file is set: the guest keeps its own host keys, "
                 "and only the one in that file is accepted")
    ctx.seed = ctx.work_dir / SEED_FILE
    files = ctx.the_plan.seed_files(ctx.generated())
    write_volume(ctx.seed, CIDATA_LABEL, {name: text.encode() for name, text in files.items()})
    ctx.record_fed(list(files))


def pick_accelerator(ctx: BuildContext, stack: ExitStack) -> None:
    choice = choose_accelerator(ctx.template.vm.accelerator, ctx.uri)
    ctx.accelerator = choice.accelerator
    ctx.accelerator_reason = choice.reason


def boot(ctx: BuildContext, stack: ExitStack) -> None:
    boot_disk(ctx, stack)


def connect(ctx: BuildContext, stack: ExitStack) -> None:
    open_session(ctx, stack, ctx.template.communicator.timeout)
