"""The step runner: one ordered list of steps, each registering its cleanup as it acquires.

A step is a plain function `step(ctx, stack)`. Cleanups go on one ExitStack and run
in reverse order on success, failure, Ctrl-C and SIGTERM alike. Once the work directory
exists, nothing of a build is lost: however it ends, build.log is kept in the output
directory, and a failed build also keeps its consoles and a failed manifest.json
(builder/work_dir.py). The steps share builder/context.py and never import this module.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from builder import log as azlog
from builder import steps
from builder.context import BuildContext, BuildOptions, on_failure
from builder.errors import BuildError, UsageError
from builder.housekeeping import salvage
from builder.locks import output_directory_lock
from builder.plan import plan_for
from builder.template import LoadedTemplate
from builder.vm.libvirt import connection_uri, refuse_unsupported_uri
from distros import resolve

log = logging.getLogger(__name__)


def _time_split(ctx: BuildContext, wall: float) -> str:
    return (f"wall {wall:.1f}s: waiting on the guest {ctx.guest_seconds:.1f}s, "
            f"check {ctx.timer.timings.get('check', 0.0):.1f}s, "
            f"overhead {ctx.overhead_seconds(wall):.1f}s")


def output_directory(loaded: LoadedTemplate, options: BuildOptions) -> Path:
    if options.output_dir is not None:
        return options.output_dir.absolute()
    return Path(loaded.template.output.directory).absolute()


def build(loaded: LoadedTemplate, options: BuildOptions) -> int:
    """Run every step of a build; raise AzbuildError (or re-raise an interrupt) on failure."""
    template = loaded.template
    distro = resolve(template.distro.name, template.distro.version)
    ctx = BuildContext(
        loaded=loaded,
        options=options,
        distro=distro,
        uri=connection_uri(options.connect or template.vm.connect),
        output_dir=output_directory(loaded, options),
        build_id=loaded.build.id,  # fixed at load time: ${build.id} is this id
        # What the steps execute; the install step makes it anew once the ISO is here.
        plan=plan_for(loaded),
    )
    with azlog.build_scope(ctx.build_id, template.name):
        refuse_unsupported_uri(ctx.uri, os.geteuid())
        with ExitStack() as stack:
            # Before anything is written there: a concurrent build into the same
            # directory is refused here, and leaves the other build's files alone.
            stack.enter_context(output_directory_lock(ctx.output_dir))
            if options.log_file is not None:
                ctx.log_files.append(_open_log_file(options.log_file, stack))
            log.info("building %s (%s) with %s", template.name, distro.label, ctx.uri)
            on_failure(stack, lambda: log.info("steps run before the failure:\n%s",
                                               ctx.timer.table()))
            for name, step in steps.step_list(ctx):
                ctx.step = name
                salvage.record(ctx)  # what `azbuild gc` keeps should this process die here
                with ctx.timer.step(name), _disk_full_is_said(name):
                    step(ctx, stack)
        wall = (datetime.now(UTC) - ctx.started).total_seconds()
        log.info("build %s finished; artifacts in %s\n%s\n%s", template.name, ctx.output_dir,
                 ctx.timer.table(), _time_split(ctx, wall))
    return 0


@contextmanager
def _disk_full_is_said(step: str) -> Iterator[None]:
    """A full filesystem is the user's environment, not a bug: name it and where."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        raise BuildError(
            f"no space left on device{where} (step {step}): {exc.strerror}",
            hint="free space there, or write elsewhere (--output-dir, AZBUILD_WORK_DIR); "
            "nothing partial was kept",
        ) from None


def _open_log_file(path: Path, stack: ExitStack) -> logging.Handler:
    """--log-file: the whole build's log (as build.log has it), written afresh."""
    try:
        handler = azlog.add_file_handler(str(path), mode="w")
    except OSError as exc:
        raise UsageError(f"cannot write the log file {path}: {exc.strerror or exc}",
                         hint="check --log-file: its directory must exist and be writable",
                         ) from None
    stack.callback(azlog.remove_handler, handler)
    return handler
