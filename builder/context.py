"""What the build's steps share: the typed build context, the step type, the timed waits
on the guest, the names of the files a build writes in its work directory, and the
`on_failure` cleanup.

Steps import this module (and lower-level ones), never `builder.pipeline`: imports run
pipeline -> steps -> context (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from builder.image.digest import BackgroundDigests
from builder.image.fetch import Digest
from builder.log import StepTimer
from builder.manifest import CacheStage, Simulation
from builder.masking import masked_files
from builder.models import Template
from builder.plan import PLACEHOLDERS, BuildPlan, Generated, plan_for
from builder.report.check_report import Report
from builder.template import LoadedTemplate
from builder.vm.keys import KeyPair
from builder.vm.libvirt import RunningDomain
from builder.vm.seed import new_instance_id
from builder.vm.ssh import SSHSession
from distros import Distro


@dataclass(frozen=True)
class BuildOptions:
    force: bool = False
    on_error: Literal["cleanup", "abort"] = "cleanup"
    output_dir: Path | None = None
    connect: str | None = None
    debug: bool = False
    log_file: Path | None = None  # --log-file: the build's log written there as well
    use_cache: bool = True  # --no-cache: no stage-cache lookup, no store
    simulate: bool = True  # --no-simulate: no simulated Azure first boot


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
    plan: BuildPlan | None = None  # made as the build starts (the_plan), before any step
    work_dir: Path | None = None
    client_key: KeyPair | None = None
    host_key: KeyPair | None = None
    host_key_line: str | None = None
    root_password_hash: str | None = None  # install.root_password with this build's salt
    instance_id: str = field(default_factory=new_instance_id)  # the seed's, fresh per build
    # The files fed to the guest, as `azbuild render` writes them: name -> sha256 (manifest).
    guest_files: dict[str, str] = field(default_factory=dict)
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
    simulation: Simulation | None = None  # the simulate step's verdict (manifest)
    source_digest: str | None = None  # "sha256:<hex>" of the ISO or source disk, once read
    source_file: Path | None = None  # the verified ISO, once the fetch step has it
    source_checksum: Digest | None = None  # a disk image's 'file:' checksum, as fetched
    published: list[dict[str, Any]] = field(default_factory=list)  # [[publish]] records
    guest_seconds: float = 0.0
    guest_waits_open: int = 0  # nested waits (a reconnect inside a provisioner run) count once
    step: str | None = None  # the step running now, or the one that failed
    log_files: list[logging.Handler] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def template(self) -> Template:
        return self.loaded.template

    @property
    def the_plan(self) -> BuildPlan:
        """The plan this build executes (made from what is here when first asked)."""
        if self.plan is None:
            self.plan = plan_for(self.loaded)
        return self.plan

    def generated(self) -> Generated:
        """What this build generated for its guest, to fill the plan in with."""
        assert self.client_key is not None
        return Generated(
            client_public=self.client_key.public_line,
            host_private=self.host_key.private_openssh if self.host_key else None,
            host_public=self.host_key.public_line if self.host_key else None,
            root_password_hash=self.root_password_hash,
            instance_id=self.instance_id,
        )

    def record_fed(self, names: list[str]) -> None:
        """Record that the guest got the plan's files `names`: each as `azbuild render`
        writes it (the placeholders for what this build generated, secrets masked)."""
        shown = masked_files(self.the_plan.guest_files(PLACEHOLDERS))
        for name in names:
            self.guest_files[name] = hashlib.sha256(
                shown[name].encode(errors="surrogateescape")).hexdigest()

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


def timed_guest_wait(ctx: BuildContext) -> _GuestClock:
    """Accounts time spent waiting on the guest, for the manifest's wall-time split."""
    return _GuestClock(ctx)


class _GuestClock:
    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.monotonic()
        self.ctx.guest_waits_open += 1

    def __exit__(self, *exc: object) -> None:
        self.ctx.guest_waits_open -= 1
        if self.ctx.guest_waits_open == 0:
            self.ctx.guest_seconds += time.monotonic() - self.start


def on_failure(stack: ExitStack, action: Callable[[], object], *,
               otherwise: Callable[[], object] | None = None,
               unless_outputs_kept: bool = False) -> None:
    """Run `action` when `stack` unwinds with an exception (the build failed, or was
    interrupted), in its place among the stack's cleanups; run `otherwise`, if given,
    when it unwinds cleanly. With `unless_outputs_kept`, a failure whose exception keeps
    the outputs (`keep_outputs = True`: a failed check or publish) runs neither."""

    def on_exit(exc_type: type[BaseException] | None, exc: BaseException | None,
                tb: object) -> bool:
        if exc_type is None:
            if otherwise is not None:
                otherwise()
        elif not (unless_outputs_kept and getattr(exc, "keep_outputs", False)):
            action()
        return False  # the exception, if any, goes on

    stack.push(on_exit)
