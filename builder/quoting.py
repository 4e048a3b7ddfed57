"""The one shell-quoting filter (`shquote`) of every Jinja environment that writes shell:
answer files and the Azure preparation scripts."""

from __future__ import annotations

import shlex


def shell_quote(value: object) -> str:
    """Quote one word for bash; plain words stay readable."""
    return shlex.quote(str(value))
