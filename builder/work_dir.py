"""A build's private work directory, and what the output directory keeps of it as the
build ends: build.log always; for a failure also the consoles and a failed manifest.json.

`make_work_dir` (the prepare step) registers `keep_outputs` on the build's stack, so it
runs after every cleanup registered later (VMs, artifacts) while build.log is still open.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path

from builder import log as azlog
from builder.context import BuildContext, on_failure
from builder.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    AzbuildError,
    Terminated,
)
from builder.housekeeping.gc import claim_work_dir
from builder.image.disk import atomic_output
from builder.manifest import Failure, write_manifest
from builder.paths import BOOT_CONSOLE, BUILD_LOG, KEPT_ON_FAILURE, work_root
from builder.redact import redact

log = logging.getLogger(__name__)


def make_work_dir(ctx: BuildContext, stack: ExitStack) -> Path:
    """A private work directory, removed at the end unless --on-error=abort and failing."""
    root = work_root()
    root.mkdir(parents=True, exist_ok=True)
    work = root / f"{ctx.template.name}-{ctx.build_id}"
    work.mkdir(mode=0o700)

    def remove() -> None:
        shutil.rmtree(work, ignore_errors=True)

    def remove_unless_aborting() -> None:
        if ctx.options.on_error == "abort":
            log.warning("--on-error=abort: kept the work directory %s (disk %s, serial log "
                        "%s); remove it with `azbuild gc --yes`", work, ctx.disk,
                        work / BOOT_CONSOLE)
            return
        remove()

    on_failure(stack, remove_unless_aborting, otherwise=remove)
    claim_work_dir(work)
    handler = azlog.add_file_handler(str(work / BUILD_LOG))
    stack.callback(azlog.remove_handler, handler)
    ctx.log_files.append(handler)
    stack.callback(ctx.log_files.remove, handler)
    # Runs after every cleanup registered later (VMs, artifacts), while the log is open.
    stack.push(lambda exc_type, exc, tb: _keep_and_propagate(ctx, handler, exc))
    ctx.work_dir = work
    return work


def failure_of(ctx: BuildContext, exc: BaseException) -> Failure:
    """What the command line will say about `exc`, for the failed manifest."""
    step = ctx.step or "prepare"
    if isinstance(exc, AzbuildError):
        return Failure(step=step, error=exc.message, hint=exc.hint, exit_code=exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return Failure(step=step, error="interrupted by Ctrl-C (SIGINT)", hint=None,
                       exit_code=EXIT_INTERRUPTED)
    if isinstance(exc, Terminated):
        return Failure(step=step, error="terminated by SIGTERM", hint=None,
                       exit_code=EXIT_TERMINATED)
    return Failure(step=step, error=f"internal error: {type(exc).__name__}: {exc}",
                   hint="rerun with --debug for a traceback, and please report it",
                   exit_code=EXIT_FAILED)


def keep_outputs(ctx: BuildContext, build_log: logging.Handler,
                 exc: BaseException | None) -> None:
    """As the build ends, with every VM and artifact cleanup done but build.log still open:
    a failed build keeps its consoles and a failed manifest.json; every build keeps
    build.log. Never raises: a problem here must not hide the build's own error."""
    assert ctx.work_dir is not None
    logs = [BUILD_LOG]
    for console in KEPT_ON_FAILURE:
        # A console an earlier failed build kept would pass for this build's.
        _guarded(console, partial(ctx.kept_console(console).unlink, missing_ok=True))
    if exc is not None:
        failure = failure_of(ctx, exc)
        # The command line prints the error to the terminal; the log files get it here.
        _to_log_files(ctx, logging.ERROR,
                      f"build failed in step {failure.step}: {failure.error}"
                      + (f"\nhint: {failure.hint}" if failure.hint else ""))
        for console in KEPT_ON_FAILURE:
            if _keep_console(ctx, console):
                logs.append(ctx.kept_console(console).name)
        _guarded("the failed manifest", lambda: write_manifest(ctx, failure, logs))
    build_log.flush()
    _guarded(BUILD_LOG, lambda: _copy_build_log(ctx))


def _keep_and_propagate(ctx: BuildContext, build_log: logging.Handler,
                        exc: BaseException | None) -> bool:
    keep_outputs(ctx, build_log, exc)
    return False  # the build's own exception, if any, goes on


def _keep_console(ctx: BuildContext, console: str) -> bool:
    assert ctx.work_dir is not None
    source = ctx.work_dir / console
    if not source.is_file():
        return False

    def copy() -> None:
        kept = ctx.kept_console(console)
        with atomic_output(kept, force=True) as tmp:
            # Masked like every other output: a provisioner or answer file may echo a secret.
            tmp.write_text(redact(source.read_text(errors="replace")))
        log.info("kept the console %s in %s", console, kept)

    return _guarded(console, copy)


def _copy_build_log(ctx: BuildContext) -> None:
    assert ctx.work_dir is not None
    source = ctx.work_dir / BUILD_LOG
    if source.is_file():
        with atomic_output(ctx.output_dir / BUILD_LOG, force=True) as tmp:
            shutil.copyfile(source, tmp)


def _guarded(what: str, action: Callable[[], object]) -> bool:
    try:
        action()
    except (OSError, AzbuildError) as exc:
        log.warning("could not keep %s in the output directory: %s", what, exc)
        return False
    return True


def _to_log_files(ctx: BuildContext, level: int, message: str) -> None:
    record = log.makeRecord(log.name, level, __file__, 0, "%s", (message,), None)
    for handler in ctx.log_files:
        handler.handle(record)
