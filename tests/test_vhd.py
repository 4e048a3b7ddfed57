"""The fixed VHD footer, byte by byte, against values computed by hand from the spec."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from builder.errors import UsageError
from builder.image.vhd import (
    FOOTER_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    aligned_size,
    build_footer,
    check_size,
    footer_checksum,
    parse_footer,
    vhd_timestamp,
)
from builder.units import GiB, MiB

# 2026-01-01T00:00:00Z is 26 years after the VHD epoch, 7 of them leap years (2000..2024):
# (26 * 365 + 7) * 86400 = 820540800 = 0x30E87580.
WHEN = datetime(2026, 1, 1, tzinfo=UTC)
UID = bytes(range(16))
SIZE = 20 * MiB  # 0x01400000


def test_footer_bytes_match_the_hand_computed_footer() -> None:
    expected = (
        b"conectix"  # cookie
        + bytes.fromhex("00000002")  # features: reserved bit
        + bytes.fromhex("00010000")  # format version 1.0
        + b"\xff" * 8  # data offset: none, fixed disk
        + bytes.fromhex("30E87580")  # timestamp
        + b"azbd"  # creator application
        + bytes.fromhex("00000001")  # creator version
        + b"Wi2k"  # creator host OS
        + bytes.fromhex("0000000001400000")  # original size
        + bytes.fromhex("0000000001400000")  # current size
        + bytes.fromhex("FFFF10FF")  # geometry 65535 cylinders, 16 heads, 255 sectors
        + bytes.fromhex("00000002")  # disk type: fixed
        + bytes.fromhex("FFFFEB92")  # checksum, see below
        + UID
        + b"\x00"  # saved state
        + b"\x00" * 427
    )
    # Byte sum: cookie 861, features 2, version 1, data offset 8*255=2040, timestamp
    # 0x30+0xE8+0x75+0x80=525, 'azbd' 417, creator version 1, 'Wi2k' 349, sizes 2*(1+64)=130,
    # geometry 255+255+16+255=781, disk type 2, unique id 0+1+...+15=120: total 5229 = 0x146D,
    # and ~0x0000146D = 0xFFFFEB92.
    assert 861 + 2 + 1 + 2040 + 525 + 417 + 1 + 349 + 130 + 781 + 2 + 120 == 0x146D
    footer = build_footer(SIZE, timestamp=WHEN, unique_id=UID)
    assert len(footer) == FOOTER_SIZE == len(expected)
    assert footer == expected


def test_every_field_parses_back() -> None:
    f = parse_footer(build_footer(SIZE, timestamp=WHEN, unique_id=UID))
    assert f.cookie == b"conectix" and f.cookie_ok
    assert f.features == 2
    assert f.format_version == 0x00010000
    assert f.data_offset == 0xFFFFFFFFFFFFFFFF
    assert f.timestamp == 820540800
    assert f.created == WHEN
    assert f.creator_app == b"azbd"
    assert f.creator_version == 1
    assert f.creator_host_os == b"Wi2k"
    assert f.original_size == f.current_size == SIZE
    assert (f.cylinders, f.heads, f.sectors) == (65535, 16, 255)
    assert f.disk_type == 2 and f.disk_type_name == "fixed"
    assert f.checksum == 0xFFFFEB92 and f.checksum_ok
    assert f.unique_id == UID
    assert f.saved_state == 0


def test_checksum_detects_any_changed_byte() -> None:
    footer = bytearray(build_footer(SIZE, timestamp=WHEN, unique_id=UID))
    footer[100] = 1  # a reserved byte
    parsed = parse_footer(bytes(footer))
    assert not parsed.checksum_ok
    assert parsed.computed_checksum == 0xFFFFEB91


def test_checksum_ignores_its_own_field() -> None:
    footer = build_footer(SIZE, timestamp=WHEN, unique_id=UID)
    zeroed = footer[:64] + b"\0\0\0\0" + footer[68:]
    assert footer_checksum(footer) == footer_checksum(zeroed) == 0xFFFFEB92


def test_defaults_are_now_and_a_random_unique_id() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    a, b = parse_footer(build_footer(SIZE)), parse_footer(build_footer(SIZE))
    assert a.unique_id != b.unique_id
    assert a.unique_id != bytes(16)
    assert before <= a.created <= datetime.now(UTC) + timedelta(seconds=1)


@pytest.mark.parametrize(
    "size", [MIN_SIZE - MiB, MIN_SIZE + 1, MAX_SIZE + MiB, 0, 30 * MiB + 512]
)
def test_build_footer_refuses_sizes_azure_cannot_take(size: int) -> None:
    with pytest.raises(UsageError):
        build_footer(size)


def test_check_size_messages_are_clear() -> None:
    with pytest.raises(UsageError, match="under Azure's minimum of 20 MiB"):
        check_size(19 * MiB)
    with pytest.raises(UsageError, match="over the maximum of 2040 GiB"):
        check_size(2041 * GiB)
    check_size(MIN_SIZE)
    check_size(MAX_SIZE)


def test_timestamp_bounds() -> None:
    assert vhd_timestamp(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    with pytest.raises(ValueError):
        vhd_timestamp(datetime(1999, 12, 31, tzinfo=UTC))
    with pytest.raises(ValueError):
        vhd_timestamp(datetime(2026, 1, 1))  # naive
    with pytest.raises(ValueError):
        build_footer(SIZE, unique_id=b"short")


def test_parse_footer_needs_512_bytes() -> None:
    with pytest.raises(ValueError):
        parse_footer(b"conectix")


def test_aligned_size_examples() -> None:
    assert aligned_size(0) == 0
    assert aligned_size(1) == MiB
    assert aligned_size(MiB) == MiB  # aligned: no extra MiB (the seed script's trap)
    assert aligned_size(MiB + 1) == 2 * MiB
    assert aligned_size(30 * GiB) == 30 * GiB
    assert aligned_size(30 * GiB - 511) == 30 * GiB


@given(st.integers(min_value=0, max_value=4 * 1024 * GiB))
@example(20 * MiB - 1)
@example(2040 * GiB)
@example(2040 * GiB - 511)
def test_aligned_size_is_the_smallest_mib_multiple_not_below(size: int) -> None:
    result = aligned_size(size)
    assert result % MiB == 0
    assert size <= result < size + MiB
    assert (result == size) == (size % MiB == 0)


@given(
    st.integers(min_value=MIN_SIZE // MiB, max_value=MAX_SIZE // MiB),
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2136, 1, 1), timezones=st.just(UTC)
    ),
    st.binary(min_size=16, max_size=16),
)
def test_footer_round_trip(mib: int, when: datetime, uid: bytes) -> None:
    footer = build_footer(mib * MiB, timestamp=when, unique_id=uid)
    parsed = parse_footer(footer)
    assert parsed.current_size == parsed.original_size == mib * MiB
    assert parsed.checksum_ok
    assert parsed.unique_id == uid
    assert parsed.created == when.replace(microsecond=0)
    assert struct.unpack_from(">Q", footer, 48)[0] == mib * MiB
    assert footer[85:] == bytes(427)
