"""The error types azbuild raises. The CLI turns them into messages and exit codes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INPUT_UNAVAILABLE = 3  # a source file could not be fetched: the mirror or the network
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE: the reader of stdout went away


class AzbuildError(Exception):
    """Something went wrong that a user can understand; `hint` says what to do."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(AzbuildError):
    """The user's input is wrong: command line, missing file, bad value."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Problem:
    """One problem in a template: what is wrong, and where (each part when known)."""

    message: str
    file: Path | None = None
    key: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts = [str(self.file)] if self.file is not None else []
        if self.line is not None:
            parts.append(f"line {self.line}" + (f", column {self.column}" if self.column else ""))
        if self.key is not None:
            parts.append(self.key)
        return ": ".join([*parts, self.message])


class TemplateError(UsageError):
    """One or more problems in a template, all reported at once."""

    def __init__(self, problems: Sequence[Problem | str], hint: str | None = None) -> None:
        self.details = [p if isinstance(p, Problem) else Problem(p) for p in problems]
        self.problems = [str(p) for p in self.details]
        count = len(self.problems)
        head = "template is invalid" if count == 1 else f"template is invalid ({count} problems)"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems), hint)


class CommandError(AzbuildError):
    """An external command failed; carries argv, exit code and output tails."""

    def __init__(
        self, argv: Sequence[str], returncode: int, stdout: str = "", stderr: str = ""
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = _tail(stderr or stdout)
        msg = f"command failed with exit code {returncode}: {' '.join(self.argv)}"
        if tail:
            msg += "\n" + tail
        super().__init__(msg)


class BuildError(AzbuildError):
    """A build step failed."""


class FetchError(AzbuildError):
    """A source file (an ISO, a checksum file) could not be fetched: the input is
    unavailable, whatever the template says. `url` is what was asked for, `cause` what
    failed ("dns", "tls", "http", "timeout", "connection")."""

    exit_code = EXIT_INPUT_UNAVAILABLE

    def __init__(self, message: str, hint: str | None = None, *, url: str = "",
                 cause: str = "") -> None:
        super().__init__(message, hint)
        self.url = url
        self.cause = cause


def indent(text: str | Iterable[str], prefix: str = "    ") -> str:
    """Lines indented by four spaces (or `prefix`): quoted output (a console, a command's
    stderr, a list of findings) inside a message. `text` is one string of lines, or the
    lines."""
    lines = text.splitlines() if isinstance(text, str) else text
    return "\n".join(prefix + line for line in lines)


def _tail(text: str, lines: int = 20) -> str:
    return indent(text.rstrip().splitlines()[-lines:])


class Terminated(BaseException):
    """Raised by the SIGTERM handler so that cleanup unwinds exactly as for Ctrl-C."""
