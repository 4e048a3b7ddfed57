"""The build's steps, in order. Each module holds the steps of one phase."""

from __future__ import annotations

from builder.context import BuildContext, Step
from builder.steps import (
    boot,
    export,
    fetch,
    install,
    prepare,
    provision,
    publish,
    shutdown,
    simulate,
    source_disk,
)


def step_list(ctx: BuildContext) -> list[tuple[str, Step]]:
    """The ordered steps of this build (Packer's step list, in one place)."""
    steps: list[tuple[str, Step]] = [("prepare", prepare.prepare)]
    if fetch.needed(ctx):
        steps.append(("fetch", fetch.fetch))  # before any VM: an input may be unavailable
    if ctx.template.source.iso is not None:
        # The answer file creates the build user and installs the pinned host key.
        steps += [
            ("accelerator", boot.pick_accelerator),
            ("install", install.install),
        ]
    else:
        steps += [
            ("source disk", source_disk.prepare_disk),
            ("seed", boot.write_seed_volume),
            ("accelerator", boot.pick_accelerator),
        ]
    steps += [
        ("boot", boot.boot),
        ("connect", boot.connect),
        ("provision", provision.run),
        ("azure preparation", provision.azure_preparation),
        ("shutdown", shutdown.shutdown),
        ("export", export.export),
        ("check", export.check),
        ("simulate", simulate.simulate),
    ]
    if ctx.template.publish:
        steps.append(("publish", publish.publish))
    steps.append(("manifest", export.write_manifest))
    return steps
