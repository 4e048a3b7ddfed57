"""Shell quoting, in one place: the `shquote` filter of every Jinja environment that writes
shell (answer files and the Azure preparation scripts), and the words and command lines
Python code sends to a guest's shell or shows the user."""

from __future__ import annotations

import shlex
from collections.abc import Iterable


def shell_quote(value: object) -> str:
    """Quote one word for bash; plain words stay readable."""
    return shlex.quote(str(value))


def shell_join(words: Iterable[object]) -> str:
    """A command line of `words`, each quoted as `shell_quote` does."""
    return " ".join(shell_quote(word) for word in words)
