"""Where a key is written in a TOML file, for error messages: tomllib keeps no positions.

A line scanner, not a parser: the file has already been parsed by tomllib, so it only
needs to follow table headers (`[vm]`, `[[provision]]`), keys (`cpus = 2`, dotted
`vm.cpus = 2`, keys of a one-line inline table) and skip multi-line strings.
"""

from __future__ import annotations

import re
from pathlib import Path

KeyPath = tuple[str | int, ...]

_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER_RE = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_INLINE_KEY_RE = re.compile(rf"[{{,]\s*({_PART})\s*=")


def _split(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in re.findall(_PART, dotted))


def key_lines(text: str) -> dict[KeyPath, int]:
    """Every table and key path of a TOML text -> the line (1-based) it first appears on.

    Items of an array of tables are numbered: `[[provision]]` twice gives
    ("provision", 0) and ("provision", 1).
    """
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    arrays: dict[KeyPath, int] = {}
    open_quote: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if open_quote is not None:
            if line.count(open_quote) % 2 == 1:
                open_quote = None
            continue
        header = _HEADER_RE.match(line)
        if header:
            path: KeyPath = _split(header.group(2))
            if header.group(1) == "[[":
                index = arrays.get(path, -1) + 1
                arrays[path] = index
                path = (*path, index)
            table = path
            lines.setdefault(table, number)
            continue
        key = _KEY_RE.match(line)
        if not key:
            continue
        path = (*table, *_split(key.group(1)))
        lines.setdefault(path, number)
        rest = line[key.end():]
        if rest.lstrip().startswith("{"):
            for inner in _INLINE_KEY_RE.finditer(rest):
                lines.setdefault((*path, *_split(inner.group(1))), number)
        for quote in ('"""', "'''"):
            if rest.count(quote) % 2 == 1:
                open_quote = quote
    return lines


def line_of(path: Path, key_path: KeyPath) -> int | None:
    """The line of `key_path` in the file, or of its nearest enclosing table; None if unknown."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    lines = key_lines(text)
    for end in range(len(key_path), 0, -1):
        found = lines.get(key_path[:end])
        if found is not None:
            return found
    return None
