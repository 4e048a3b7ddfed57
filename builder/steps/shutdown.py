"""Shutdown: the guest powers itself off; the host waits on lifecycle events."""

from __future__ import annotations

import logging
from contextlib import ExitStack

from builder.context import BuildContext, timed_guest_wait
from builder.errors import BuildError

log = logging.getLogger(__name__)

ACPI_GRACE_SECONDS = 60.0


def shutdown(ctx: BuildContext, stack: ExitStack) -> None:
    """Wait for the poweroff started by the last in-guest step; then ACPI; never force
    it off, since a forced power-off can leave a dirty filesystem (R13)."""
    domain = ctx.domain
    assert domain is not None
    timeout = ctx.template.shutdown.timeout
    with timed_guest_wait(ctx):
        if domain.wait_stopped(timeout):
            log.info("the guest powered off (%s)", domain.stop_reason or "stopped")
            return
        log.warning("the guest did not power off within %.0fs; sending an ACPI shutdown",
                    timeout)
        domain.shutdown()
        if domain.wait_stopped(ACPI_GRACE_SECONDS, "the guest to power off after ACPI"):
            log.info("the guest powered off after the ACPI shutdown")
            return
    tail = domain.serial.tail(30) or "(the serial console is empty)"
    raise BuildError(
        f"the guest did not power off within shutdown.timeout ({timeout:.0f}s) nor "
        f"{ACPI_GRACE_SECONDS:.0f}s after an ACPI shutdown; not forcing it off, as that "
        f"could leave a dirty filesystem (R13). The end of the serial console:\n{tail}",
        hint="raise shutdown.timeout, or check what keeps the guest from powering off",
    )
