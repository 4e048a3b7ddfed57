"""`azbuild build T1 T2 ...`: several builds, up to --jobs at once, each in a child process.

Each child is a whole `python -m builder build T` (its own cleanup, signal handling,
manifest); the parent validates every template first, starts children as memory and
--jobs allow, relays their log lines tagged with the build's name, forwards SIGTERM on
Ctrl-C or SIGTERM, and writes summary.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from builder.errors import (
    EXIT_FAILED,
    EXIT_INPUT_UNAVAILABLE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    AzbuildError,
    Terminated,
    UsageError,
)
from builder.report.summary import (
    SUMMARY_FILE,
    BuildEntry,
    BuildStatus,
    Summary,
    entry_from_manifest,
    manifest_of,
    new_summary,
    write_summary,
)
from builder.units import GiB, MiB

if TYPE_CHECKING:
    from builder.template import BuildInfo, LoadedTemplate

log = logging.getLogger(__name__)

# What a VM costs beyond its guest memory: QEMU itself, and the libguestfs appliance the
# offline check and the Azure preparation launch.
MEMORY_MARGIN = 512 * MiB
MEMINFO = Path("/proc/meminfo")


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One template's build, validated, not yet started."""

    name: str
    template: Path
    output_dir: Path
    memory: int  # the template's vm.memory, bytes
    argv: list[str]  # the child's command line


@dataclass(frozen=True)
class Options:
    """What the command line passes on to every build."""

    cli_vars: dict[str, str] = field(default_factory=dict)
    var_files: list[Path] = field(default_factory=list)
    output_dir: Path | None = None
    passthrough: list[str] = field(default_factory=list)  # --force, --on-error, ...


def route_variables(
    templates: Sequence[Path], cli_vars: dict[str, str], var_files: list[Path]
) -> tuple[list[dict[str, str]], list[str]]:
    """Each template's --var values (only the names it declares), and the --var names
    that no template declares (an error, as it is for one template). A var file's name
    that no template declares is a warning naming the file and line, as for one."""
    from builder.template import declared_variable_names, undeclared_var_file_names

    declared = [declared_variable_names(t) for t in templates]
    everyone: set[str] = set().union(*declared) if declared else set()
    for warning in undeclared_var_file_names(var_files, everyone, "any of the templates"):
        log.warning("%s", warning)
    unknown = sorted(set(cli_vars) - everyone)
    routed = [{k: v for k, v in cli_vars.items() if k in names} for names in declared]
    return routed, unknown


Problems = list[tuple[Path | None, AzbuildError]]


def plan_jobs(templates: Sequence[str], options: Options) -> tuple[list[Job], Problems]:
    """Load and validate every template (as `azbuild validate` does, and the local inputs
    a build needs); the jobs, and every problem: (the template, its error) per invalid
    template, (None, error) for a variable no template declares and for each collision.
    Nothing is created or started here."""
    from builder.template import check_local_inputs, load_template

    paths = [Path(t) for t in templates]
    routed, unknown = route_variables(paths, options.cli_vars, options.var_files)
    problems: Problems = [
        (None, UsageError(f"no template declares the variable {name!r} (set by --var)"))
        for name in unknown]
    jobs: list[Job] = []
    for path, cli_vars in zip(paths, routed, strict=True):
        try:
            loaded = load_template(path, cli_vars, options.var_files,
                                   ignore_undeclared_file_vars=True)
            for warning in check_local_inputs(loaded, building=True):
                log.warning("%s: %s", path, warning)
        except AzbuildError as exc:
            problems.append((path, exc))
            continue
        job = job_of(loaded, path, options.output_dir)
        jobs.append(replace(job, argv=child_argv(path, cli_vars, options, loaded.build)))
    problems += [(None, UsageError(text)) for text in collisions(jobs)]
    return jobs, problems


def job_of(loaded: LoadedTemplate, path: Path, output_dir: Path | None) -> Job:
    """The validated template `loaded` as a build of several would schedule it: its output
    directory (build_directory's). The argv is left to the caller (validate has none)."""
    from builder.context import BuildOptions
    from builder.pipeline import output_directory

    name = loaded.template.name
    out = output_directory(loaded, BuildOptions(output_dir=build_directory(loaded,
                                                                           output_dir)))
    return Job(name=name, template=path, output_dir=out, memory=loaded.template.vm.memory,
               argv=[])


