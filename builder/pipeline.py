"""The step runner: one ordered list of steps, each registering its cleanup as it acquires.

A step is a plain function `step(ctx, stack)`. Cleanups go on one ExitStack and run
in reverse order on success, failure, Ctrl-C and SIGTERM alike. Once the work directory
exists, nothing of a build is lost: however it ends, build.log is kept in the output
directory, and a failed build also keeps its consoles and a failed manifest.json.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from builder import log as azlog
from builder import salvage
from builder.digest import BackgroundDigests
from builder.disk import atomic_output
from builder.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    AzbuildError,
    BuildError,
    Terminated,
    UsageError,
)
from builder.gc import claim_work_dir
from builder.keys import KeyPair
from builder.libvirt import RunningDomain, connection_uri, refuse_unsupported_uri
from builder.locks import output_directory_lock
from builder.log import StepTimer
from builder.manifest import CacheStage, Failure, write_manifest
from builder.models import Template
from builder.paths import work_root
from builder.redact import redact
from builder.report import Report
from builder.ssh import SSHSession
from builder.template import LoadedTemplate
from distros import Distro, resolve

log = logging.getLogger(__name__)

BUILD_LOG = "build.log"
# The consoles in the work directory, kept as <template name>.<file> when a build fails.
INSTALL_CONSOLE = "install-serial.log"
BOOT_CONSOLE = "serial.log"


@dataclass(frozen=True)
class BuildOptions:
    force: bool = False
    on_error: Literal["cleanup", "abort"] = "cleanup"
    output_dir: Path | None = None
    connect: str | None = None
    debug: bool = False
    log_file: Path | None = None  # --log-file: the build's log written there as well
    use_cache: bool = True  # --no-cache: no stage-cache lookup, no store


@dataclass
class BuildContext:
    """Everything the steps share, typed: no bag of strings."""

    loaded: LoadedTemplate
    options: BuildOptions
    distro: Distro
    uri: str
    output_dir: Path
    build_id: str
    timer: StepTimer = field(default_factory=StepTimer)
    work_dir: Path | None = None
    client_key: KeyPair | None = None
    host_key: KeyPair | None = None
    host_key_line: str | None = None
    disk: Path | None = None
    disk_format: Literal["raw", "qcow2"] = "raw"  # qcow2: an overlay on a stage-cache entry
    cache_stages: list[CacheStage] = field(default_factory=list)  # the manifest's `cache`
    # The stage cache's chain: the key after each provisioner (empty: no caching), the
    # entry the disk is an overlay on, and how many provisioners that entry already holds.
    chain_keys: list[str] = field(default_factory=list)
    cache_parent: str | None = None
    provision_start: int = 0
    stage_started: float = 0.0  # time.monotonic() when the disk's newest overlay was made
    seed: Path | None = None
    accelerator: str | None = None
    accelerator_reason: str | None = None
    domain: RunningDomain | None = None
    session: SSHSession | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    digests: BackgroundDigests | None = None  # the artifacts' hashing, started by export
    report: Report | None = None
    source_digest: str | None = None  # "sha256:<hex>" of the ISO or source disk, once read
    published: list[dict[str, Any]] = field(default_factory=list)  # [[publish]] records
    guest_seconds: float = 0.0
    step: str | None = None  # the step running now, or the one that failed
    log_files: list[logging.Handler] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def template(self) -> Template:
        return self.loaded.template

    def overhead_seconds(self, wall: float) -> float:
        """Orchestration overhead: wall time minus the time the guest was working minus
        the offline check (the benchmark against Packer reports the same figure)."""
        return wall - self.guest_seconds - self.timer.timings.get("check", 0.0)

    def artifact_path(self, fmt: str) -> Path:
        return self.output_dir / f"{self.template.name}.{fmt}"

    def kept_console(self, console: str) -> Path:
        """Where a failed build keeps a console of its work directory."""
        return self.output_dir / f"{self.template.name}.{console}"


Step = Callable[[BuildContext, ExitStack], None]


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
    from builder import steps

    template = loaded.template
    distro = resolve(template.distro.name, template.distro.version)
    ctx = BuildContext(
        loaded=loaded,
        options=options,
        distro=distro,
        uri=connection_uri(options.connect or template.vm.connect),
        output_dir=output_directory(loaded, options),
        build_id=loaded.build.id,  # fixed at load time: ${build.id} is this id
    )
    with azlog.build_scope(ctx.build_id, template.name):
        refuse_unsupported_uri(ctx.uri, os.geteuid())
        succeeded = False
        with ExitStack() as stack:
            # Before anything is written there: a concurrent build into the same
            # directory is refused here, and leaves the other build's files alone.
            stack.enter_context(output_directory_lock(ctx.output_dir))
            if options.log_file is not None:
                ctx.log_files.append(_open_log_file(options.log_file, stack))
            log.info("building %s (%s) with %s", template.name, distro.label, ctx.uri)
            stack.callback(_report_outcome, ctx, lambda: succeeded)
            for name, step in steps.plan(ctx):
                ctx.step = name
                salvage.record(ctx)  # what `azbuild gc` keeps should this process die here
                with ctx.timer.step(name), _disk_full_is_said(name):
                    step(ctx, stack)
            succeeded = True
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


def _report_outcome(ctx: BuildContext, succeeded: Callable[[], bool]) -> None:
    if not succeeded():
        log.info("steps run before the failure:\n%s", ctx.timer.table())


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
    for console in (INSTALL_CONSOLE, BOOT_CONSOLE):
        # A console an earlier failed build kept would pass for this build's.
        _guarded(console, partial(ctx.kept_console(console).unlink, missing_ok=True))
    if exc is not None:
        failure = failure_of(ctx, exc)
        # The command line prints the error to the terminal; the log files get it here.
        _to_log_files(ctx, logging.ERROR,
                      f"build failed in step {failure.step}: {failure.error}"
                      + (f"\nhint: {failure.hint}" if failure.hint else ""))
        for console in (INSTALL_CONSOLE, BOOT_CONSOLE):
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


# --- shared cleanup helpers ----------------------------------------------------------------


def make_work_dir(ctx: BuildContext, stack: ExitStack) -> Path:
    """A private work directory, removed at the end unless --on-error=abort and failing."""
    root = work_root()
    root.mkdir(parents=True, exist_ok=True)
    work = root / f"{ctx.template.name}-{ctx.build_id}"
    work.mkdir(mode=0o700)
    state = {"failed": True}

    def remove() -> None:
        if state["failed"] and ctx.options.on_error == "abort":
            log.warning("--on-error=abort: kept the work directory %s (disk %s, serial log "
                        "%s); remove it with `azbuild gc --yes`", work, ctx.disk,
                        work / BOOT_CONSOLE)
            return
        shutil.rmtree(work, ignore_errors=True)

    stack.callback(remove)
    # Registered after remove(), so it runs before it: marks success on a clean exit.
    stack.push(lambda exc_type, exc, tb: _mark(state, exc_type))
    claim_work_dir(work)
    handler = azlog.add_file_handler(str(work / BUILD_LOG))
    stack.callback(azlog.remove_handler, handler)
    ctx.log_files.append(handler)
    stack.callback(ctx.log_files.remove, handler)
    # Runs after every cleanup registered later (VMs, artifacts), while the log is open.
    stack.push(lambda exc_type, exc, tb: _keep_and_propagate(ctx, handler, exc))
    ctx.work_dir = work
    return work


def _mark(state: dict[str, bool], exc_type: type[BaseException] | None) -> bool:
    state["failed"] = exc_type is not None
    return False


def timed_guest_wait(ctx: BuildContext) -> _GuestClock:
    """Accounts time spent waiting on the guest, for the manifest's wall-time split."""
    return _GuestClock(ctx)


class _GuestClock:
    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.ctx.guest_seconds += time.monotonic() - self.start
