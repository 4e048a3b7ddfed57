"""Sizes and durations: parsing, formatting, and the schema patterns that mirror the parsers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.units import (
    DURATION_PATTERN,
    SIZE_PATTERN,
    GiB,
    KiB,
    MiB,
    TiB,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30GiB", 30 * GiB),
        ("512MiB", 512 * MiB),
        ("512mib", 512 * MiB),
        ("4K", 4 * KiB),
        ("2T", 2 * TiB),
        ("1.5GiB", 1536 * MiB),
        ("100", 100),
        ("100B", 100),
        (" 20 MiB ", 20 * MiB),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30GiX", "unknown size unit 'GiX'"),
        ("-5GiB", "cannot be negative"),
        (-1, "cannot be negative"),
        ("GiB", "expected a size such as '30GiB'"),
        ("", "expected a size"),
        (True, "expected a size"),
        (1.5, "expected a size"),
        ("1e3", "expected a size such as '30GiB'"),
        ("10GB", "decimal unit 'GB' in '10GB': sizes use binary units; did you mean 10GiB?"
                 " Azure needs whole MiB"),
        ("10 GB", "did you mean 10GiB?"),
        ("512MB", "did you mean 512MiB?"),
        ("4kB", "did you mean 4KiB?"),
        ("2tb", "did you mean 2TiB?"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_size(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45m", 2700.0),
        ("90s", 90.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2d", 172800.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("120", 120.0),
        (120, 120.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("45 minutes", "expected a duration such as '45m'"),
        ("m45", "expected a duration"),
        ("", "expected a duration"),
        ("-5m", "cannot be negative"),
        (-3, "cannot be negative"),
        (False, "expected a duration"),
        ([1], "expected a duration"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)


@pytest.mark.parametrize(
    ("size", "text"),
    [(30 * GiB, "30GiB"), (512 * MiB, "512MiB"), (1536 * MiB, "1536MiB"), (100, "100B"),
     (0, "0B"), (3 * TiB, "3TiB")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(3600.0, "1h"), (5400.0, "1h30m"), (90.0, "1m30s"), (0.0, "0s"), (0.5, "0.5s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=2**50))
def test_size_round_trip(size: int) -> None:
    text = format_size(size)
    assert parse_size(text) == size
    assert re.match(SIZE_PATTERN, text)


@given(st.integers(min_value=0, max_value=10**7))
def test_duration_round_trip(seconds: int) -> None:
    text = format_duration(float(seconds))
    assert parse_duration(text) == seconds
    assert re.match(DURATION_PATTERN, text)


@pytest.mark.parametrize("text", ["30GiB", "512mib", "4K", "1.5GiB", "100", " 20 MiB ", "1B"])
def test_schema_pattern_accepts_what_the_parser_accepts(text: str) -> None:
    assert re.match(SIZE_PATTERN, text)


@pytest.mark.parametrize("text", ["45m", "1h30m", "1h 30m", "500ms", "120"])
def test_duration_pattern_accepts_what_the_parser_accepts(text: str) -> None:
    assert re.match(DURATION_PATTERN, text)


@pytest.mark.parametrize("text", ["30GiX", "-5GiB", "GiB", "45 minutes", "m45", "10GB", "1kB"])
def test_patterns_reject_what_the_parsers_reject(text: str) -> None:
    assert not re.match(SIZE_PATTERN, text)
    assert not re.match(DURATION_PATTERN, text)
    for parse in (parse_size, parse_duration):
        with pytest.raises(ValueError):
            parse(text)