def child_argv(template: Path, cli_vars: dict[str, str], options: Options,
               build: BuildInfo) -> list[str]:
    """The child's `azbuild build`. It runs under the identity its template was validated
    with, so that an output.directory naming ${build.id} or ${build.date} is the one
    checked for collisions and read back for the summary; --output-dir DIR puts it in
    DIR/<name>/ as it does every build."""
    argv = [sys.executable, "-m", "builder", "build", str(template), *options.passthrough,
            BUILD_IDENTITY, format_build_identity(build)]
    if options.output_dir is not None:
        argv += ["--output-dir", str(options.output_dir.absolute())]
    for name, value in cli_vars.items():
        argv += ["--var", f"{name}={value}"]
    for var_file in options.var_files:
        argv += ["--var-file", str(var_file)]
    if options.var_files:
        argv.append(SHARED_VAR_FILES)
    return argv


def build_directory(loaded: LoadedTemplate, output_dir: Path | None) -> Path | None:
    """Where --output-dir DIR puts a build, one template or many: DIR/<name>/ (None
    without --output-dir: the template's output.directory)."""
    return output_dir.absolute() / loaded.template.name if output_dir is not None else None


def summarise_one(job: Job, exit_code: int, started: datetime, seconds: float,
                  manifest_before: tuple[int, int] | None, summary_file: Path) -> None:
    """summary.json of a one-template build with --output-dir, as several templates have
    one; a summary that cannot be written is a warning (the build's own result stands)."""
    outcome = Outcome(job, exit_code, seconds, manifest_before=manifest_before)
    entries = [entry(outcome)]
    summary = new_summary(started=started.isoformat(timespec="seconds"),
                          finished=datetime.now(UTC).isoformat(timespec="seconds"),
                          wall_seconds=round(seconds, 1), jobs=1, exit_code=exit_code,
                          builds=entries)
    try:
        write_summary(summary, summary_file)
    except OSError as exc:
        log.warning("cannot write %s: %s", summary_file, exc.strerror or exc)


def manifest_stat(output_dir: Path) -> tuple[int, int] | None:
    """What tells an earlier build's manifest.json from the one a build is about to write."""
    return _stat(output_dir / "manifest.json")


# Hidden option of `azbuild build`: the build's id and time (see child_argv).
BUILD_IDENTITY = "--build-identity"


def format_build_identity(build: BuildInfo) -> str:
    return f"{build.id}@{build.time.isoformat()}"


def parse_build_identity(text: str) -> BuildInfo:
    from builder.template import BuildInfo

    build_id, _, when = text.partition("@")
    try:
        return BuildInfo(id=build_id, time=datetime.fromisoformat(when))
    except ValueError:
        raise UsageError(f"{BUILD_IDENTITY} expects ID@ISO-TIME, found {text!r}") from None


# Hidden option of `azbuild build`: the var files are shared with other templates, so a
# name this template does not declare is skipped (the parent checked that one does).
SHARED_VAR_FILES = "--shared-var-files"


def collisions(jobs: Sequence[Job]) -> list[str]:
    """Two builds with one name or one output directory would overwrite each other."""
    problems: list[str] = []
    for attribute, what in (("name", "name"), ("output_dir", "output directory")):
        seen: dict[object, Job] = {}
        for job in jobs:
            other = seen.setdefault(getattr(job, attribute), job)
            if other is not job:
                problems.append(f"{other.template} and {job.template} have the same {what} "
                                f"({getattr(job, attribute)})")
    return problems


def summary_path(jobs: Sequence[Job], output_dir: Path | None) -> Path:
    """--output-dir's summary.json; without it, the deepest directory holding every
    build's output directory (output/ for the default output/<name> of each)."""
    if output_dir is not None:
        return output_dir.absolute() / SUMMARY_FILE
    return Path(os.path.commonpath([str(j.output_dir) for j in jobs])) / SUMMARY_FILE


# --- the memory slot -----------------------------------------------------------------------


def mem_available(meminfo: Path = MEMINFO) -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    for line in meminfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "MemAvailable":
            return int(value.split()[0]) * 1024
    raise UsageError(f"no MemAvailable in {meminfo}", hint="azbuild needs Linux 3.14 or later")


