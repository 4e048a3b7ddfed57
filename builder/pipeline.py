"""The step runner: one ordered list of steps, each registering its cleanup as it acquires.

A step is a plain function `step(ctx, stack)`. Cleanups go on one ExitStack and run
in reverse order on success, failure, Ctrl-C and SIGTERM alike.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from builder import log as azlog
from builder.gc import claim_work_dir
from builder.keys import KeyPair
from builder.libvirt import RunningDomain, connection_uri
from builder.log import StepTimer
from builder.models import Template
from builder.paths import work_root
from builder.report import Report
from builder.ssh import SSHSession
from builder.template import LoadedTemplate
from distros import Distro, resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    force: bool = False
    on_error: Literal["cleanup", "abort"] = "cleanup"
    output_dir: Path | None = None
    connect: str | None = None
    debug: bool = False


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
    seed: Path | None = None
    accelerator: str | None = None
    accelerator_reason: str | None = None
    domain: RunningDomain | None = None
    session: SSHSession | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    report: Report | None = None
    published: list[dict[str, Any]] = field(default_factory=list)  # [[publish]] records
    guest_seconds: float = 0.0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def template(self) -> Template:
        return self.loaded.template

    def artifact_path(self, fmt: str) -> Path:
        return self.output_dir / f"{self.template.name}.{fmt}"


Step = Callable[[BuildContext, ExitStack], None]


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
        build_id=os.urandom(4).hex(),
    )
    log.info("building %s (%s) with %s", template.name, distro.label, ctx.uri)
    succeeded = False
    with ExitStack() as stack:
        stack.callback(_report_outcome, ctx, lambda: succeeded)
        for name, step in steps.plan(ctx):
            with ctx.timer.step(name):
                step(ctx, stack)
        succeeded = True
    log.info("build %s finished; artifacts in %s\n%s", template.name, ctx.output_dir,
             ctx.timer.table())
    return 0


def _report_outcome(ctx: BuildContext, succeeded: Callable[[], bool]) -> None:
    if not succeeded():
        log.info("steps run before the failure:\n%s", ctx.timer.table())


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
                        work / "serial.log")
            return
        shutil.rmtree(work, ignore_errors=True)

    stack.callback(remove)
    # Registered after remove(), so it runs before it: marks success on a clean exit.
    stack.push(lambda exc_type, exc, tb: _mark(state, exc_type))
    claim_work_dir(work)
    handler = azlog.add_file_handler(str(work / "build.log"))
    stack.callback(azlog.remove_handler, handler)
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
