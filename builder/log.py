"""Logging setup: text (rich on a terminal) or JSON lines, secrets masked, step timing."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from builder.redact import RedactingFilter

ROOT = "azbuild"
# Our modules log under their import names (`builder.vm.ssh`, `builder.answers`) and the
# CLI under "azbuild"; all three trees get the same handlers. Third-party loggers
# (paramiko, the Azure SDK) show warnings and errors only, through a handler of the same
# format on the root logger (`_route_third_party`).
LOGGER_TREES = (ROOT, "builder", "distros")
log = logging.getLogger(ROOT)
_format = "text"  # what setup() chose; progress reporting follows it

# Optional fields a record may carry, in the order JSON lines show them: a step's timing,
# an error's hint, where a template problem is, the usage of a command-line mistake, and
# the build a record belongs to (`build`: its name, on every line of a several-template
# build, the relayed ones included).
EXTRA_FIELDS = ("step", "seconds", "hint", "template", "file", "line", "column", "key",
                "usage", "build_id", "build_name", "build", "progress")

# The build being run: (id, name). A ContextVar for the build's own thread, and a process
# copy for the threads it starts (SSH heartbeat, libvirt events), which see a fresh context.
_current_build: ContextVar[tuple[str, str] | None] = ContextVar("azbuild_build", default=None)
_process_build: list[tuple[str, str]] = []
BUILD_ATTRIBUTE = "azbuild_build"


@contextmanager
def build_scope(build_id: str, build_name: str) -> Iterator[None]:
    """Every record logged inside carries `build_id` and `build_name`."""
    token = _current_build.set((build_id, build_name))
    _process_build.append((build_id, build_name))
    try:
        yield
    except BaseException as exc:
        # The CLI reports the error after the build has returned: tell it whose error it is.
        setattr(exc, BUILD_ATTRIBUTE, {"build_id": build_id, "build_name": build_name})
        raise
    finally:
        _process_build.pop()
        _current_build.reset(token)


class BuildFilter(logging.Filter):
    """Adds the current build's id and name to each record (see build_scope)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _current_build.get() or (_process_build[-1] if _process_build else None)
        if current is not None and not hasattr(record, "build_id"):
            record.build_id, record.build_name = current
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in EXTRA_FIELDS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["traceback"] = record.exc_text
        return json.dumps(entry)


def setup(debug: bool = False, log_format: str = "text") -> None:
    global _format
    _format = log_format
    handler = _handler(log_format, logging.DEBUG if debug else logging.INFO)
    for name in LOGGER_TREES:
        tree = logging.getLogger(name)
        tree.handlers.clear()
        tree.setLevel(logging.DEBUG)
        tree.propagate = False
        tree.addHandler(handler)
    _route_third_party(log_format, debug)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record comes, not to the stream it was set
    up with: a record from a thread the SDK left behind never meets a closed stream."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _handler(log_format: str, level: int) -> logging.Handler:
    handler: logging.Handler
    if log_format == "json":
        handler = StderrHandler()
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, markup=False, rich_tracebacks=False)
    else:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                               "%H:%M:%S"))
    handler.setLevel(level)
    handler.addFilter(RedactingFilter())
    handler.addFilter(BuildFilter())
    return handler


# Third-party loggers whose debug lines --debug shows (the Azure SDK's: requests, retries,
# which credential answered); without it they show warnings and errors only.
DEBUG_THIRD_PARTY = ("azure", "msal")
_THIRD_PARTY_MARK = "azbuild_third_party"


def _route_third_party(log_format: str, debug: bool) -> None:
    """Every other library's records (the Azure SDK's, MSAL's, urllib3's, paramiko's, and
    Python warnings) go through a handler like ours, on the root logger: formatted alike
    (one JSON object per line under --log-format json) and secrets masked, instead of
    Python's last-resort handler printing bare text on stderr."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _THIRD_PARTY_MARK, False)]:
        root.removeHandler(old)
    handler = _handler(log_format, logging.DEBUG if debug else logging.WARNING)
    setattr(handler, _THIRD_PARTY_MARK, True)
    root.addHandler(handler)
    for name in DEBUG_THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.NOTSET)
    logging.captureWarnings(True)


def current_format() -> str:
    """"json" or "text", as set up for this process."""
    return _format


def add_file_handler(path: str, mode: str = "a") -> logging.Handler:
    """Everything, at debug level, into a file (the build's build.log, --log-file)."""
    handler = logging.FileHandler(path, mode=mode, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.addFilter(BuildFilter())
    for name in LOGGER_TREES:
        logging.getLogger(name).addHandler(handler)
    return handler


def remove_handler(handler: logging.Handler) -> None:
    for name in LOGGER_TREES:
        logging.getLogger(name).removeHandler(handler)
    handler.close()


@dataclass
class StepTimer:
    """Collects the duration of each step for the manifest and the final table."""

    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        log.info("==> %s", name, extra={"step": name})
        start = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - start
            self.timings[name] = round(seconds, 3)
            log.info("<== %s (%.1fs)", name, seconds, extra={"step": name, "seconds": seconds})

    def table(self) -> str:
        width = max((len(n) for n in self.timings), default=4)
        lines = [f"{'step'.ljust(width)}  seconds"]
        lines += [f"{n.ljust(width)}  {s:8.1f}" for n, s in self.timings.items()]
        lines.append(f"{'total'.ljust(width)}  {sum(self.timings.values()):8.1f}")
        return "\n".join(lines)
