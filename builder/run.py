"""The one subprocess wrapper: argv lists only, logged, failures raise CommandError."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from builder.errors import CommandError, UsageError

log = logging.getLogger(__name__)


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    args = [str(a) for a in argv]
    log.debug("run: %s", " ".join(args))
    try:
        proc = subprocess.run(
            args,
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
        )
    except FileNotFoundError:
        raise UsageError(
            f"required program not found: {args[0]}",
            hint="run scripts/setup.sh to install azbuild's system packages",
        ) from None
    except subprocess.TimeoutExpired as exc:
        raise CommandError(args, -1, "", f"timed out after {exc.timeout}s") from None
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)
    return proc
