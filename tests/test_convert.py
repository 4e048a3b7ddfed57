"""Conversion to fixed VHD, checked with qemu-img: exact sizes, every source format,
in place and copying, and no partial output on failure."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from builder.errors import BuildError, UsageError
from builder.image.convert import convert_image, raw_to_vhd
from builder.image.disk import allocated_bytes
from builder.image.vhd import FOOTER_SIZE, MAX_SIZE, MIN_SIZE, parse_footer
from builder.units import GiB, MiB


def make_sparse(path: Path, size: int, chunks: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks.items():
            f.seek(offset)
            f.write(data)


def qemu_img(*args: str | Path) -> str:
    proc = subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True,
                          text=True)
    return proc.stdout


def vpc_virtual_size(path: Path) -> int:
    size: int = json.loads(qemu_img("info", "-f", "vpc", "--output", "json", path))[
        "virtual-size"
    ]
    return size


def footer_of(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-FOOTER_SIZE, os.SEEK_END)
        return f.read()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def sample_chunks(size: int) -> dict[int, bytes]:
    """Distinct data at the start, in the middle and in the last bytes of the disk."""
    return {0: b"\xebMBR" + os.urandom(508), size // 2: os.urandom(4096),
            max(size - 700, 0): os.urandom(700)}


@contextlib.contextmanager
def tmpfs(where: Path, size_mib: int) -> Iterator[Path]:
    where.mkdir()
    argv = ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)]
    if subprocess.run(argv, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# --- raw sources: exact bytes, exact sizes ------------------------------------------------


@pytest.mark.parametrize("keep_raw", [True, False])
@pytest.mark.parametrize("size", [30 * MiB, 30 * MiB + 1, 30 * MiB + 511, 31 * MiB - 1])
def test_raw_round_trip_through_qemu(tmp_path: Path, size: int, keep_raw: bool) -> None:
    raw, vhd = tmp_path / "disk.raw", tmp_path / "disk.vhd"
    chunks = sample_chunks(size)
    make_sparse(raw, size, chunks)
    original = raw.read_bytes()
    expected_size = -(-size // MiB) * MiB

    assert raw_to_vhd(raw, vhd, keep_raw=keep_raw, force=False) == vhd

    assert raw.exists() == keep_raw
    assert vhd.stat().st_size == expected_size + FOOTER_SIZE
    assert vpc_virtual_size(vhd) == expected_size
    back = tmp_path / "back.raw"
    qemu_img("convert", "-f", "vpc", "-O", "raw", vhd, back)
    assert back.read_bytes() == original + bytes(expected_size - size)
    footer = parse_footer(footer_of(vhd))
    assert footer.current_size == footer.original_size == expected_size
    assert footer.checksum_ok and footer.disk_type == 2
    assert leftovers(tmp_path) == []


def test_in_place_keeps_the_inode_and_allocates_nothing_new(tmp_path: Path) -> None:
    raw, vhd = tmp_path / "disk.raw", tmp_path / "disk.vhd"
    make_sparse(raw, 64 * GiB, {GiB: os.urandom(MiB)})
    inode, allocated = raw.stat().st_ino, allocated_bytes(raw)
    raw_to_vhd(raw, vhd, keep_raw=False, force=False)
    assert vhd.stat().st_ino == inode
    assert allocated_bytes(vhd) <= allocated + 64 * 1024  # just the footer's block
    assert vpc_virtual_size(vhd) == 64 * GiB


def test_copy_stays_sparse(tmp_path: Path) -> None:
    raw, vhd = tmp_path / "disk.raw", tmp_path / "disk.vhd"
    make_sparse(raw, 8 * GiB, {n * GiB: os.urandom(MiB) for n in range(8)})
    raw_to_vhd(raw, vhd, keep_raw=True, force=False)
    assert allocated_bytes(vhd) <= allocated_bytes(raw) + MiB
    with open(raw, "rb") as a, open(vhd, "rb") as b:
        for n in range(8):
            a.seek(n * GiB)
            b.seek(n * GiB)
            assert a.read(MiB) == b.read(MiB)


@settings(max_examples=25, deadline=None)
@given(
    mib=st.integers(min_value=20, max_value=2040 * 1024),
    extra=st.sampled_from([0, 1, 511, 512, MiB - 1]),
    keep_raw=st.booleans(),
)
@example(mib=19, extra=MiB - 1, keep_raw=True)  # just under 20 MiB: rounds up to 20
@example(mib=20, extra=0, keep_raw=False)
@example(mib=2040 * 1024, extra=0, keep_raw=True)  # 2040 GiB exactly
@example(mib=2040 * 1024 - 1, extra=1, keep_raw=False)  # rounds up to 2040 GiB
def test_any_valid_size_converts_exactly(
    tmp_path_factory: pytest.TempPathFactory, mib: int, extra: int, keep_raw: bool
) -> None:
    size = mib * MiB + extra
    expected = -(-size // MiB) * MiB
    if expected > MAX_SIZE:
        return
    work = tmp_path_factory.mktemp("size")
    raw, vhd = work / "disk.raw", work / "disk.vhd"
    chunks = {0: b"first", size - 4: b"last"}
    make_sparse(raw, size, chunks)
    raw_to_vhd(raw, vhd, keep_raw=keep_raw, force=False)
    assert vhd.stat().st_size == expected + FOOTER_SIZE
    assert vpc_virtual_size(vhd) == expected
    with open(vhd, "rb") as f:
        assert f.read(5) == b"first"
        f.seek(size - 4)
        assert f.read(4) == b"last"
        assert f.read(expected - size) == bytes(expected - size)
    assert allocated_bytes(vhd) < 4 * MiB
    assert leftovers(work) == []


@pytest.mark.parametrize(
    ("size", "message"),
    [(MIN_SIZE - MiB, "under Azure's minimum"), (MAX_SIZE + 1, "over the maximum")],
)
@pytest.mark.parametrize("keep_raw", [True, False])
def test_sizes_out_of_bounds_are_refused(
    tmp_path: Path, size: int, message: str, keep_raw: bool
) -> None:
    raw, vhd = tmp_path / "disk.raw", tmp_path / "disk.vhd"
    make_sparse(raw, size, {})
    with pytest.raises(UsageError, match=message):
        raw_to_vhd(raw, vhd, keep_raw=keep_raw, force=False)
    assert raw.stat().st_size == size
    assert not vhd.exists() and leftovers(tmp_path) == []


# --- other sources -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("qcow2", []),
        ("vhdx", []),
        ("vpc", []),  # dynamic VHD: qemu pads its size to a CHS geometry
        ("vpc", ["-o", "subformat=fixed"]),  # fixed VHD, CHS-padded size
        ("vpc", ["-o", "subformat=fixed,force_size"]),
    ],
)
def test_other_sources_convert_to_the_same_disk(
    tmp_path: Path, fmt: str, options: list[str]
) -> None:
    raw = tmp_path / "disk.raw"
    size = 25 * MiB + 512
    make_sparse(raw, size, sample_chunks(size))
    src = tmp_path / f"src.{fmt}"
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, raw, src)
    src_virtual = json.loads(qemu_img("info", "-f", fmt, "--output", "json", src))["virtual-size"]
    vhd = tmp_path / "out.vhd"

    assert convert_image(src, vhd) == vhd

    expected = -(-src_virtual // MiB) * MiB
    assert vpc_virtual_size(vhd) == expected
    back = tmp_path / "back.raw"
    qemu_img("convert", "-f", "vpc", "-O", "raw", vhd, back)
    data = back.read_bytes()
    assert data[:size] == raw.read_bytes()
    assert data[size:] == bytes(expected - size)
    assert parse_footer(footer_of(vhd)).creator_app == b"azbd"
    assert leftovers(tmp_path) == []


def test_convert_leaves_the_source_alone(tmp_path: Path) -> None:
    raw, vhd = tmp_path / "disk.raw", tmp_path / "disk.vhd"
    make_sparse(raw, 21 * MiB, {0: b"x"})
    before = raw.read_bytes()
    convert_image(raw, vhd)
    assert raw.read_bytes() == before
    assert vhd.stat().st_size == 21 * MiB + 512


def test_raw_to_vhd_refuses_a_non_raw_source(tmp_path: Path) -> None:
    src = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", src, "30M")
    with pytest.raises(UsageError, match="not a raw disk"):
        raw_to_vhd(src, tmp_path / "d.vhd", keep_raw=False, force=False)
    assert src.exists()


# --- refusals and atomicity ----------------------------------------------------------------


def test_missing_source_and_same_file_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        convert_image(tmp_path / "nope.raw", tmp_path / "x.vhd")
    with pytest.raises(UsageError, match="not a regular file"):
        convert_image(tmp_path, tmp_path / "x.vhd")
    raw = tmp_path / "disk.raw"
    make_sparse(raw, 20 * MiB, {})
    with pytest.raises(UsageError, match="same file"):
        convert_image(raw, raw, force=True)
    assert raw.stat().st_size == 20 * MiB


@pytest.mark.parametrize("source", ["disk.raw", "disk.qcow2"])
def test_a_destination_that_takes_no_file_exits_2(
    tmp_path: Path, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """/proc takes no new file (ENOENT): the destination is the user's to change, as the
    exit-code table says (2), not a failed conversion (1)."""
    from builder.cli import main

    raw = tmp_path / "disk.raw"
    make_sparse(raw, 20 * MiB, {0: b"data"})
    if source == "disk.qcow2":
        qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, tmp_path / source)
    assert main(["convert", str(tmp_path / source), "/proc/x.vhd"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot write /proc/x.vhd: No such file or directory" in err
    assert "hint: choose a destination you can write" in err


@pytest.mark.parametrize("keep_raw", [True, False])
def test_existing_destination_is_kept_without_force(tmp_path: Path, keep_raw: bool) -> None:
    raw, vhd = tmp_path / "disk.raw", tmp_path / "disk.vhd"
    make_sparse(raw, 20 * MiB, {0: b"new"})
    vhd.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists"):
        raw_to_vhd(raw, vhd, keep_raw=keep_raw, force=False)
    with pytest.raises(UsageError, match="already exists"):
        convert_image(raw, vhd)
    assert vhd.read_bytes() == b"precious"
    assert raw.exists()
    raw_to_vhd(raw, vhd, keep_raw=keep_raw, force=True)
    assert vpc_virtual_size(vhd) == 20 * MiB


def test_disk_full_leaves_no_partial_output(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    make_sparse(raw, 64 * MiB, {n * MiB: os.urandom(MiB) for n in range(0, 64, 2)})
    with tmpfs(tmp_path / "small", 8) as mnt:
        (mnt / "disk.vhd").write_bytes(b"old")
        with pytest.raises(BuildError, match="No space left") as info:
            convert_image(raw, mnt / "disk.vhd", force=True)
        assert info.value.hint and "free space" in info.value.hint
        assert (mnt / "disk.vhd").read_bytes() == b"old"
        assert sorted(p.name for p in mnt.iterdir()) == ["disk.vhd"]


def test_disk_full_during_in_place_conversion_restores_the_raw(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", 24) as mnt:
        raw = mnt / "disk.raw"
        data = os.urandom(MiB)
        make_sparse(raw, 30 * MiB + 100, {0: data})
        # Fill the filesystem so that not even the footer's page fits.
        with open(mnt / "filler", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(bytes(64 * 1024))
                f.flush()
        with pytest.raises(BuildError, match="No space left"):
            raw_to_vhd(raw, mnt / "disk.vhd", keep_raw=False, force=False)
        assert raw.stat().st_size == 30 * MiB + 100
        with open(raw, "rb") as f:
            assert f.read(MiB) == data
        assert sorted(p.name for p in mnt.iterdir()) == ["disk.raw", "filler"]


def test_a_corrupt_qcow2_is_refused_before_any_output(tmp_path: Path) -> None:
    raw, src = tmp_path / "disk.raw", tmp_path / "broken.qcow2"
    make_sparse(raw, 40 * MiB, {n * MiB: os.urandom(MiB) for n in range(40)})
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, src)
    with open(src, "r+b") as f:  # point the first L2 table at an unaligned offset
        l1_offset = int.from_bytes(f.read(48)[40:48], "big")
        f.seek(l1_offset)
        f.write((0x8000_0000_0000_0200).to_bytes(8, "big"))
    with pytest.raises(UsageError, match=r"broken\.qcow2 \(qcow2\) is corrupt: qemu-img check"):
        convert_image(src, tmp_path / "out.vhd")
    assert not (tmp_path / "out.vhd").exists()
    assert leftovers(tmp_path) == []


def test_ctrl_c_during_a_copy_leaves_no_partial_output(tmp_path: Path) -> None:
    raw, vhd = tmp_path / "disk.raw", tmp_path / "disk.vhd"
    # 128 MiB to copy and fsync: far longer than the 20 ms before Ctrl-C arrives.
    make_sparse(raw, GiB, {n * 8 * MiB: b"\x5a" * (2 * MiB) for n in range(64)})
    # A process started in the background by a non-interactive shell inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: install Python's own.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            raw_to_vhd(raw, vhd, keep_raw=True, force=False)
            time.sleep(5)  # finished before the signal: let it arrive, the test then fails
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert not vhd.exists()
    assert leftovers(tmp_path) == []
    assert raw.stat().st_size == GiB
