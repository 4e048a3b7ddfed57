"""The error types azbuild raises. The CLI turns them into messages and exit codes."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


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


class TemplateError(UsageError):
    """One or more problems in a template, all reported at once."""

    def __init__(self, problems: Sequence[str], hint: str | None = None) -> None:
        self.problems = list(problems)
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


class Interrupted(AzbuildError):
    """Ctrl-C or SIGTERM; the exit code depends on which."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(f"interrupted by {signal_name}; cleaned up")
        self.exit_code = exit_code


def _tail(text: str, lines: int = 20) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept)


class Terminated(BaseException):
    """Raised by the SIGTERM handler so that cleanup unwinds exactly as for Ctrl-C."""
