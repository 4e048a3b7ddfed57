"""`azbuild fmt`: a TOML file in one canonical layout, its comments kept (as `packer fmt`).

The layout: `key = value` with one space each side of `=`, nothing indented (keys,
comments, table headers), an end-of-line comment two spaces after its value, no trailing
spaces, at most one blank line in a row, one blank line before a table header (before
the comments written just above it), none at the start of a table or the file, and one
newline at the end. Values are kept as written: strings, numbers, arrays and inline
tables (multi-line arrays and their comments included). tomlkit keeps everything else
(the layout is changed on its document, not on lines of text).
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit import items
from tomlkit.container import Container
from tomlkit.exceptions import ParseError

from builder.errors import UsageError
from builder.image.disk import atomic_output

# Stands for "one blank line here, unless there is one" before a table header, until the
# lines above the header are known (private-use characters: never in a TOML header's indent).
_HEADER = "\ue001header\ue001"
_COMMENT_GAP = "  "


def format_toml(text: str, name: str = "<text>") -> str:
    """`text` in the canonical layout; UsageError naming `name` and the line when it is not
    TOML. The result always reads as the same data as `text`."""
    try:
        document = tomlkit.parse(text)
    except ParseError as exc:
        raise UsageError(f"{name}: line {exc.line}: not TOML: {_reason(exc)}",
                         hint="fix the syntax, then run azbuild fmt again") from None
    _format_body(document)
    formatted = _place_blank_lines(document.as_string())
    if _data(formatted) != _data(text):  # a guard: fmt never changes what a file means
        raise UsageError(f"{name}: cannot be formatted without changing its data; "
                         "it is left as it is", hint="please report it")
    return formatted


def _reason(exc: ParseError) -> str:
    message = str(exc)
    return message.split(" at line ")[0]


def _data(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def _format_body(container: Container) -> None:
    """Normalise the items of one table (or the document) in place."""
    body = container.body
    kept: list[tuple[Any, items.Item]] = []
    for key, item in body:
        if isinstance(item, items.Whitespace):
            if "\n" in item.s and kept and not isinstance(kept[-1][1], items.Whitespace):
                kept.append((None, items.Whitespace("\n")))  # one blank line, however many
            continue
        if key is not None and not isinstance(item, (items.Table, items.AoT)):
            key._original = key.as_string().strip()
            key.sep = " = "
        if isinstance(item, items.Table):
            _format_table(item)
        elif isinstance(item, items.AoT):
            for table in item.body:
                _format_table(table)
        else:
            _format_trivia(item.trivia, own_line=isinstance(item, items.Comment))
        kept.append((key, item))
    while kept and isinstance(kept[0][1], items.Whitespace):
        kept.pop(0)  # no blank line right under a header
    while kept and isinstance(kept[-1][1], items.Whitespace):
        kept.pop()  # the next header brings its own
    body[:] = kept


def _format_table(table: items.Table) -> None:
    if not table.is_super_table():
        _format_trivia(table.trivia)
        table.trivia.indent = _HEADER
    _format_body(table.value)


def _format_trivia(trivia: items.Trivia, own_line: bool = False) -> None:
    trivia.indent = ""
    trivia.comment = trivia.comment.rstrip()
    trivia.comment_ws = _COMMENT_GAP if trivia.comment and not own_line else ""
    trivia.trail = "\n"


def _place_blank_lines(text: str) -> str:
    """One blank line before each header (and the comment lines right above it), none at
    the start, one newline at the end."""
    out: list[str] = []
    for line in text.split("\n"):
        if not line.startswith(_HEADER):
            out.append(line)
            continue
        header = line.removeprefix(_HEADER)
        at = len(out)
        while at > 0 and out[at - 1].startswith("#") and not _closes_string(out[at - 1]):
            at -= 1  # the comments written just above the header go with it
        if at > 0 and out[at - 1] != "":
            out.insert(at, "")
        out.append(header)
    return "\n".join(out).strip("\n") + "\n"


def _closes_string(line: str) -> bool:
    """A line that starts with # but ends a multi-line string is no comment."""
    return '"""' in line or "'''" in line


def format_files(paths: list[Path], check: bool) -> tuple[list[Path], list[str]]:
    """Format each file in place (with `check`, only find out); the files that changed (or
    would), and a problem per file that could not be read, parsed or written."""
    changed: list[Path] = []
    problems: list[str] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            problems.append(f"{path}: cannot read it: {reason}")
            continue
        try:
            formatted = format_toml(text, str(path))
        except UsageError as exc:
            problems.append(exc.message)
            continue
        if formatted == text:
            continue
        changed.append(path)
        if not check:
            try:
                _rewrite(path, formatted)
            except OSError as exc:
                problems.append(f"{path}: cannot write it: {exc.strerror or exc}")
    return changed, problems


def _rewrite(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, keeping its permission bits."""
    mode = stat.S_IMODE(path.stat().st_mode)
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, mode)
