"""Simulate: the finished image's first boot as Azure provisions it (docs/simulate.md),
on a copy-on-write overlay, so the artifact is only read."""

from __future__ import annotations

import logging
from contextlib import ExitStack

from builder.context import BuildContext, timed_guest_wait
from builder.errors import BuildError, indent
from builder.manifest import Simulation, SimulationLine
from builder.paths import SIMULATE_CONSOLE, SIMULATE_REQUESTS
from builder.simulate.outcome import SimulationOutcome
from builder.simulate.simulator import SimulateOptions, simulate_image

log = logging.getLogger(__name__)


class SimulationFailed(BuildError):
    """The image was built and checked but does not provision: it stays for examination."""

    keep_outputs = True


def skip_reason(ctx: BuildContext) -> str | None:
    if not ctx.options.simulate:
        return "--no-simulate"
    if not ctx.template.test.simulate:
        return "test.simulate = false in the template"
    return None


def record(outcome: SimulationOutcome) -> Simulation:
    return Simulation(
        status="passed" if outcome.passed else "failed",
        reason=outcome.error,
        seconds_to_ready=None if outcome.seconds_to_ready is None
        else round(outcome.seconds_to_ready, 1),
        seconds_to_ssh=None if outcome.seconds_to_ssh is None
        else round(outcome.seconds_to_ssh, 1),
        agents=outcome.agents,
        assertions=[SimulationLine(id=a.id, status=a.status, title=a.title,
                                   evidence=a.evidence) for a in outcome.assertions],
    )


def simulate(ctx: BuildContext, stack: ExitStack) -> None:
    """Boot the exported image with an offline Azure fabric; fail unless the agent reports
    Ready and the ovf-env's user logs in on the first boot."""
    reason = skip_reason(ctx)
    if reason is not None:
        ctx.simulation = Simulation(status="skipped", reason=reason)
        log.info("simulation skipped (%s): nothing proves this image provisions", reason)
        return
    image = ctx.artifacts.get("vhd") or ctx.artifacts["raw"]
    template = ctx.template
    # The ovf-env's host name differs from the one the image was built with, so that the
    # simulation sees the agent set it.
    options = SimulateOptions(
        firmware=template.vm.firmware,
        accelerator="kvm" if ctx.accelerator == "kvm" else "tcg",
        ready_timeout=template.test.ready_timeout,
        expect_agent="cloud-init" if template.azure.provisioning == "cloud-init"
        else "waagent",
        keep_dir=ctx.work_dir,  # a failed build keeps them in its output directory
    )
    with timed_guest_wait(ctx):
        outcome = simulate_image(image, options)
    ctx.simulation = record(outcome)
    for line in outcome.summary_lines():
        log.info("%s", line)
    if not outcome.passed:
        problems = [f"{a.id}: {a.evidence}" for a in outcome.failed()]
        if outcome.error:
            problems.append(outcome.error)
        raise SimulationFailed(
            f"the image {image} does not provision as Azure provisions it:\n"
            f"{indent(problems)}\nit is kept with \"ready\": false; the guest's console and "
            f"the fabric's requests are kept beside it ({ctx.template.name}.{SIMULATE_CONSOLE}, "
            f"{ctx.template.name}.{SIMULATE_REQUESTS})",
            hint="see docs/simulate.md for what each line means; --no-simulate skips it",
        )


__all__ = ["SimulationFailed", "simulate"]