@dataclass(frozen=True)
class Decision:
    start: bool
    reason: str


def memory_decision(needed: int, available: int, reserved: int, running: int,
                    margin: int = MEMORY_MARGIN) -> Decision:
    """Whether a build needing `needed` bytes of guest memory starts now: it fits in the
    available memory minus what running builds reserved minus the margin. One that can
    never fit starts when nothing else runs (its own boot says what fails)."""
    free = available - reserved - margin
    said = (f"needs {_gib(needed)} + {_gib(margin)} margin; {_gib(available)} available, "
            f"{_gib(reserved)} reserved by {running} running build(s)")
    if needed <= free:
        return Decision(True, said)
    if running == 0:
        return Decision(True, f"does not fit in memory ({said}); starting it anyway, "
                        "alone")
    return Decision(False, said)


def _gib(size: int) -> str:
    return f"{size / GiB:.1f}GiB"


# --- running -------------------------------------------------------------------------------


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen[bytes]
    started: float
    manifest_before: tuple[int, int] | None
    relay: threading.Thread
    stopped: bool = False


@dataclass
class Outcome:
    job: Job
    exit_code: int | None = None  # None: not started
    duration: float | None = None
    stopped: bool = False  # we sent it SIGTERM
    manifest_before: tuple[int, int] | None = None


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_mtime_ns, st.st_ino


