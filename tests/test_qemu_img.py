"""qemu-img command lines, argument for argument, and the virtual size read by the real
qemu-img."""

from __future__ import annotations

import subprocess
from pathlib import Path

from builder.vm.qemu_img import (
    chain_to_raw_argv,
    check_argv,
    convert_to_raw_argv,
    create_overlay_argv,
    create_qcow2_argv,
    info_argv,
    raw_to_qcow2_argv,
    virtual_size,
)

MiB = 1024 * 1024


def test_check_argv() -> None:
    assert check_argv(Path("/images/a disk.qcow2"), "qcow2") == [
        "qemu-img", "check", "-f", "qcow2", "--output", "json", "/images/a disk.qcow2"]
    assert check_argv(Path("d.vhd"), "vpc") == [
        "qemu-img", "check", "-f", "vpc", "--output", "json", "d.vhd"]


def test_info_argv() -> None:
    assert info_argv(Path("/images/a disk.qcow2"), "qcow2") == [
        "qemu-img", "info", "-f", "qcow2", "--output", "json", "/images/a disk.qcow2"]


def test_convert_to_raw_argv() -> None:
    assert convert_to_raw_argv(Path("in.vhd"), "vpc", Path("/work/disk.raw")) == [
        "qemu-img", "convert", "-f", "vpc", "-O", "raw", "in.vhd", "/work/disk.raw"]


def test_create_qcow2_argv() -> None:
    # The size goes in bytes: qemu-img would read "20G" as well, but bytes are exact.
    assert create_qcow2_argv(Path("/work/disk.qcow2.tmp"), 20 * 1024**3) == [
        "qemu-img", "create", "-q", "-f", "qcow2", "/work/disk.qcow2.tmp", "21474836480"]


def test_create_overlay_argv() -> None:
    assert create_overlay_argv(Path("/cache/ab12/disk.qcow2"), Path("/work/disk-1.qcow2")) == [
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", "/cache/ab12/disk.qcow2",
        "-F", "qcow2", "/work/disk-1.qcow2"]


def test_raw_to_qcow2_argv() -> None:
    assert raw_to_qcow2_argv(Path("/work/disk.raw"), Path("/cache/tmp/disk.qcow2")) == [
        "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "/work/disk.raw",
        "/cache/tmp/disk.qcow2"]


def test_chain_to_raw_argv() -> None:
    assert chain_to_raw_argv(Path("/work/disk.qcow2"), Path("/work/disk.raw")) == [
        "qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-S", "4k", "/work/disk.qcow2",
        "/work/disk.raw"]


def test_virtual_size_of_qcow2_and_raw(tmp_path: Path) -> None:
    qcow2 = tmp_path / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "3M"], check=True)
    assert virtual_size(qcow2, "qcow2") == 3 * MiB
    raw = tmp_path / "b.raw"
    raw.write_bytes(b"\0" * 4096)
    assert virtual_size(raw, "raw") == 4096


def test_a_converted_image_keeps_its_virtual_size(tmp_path: Path) -> None:
    qcow2 = tmp_path / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "2M"], check=True)
    raw = tmp_path / "a.raw"
    subprocess.run(convert_to_raw_argv(qcow2, "qcow2", raw), check=True)
    assert virtual_size(raw, "raw") == 2 * MiB
