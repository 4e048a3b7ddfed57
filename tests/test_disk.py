"""Image format detection, sparse copies (with and without reflink), atomic outputs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.errors import UsageError
from builder.image.disk import allocated_bytes, atomic_output, copy_sparse, detect_image_format
from builder.image.vhd import build_footer
from builder.units import MiB


def make_sparse(path: Path, size: int, chunks: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks.items():
            f.seek(offset)
            f.write(data)


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def tmp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@contextlib.contextmanager
def mounted(kind: str, where: Path, size_mib: int) -> Iterator[Path]:
    """A small real filesystem (tmpfs, or XFS with reflink on a loop file); skips when
    this machine cannot mount one."""
    where.mkdir()
    if kind == "tmpfs":
        argv = ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)]
    else:
        if shutil.which("mkfs.xfs") is None:
            pytest.skip("mkfs.xfs not installed")
        image = where.with_suffix(".img")
        with open(image, "wb") as f:
            f.truncate(size_mib * MiB)
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
        argv = ["mount", "-o", "loop", str(image), str(where)]
    if subprocess.run(argv, capture_output=True).returncode != 0:
        pytest.skip(f"cannot mount {kind} here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# --- format detection ---------------------------------------------------------------------


def test_detects_every_format(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    make_sparse(raw, 24 * MiB, {MiB: b"data" * 100})
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, tmp_path / "d.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "vhdx", raw, tmp_path / "d.vhdx")
    qemu_img("convert", "-f", "raw", "-O", "vpc", raw, tmp_path / "dyn.vhd")
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size",
             raw, tmp_path / "fixed.vhd")
    found = {
        name: detect_image_format(tmp_path / name)
        for name in ("disk.raw", "d.qcow2", "d.vhdx", "dyn.vhd", "fixed.vhd")
    }
    assert {n: (f.name, f.qemu_format) for n, f in found.items()} == {
        "disk.raw": ("raw", "raw"),
        "d.qcow2": ("qcow2", "qcow2"),
        "d.vhdx": ("vhdx", "vhdx"),
        "dyn.vhd": ("vhd-dynamic", "vpc"),
        "fixed.vhd": ("vhd-fixed", "vpc"),
    }
    assert "offset 0" in found["d.qcow2"].evidence
    assert f"offset {24 * MiB}" in found["fixed.vhd"].evidence


def test_detects_tiny_and_empty_files_as_raw(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "tiny").write_bytes(b"conectix")
    assert detect_image_format(tmp_path / "empty").name == "raw"
    assert detect_image_format(tmp_path / "tiny").name == "raw"


def test_our_footer_makes_a_fixed_vhd(tmp_path: Path) -> None:
    path = tmp_path / "x.vhd"
    make_sparse(path, 20 * MiB, {20 * MiB: build_footer(20 * MiB)})
    assert detect_image_format(path).name == "vhd-fixed"


# --- sparse copies ------------------------------------------------------------------------


def test_copy_sparse_copies_data_and_keeps_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    chunks = {0: os.urandom(4096), 5 * MiB: os.urandom(MiB), 63 * MiB + 12345: b"tail"}
    make_sparse(src, 64 * MiB, chunks)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        copy_sparse(src, fd)
    finally:
        os.close(fd)
    assert dst.read_bytes() == src.read_bytes()
    assert allocated_bytes(dst) <= allocated_bytes(src) + MiB  # the goal: input + 1 MiB
    assert allocated_bytes(dst) < 2 * MiB  # 64 MiB apparent, about 1 MiB of data


def test_copy_sparse_with_length_copies_a_prefix(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_sparse(src, 3 * MiB, {0: b"a" * MiB, 2 * MiB: b"b" * MiB})
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        copy_sparse(src, fd, length=2 * MiB + 10)
        with pytest.raises(ValueError):
            copy_sparse(src, fd, length=4 * MiB)
    finally:
        os.close(fd)
    assert dst.read_bytes() == src.read_bytes()[: 2 * MiB + 10]


def test_copy_sparse_of_an_all_hole_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_sparse(src, 1 << 40, {})  # 1 TiB, nothing allocated
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        copy_sparse(src, fd)
    finally:
        os.close(fd)
    assert dst.stat().st_size == 1 << 40
    assert allocated_bytes(dst) == 0


def test_copy_sparse_across_filesystems_falls_back_to_read_write(tmp_path: Path) -> None:
    src = tmp_path / "src"
    data = os.urandom(MiB)
    make_sparse(src, 8 * MiB, {3 * MiB: data})
    with mounted("tmpfs", tmp_path / "t", 32) as mnt:
        dst = mnt / "dst"
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            copy_sparse(src, fd)
        finally:
            os.close(fd)
        assert dst.read_bytes() == src.read_bytes()
        assert allocated_bytes(dst) <= 2 * MiB


def test_copy_sparse_reflinks_where_the_filesystem_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="builder.image.disk")
    with mounted("xfs", tmp_path / "x", 320) as mnt:
        src, dst = mnt / "src", mnt / "dst"
        make_sparse(src, 40 * MiB, {MiB: os.urandom(8 * MiB)})
        os.sync()
        free_before = shutil.disk_usage(mnt).free
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            copy_sparse(src, fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        assert dst.read_bytes() == src.read_bytes()
        # A reflink shares the 8 MiB of extents: free space barely moves.
        assert free_before - shutil.disk_usage(mnt).free < MiB
        assert "reflinked" in caplog.text


# --- atomic outputs -----------------------------------------------------------------------


def test_atomic_output_renames_on_success(tmp_path: Path) -> None:
    dst = tmp_path / "out.vhd"
    with atomic_output(dst, force=False) as tmp:
        assert tmp.parent == tmp_path and tmp.exists() and not dst.exists()
        tmp.write_bytes(b"done")
    assert dst.read_bytes() == b"done"
    assert tmp_files(tmp_path) == []


def test_atomic_output_refuses_an_existing_file_unless_forced(tmp_path: Path) -> None:
    dst = tmp_path / "out.vhd"
    dst.write_bytes(b"old")
    with pytest.raises(UsageError, match="already exists"), atomic_output(dst, force=False):
        pytest.fail("must not be reached")
    assert dst.read_bytes() == b"old"
    with atomic_output(dst, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new"


def test_atomic_output_refuses_a_destination_that_appears_meanwhile(tmp_path: Path) -> None:
    dst = tmp_path / "out.vhd"
    with pytest.raises(UsageError), atomic_output(dst, force=False) as tmp:
        tmp.write_bytes(b"mine")
        dst.write_bytes(b"theirs")
    assert dst.read_bytes() == b"theirs"
    assert tmp_files(tmp_path) == []


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt(), SystemExit(1)])
def test_atomic_output_removes_the_temp_file_on_any_exception(
    tmp_path: Path, exc: BaseException
) -> None:
    dst = tmp_path / "out.vhd"
    with pytest.raises(type(exc)), atomic_output(dst, force=True) as tmp:
        tmp.write_bytes(b"partial")
        raise exc
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_refuses_directories(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"), atomic_output(tmp_path, force=True):
        pass
    with pytest.raises(UsageError, match="does not exist"), atomic_output(
        tmp_path / "missing" / "x.vhd", force=True
    ):
        pass


def test_allocated_bytes_counts_blocks_not_length(tmp_path: Path) -> None:
    path = tmp_path / "f"
    make_sparse(path, 100 * MiB, {50 * MiB: b"x" * MiB})
    assert MiB <= allocated_bytes(path) <= MiB + 64 * 1024


def test_copy_sparse_with_many_pieces_in_flight(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    chunks = {n * 2 * MiB + n: os.urandom(65536) for n in range(48)}  # more than the workers
    chunks[100 * MiB] = os.urandom(40 * MiB)  # one range, several pieces
    make_sparse(src, 150 * MiB, chunks)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        copy_sparse(src, fd)
    finally:
        os.close(fd)
    assert dst.read_bytes() == src.read_bytes()
    assert allocated_bytes(dst) <= allocated_bytes(src) + MiB  # the goal: input + 1 MiB
