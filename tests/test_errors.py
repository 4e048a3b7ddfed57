"""The message helpers of builder/errors.py."""

from __future__ import annotations

from builder.errors import indent


def test_indent_takes_a_string_or_lines_and_keeps_blank_lines() -> None:
    assert indent("a\n\nb\n") == "    a\n    \n    b"
    assert indent(["x", "y"]) == "    x\n    y"
    assert indent(line for line in ("gen",)) == "    gen"


def test_indent_by_another_prefix_and_of_nothing() -> None:
    assert indent(["expected 1", "actual   2"], "  ") == "  expected 1\n  actual   2"
    assert indent([]) == ""
    assert indent("") == ""