class Runner:
    """Starts the jobs' children in order (first come, first served: a waiting build is
    not overtaken), at most `limit` at once and as memory allows; relays their output."""

    def __init__(self, jobs: Sequence[Job], limit: int, log_format: str,
                 relay: Callable[[str], None], *,
                 available: Callable[[], int] = mem_available,
                 margin: int = MEMORY_MARGIN, poll: float = 0.2) -> None:
        self.pending = list(jobs)
        self.limit = max(limit, 1)
        self.log_format = log_format
        self.relay = relay
        self.available = available
        self.margin = margin
        self.poll = poll
        self.running: list[_Running] = []
        self.outcomes: dict[str, Outcome] = {j.name: Outcome(j) for j in jobs}
        self._said_waiting: set[str] = set()
        self._relay_lock = threading.Lock()

    def run(self) -> None:
        """Run every job; on KeyboardInterrupt or Terminated, stop the running ones (SIGTERM),
        wait for their cleanup, start no other, and re-raise."""
        try:
            while self.pending or self.running:
                self._start_what_fits()
                self._reap()
                time.sleep(self.poll)
        except (KeyboardInterrupt, Terminated):
            self.stop()
            raise

    def stop(self) -> None:
        self.pending.clear()
        for r in self.running:
            if r.process.poll() is None and not r.stopped:
                log.info("[%s] stopping: SIGTERM to pid %d", r.job.name, r.process.pid,
                         extra=_tags(r.job.name))
                r.stopped = True
                with contextlib.suppress(ProcessLookupError):
                    r.process.send_signal(signal.SIGTERM)
        while self.running:
            try:
                self._reap()
                time.sleep(self.poll)
            except (KeyboardInterrupt, Terminated):
                # One SIGTERM each is enough: a second could cut their cleanup short.
                log.warning("still waiting for %d build(s) to clean up",
                            len(self.running))

    def _start_what_fits(self) -> None:
        while self.pending and len(self.running) < self.limit:
            job = self.pending[0]
            reserved = sum(r.job.memory for r in self.running)
            decision = memory_decision(job.memory, self.available(), reserved,
                                       len(self.running), self.margin)
            if not decision.start:
                if job.name not in self._said_waiting:
                    self._said_waiting.add(job.name)
                    log.info("[%s] waiting for memory: %s", job.name, decision.reason,
                             extra=_tags(job.name))
                return
            self.pending.pop(0)
            self._start(job, decision)

    def _start(self, job: Job, decision: Decision) -> None:
        level = logging.INFO if "anyway" not in decision.reason else logging.WARNING
        log.log(level, "[%s] starting %s: %s", job.name, job.template, decision.reason,
                extra=_tags(job.name))
        before = manifest_stat(job.output_dir)
        # Its own session: a terminal's Ctrl-C reaches the parent only, which forwards one
        # SIGTERM (a second signal during a child's cleanup could cut it short). No signal
        # mask here: the child would inherit it and never see the SIGTERM.
        process = subprocess.Popen(job.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        assert process.stdout is not None
        thread = threading.Thread(target=self._relay_lines, args=(job.name, process.stdout),
                                  name=f"relay-{job.name}", daemon=True)
        thread.start()
        self.running.append(_Running(job, process, time.monotonic(), before, thread))

    def _reap(self) -> None:
        for r in list(self.running):
            code = r.process.poll()
            if code is None:
                continue
            r.relay.join(timeout=5)
            self.running.remove(r)
            outcome = self.outcomes[r.job.name]
            outcome.exit_code = code
            outcome.duration = time.monotonic() - r.started
            outcome.stopped = r.stopped
            outcome.manifest_before = r.manifest_before
            log.info("[%s] finished with exit code %d after %.1fs", r.job.name, code,
                     outcome.duration, extra=_tags(r.job.name))

    def _relay_lines(self, name: str, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            text = tag_line(name, line, self.log_format)
            with self._relay_lock:
                self.relay(text)
        stream.close()


def _tags(name: str) -> dict[str, str]:
    """The fields of the parent's own records about a build (JSON format)."""
    return {"build": name, "build_name": name}


def tag_line(name: str, line: str, log_format: str) -> str:
    """A child's log line, tagged with its build's name: `[name] line` in text; in JSON a
    `build` field (a line that is not a JSON object becomes one, as its message)."""
    if log_format != "json":
        return f"[{name}] {line}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        record = {"time": round(time.time(), 3), "level": "info", "logger": "azbuild.child",
                  "message": line}
    record.setdefault("build", name)
    return json.dumps(record)


# --- the outcome ---------------------------------------------------------------------------


def entry(outcome: Outcome) -> BuildEntry:
    job = outcome.job
    status: BuildStatus
    if outcome.exit_code is None:
        status = "not started"
    elif outcome.exit_code == EXIT_OK and not outcome.stopped:
        status = "succeeded"
    elif outcome.stopped or outcome.exit_code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        status = "interrupted"
    else:
        status = "failed"
    manifest = manifest_of(job.output_dir) if outcome.exit_code is not None else None
    if manifest is not None and _stat(manifest) == outcome.manifest_before:
        manifest = None  # an earlier build's: this one wrote none
    return entry_from_manifest(name=job.name, template=job.template, output_dir=job.output_dir,
                               status=status, exit_code=outcome.exit_code,
                               duration=outcome.duration, manifest_path=manifest)


def exit_code_of(entries: Sequence[BuildEntry], interrupt: BaseException | None) -> int:
    if isinstance(interrupt, Terminated):
        return EXIT_TERMINATED
    if interrupt is not None:
        return EXIT_INTERRUPTED
    failed = [e for e in entries if e.status != "succeeded"]
    if failed and all(e.exit_code == EXIT_INPUT_UNAVAILABLE for e in failed):
        return EXIT_INPUT_UNAVAILABLE  # nothing but unavailable inputs: say so, as one build does
    return EXIT_FAILED if failed else EXIT_OK


def run_builds(jobs: Sequence[Job], limit: int, log_format: str, summary_file: Path,
               relay: Callable[[str], None], show: Callable[[Summary], None],
               **runner_options: object) -> int:
    """Run the jobs, then write summary.json and show the summary, however the run ends;
    the exit code (an interrupt is re-raised after the summary, for the CLI to report)."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    runner = Runner(jobs, limit, log_format, relay, **runner_options)  # type: ignore[arg-type]
    interrupt: BaseException | None = None
    try:
        runner.run()
    except (KeyboardInterrupt, Terminated) as exc:
        interrupt = exc
    entries = [entry(runner.outcomes[j.name]) for j in jobs]
    code = exit_code_of(entries, interrupt)
    summary = new_summary(started=started.isoformat(timespec="seconds"),
                          finished=datetime.now(UTC).isoformat(timespec="seconds"),
                          wall_seconds=round(time.monotonic() - clock, 1), jobs=limit,
                          exit_code=code, builds=entries)
    try:
        write_summary(summary, summary_file)
    except OSError as exc:
        show(summary)
        raise UsageError(f"cannot write {summary_file}: {exc.strerror or exc}",
                         hint="check that the directory is writable") from None
    show(summary)
    if interrupt is not None:
        raise interrupt
    return code
