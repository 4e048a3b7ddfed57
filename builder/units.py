"""Sizes with units and durations, parsed into plain numbers for the models."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": KiB, "kib": KiB, "m": MiB, "mib": MiB, "g": GiB, "gib": GiB, "t": TiB, "tib": TiB,
}
# Decimal units are refused: "10GB" is 9765625KiB, not a whole MiB, which Azure needs.
_DECIMAL_UNITS = {"kb": "KiB", "mb": "MiB", "gb": "GiB", "tb": "TiB"}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_size(value: object) -> int:
    """'30GiB' -> bytes. Plain integers are bytes. K/M/G/T mean KiB/MiB/GiB/TiB, as in qemu;
    decimal units (kB, MB, GB, TB) are refused with the binary unit to use instead."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '30GiB', found {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, found {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as '30GiB', found {value!r}")
    if value.strip().startswith("-"):
        raise ValueError(f"a size cannot be negative, found {value!r}")
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"expected a size such as '30GiB' or '512MiB', found {value!r}")
    number, unit = match.groups()
    binary = _DECIMAL_UNITS.get(unit.lower())
    if binary is not None:
        raise ValueError(
            f"decimal unit {unit!r} in {value!r}: sizes use binary units; did you mean"
            f" {number}{binary}? Azure needs whole MiB"
        )
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"unknown size unit {unit!r} in {value!r}; use B, KiB, MiB, GiB or TiB"
        )
    return int(float(number) * factor)


def format_size(size: int) -> str:
    """Bytes -> the largest exact IEC unit ('30GiB'), else bytes."""
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def parse_duration(value: object) -> float:
    """'1h30m', '45m', '90s' -> seconds. Plain numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '45m', found {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, found {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '45m' or '90s', found {value!r}")
    text = value.strip().replace(" ", "")
    if text.startswith("-"):
        raise ValueError(f"a duration cannot be negative, found {value!r}")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)  # a number in a string is seconds, as a bare number is
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"expected a duration such as '45m', '90s' or '1h30m', found {value!r}"
        )
    return total


def format_duration(seconds: float) -> str:
    """Seconds -> '1h30m', '45m', '90s'."""
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    parts = []
    for unit, factor in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= factor:
            parts.append(f"{whole // factor}{unit}")
            whole %= factor
    return "".join(parts) or "0s"


def _size_validator(value: Any) -> int:
    return parse_size(value)


def _duration_validator(value: Any) -> float:
    # A template's durations are all timeouts: 0 would fail the wait at once.
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError(f"a timeout of 0 would end the wait at once; give a duration such "
                         f"as '30m', found {value!r}")
    return seconds


# JSON Schema patterns accepting what the parsers accept (JSON Schema regexes have no
# case-insensitive flag, hence the character classes). "format" marks the kind of value
# for the schema's readers (docgen, editors); validators ignore unknown formats.
SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([KkMmGgTt]([Ii][Bb])?|[Bb])?\s*$"
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?\s*(ms|s|m|h|d)\s*)+)$"
SIZE_FORMAT = "size"
DURATION_FORMAT = "duration"

Size = Annotated[
    int,
    BeforeValidator(_size_validator),
    PlainSerializer(format_size, return_type=str),
    WithJsonSchema(
        {"type": ["string", "integer"], "minimum": 0, "pattern": SIZE_PATTERN,
         "format": SIZE_FORMAT,
         "description": "a size: bytes, or a number with a unit (KiB, MiB, GiB, TiB)"}
    ),
]
Duration = Annotated[
    float,
    BeforeValidator(_duration_validator),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {"type": ["string", "number"], "exclusiveMinimum": 0, "pattern": DURATION_PATTERN,
         "format": DURATION_FORMAT,
         "description": "a duration: seconds, or e.g. '45m', '90s', '1h30m'"}
    ),
]
