"""Terminal tables: columns padded to their widest cell, the last column left free."""

from __future__ import annotations

from builder.report.table import aligned


def test_columns_are_padded_to_the_widest_cell_and_the_last_is_not() -> None:
    rows = [("ID", "requirement", "status", "evidence"),
            ("R01", "fixed-format VHD", "PASS", "footer says fixed"),
            ("R10", "sshd", "FAIL", "")]
    assert aligned(rows) == [
        "ID   requirement       status  evidence",
        "R01  fixed-format VHD  PASS    footer says fixed",
        "R10  sshd              FAIL    ",
    ]


def test_two_columns() -> None:
    assert aligned([("KEY", "DESCRIPTION"), ("abc", "x")]) == ["KEY  DESCRIPTION", "abc  x"]
