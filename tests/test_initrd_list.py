"""builder/image/initrd_list.py against archives made by real tools (cpio, gzip, xz, zstd, lz4,
bzip2) and against the initrds Debian's initramfs-tools made in the cached root."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.image.initrd import newc_archive
from builder.image.initrd_list import (
    InitrdError,
    kernel_versions_in,
    list_initrd,
    module_name,
    modules_in,
)

HV = "lib/modules/6.1.0-test/kernel/drivers/hv/hv_vmbus.ko"
STORVSC = "usr/lib/modules/6.1.0-test/kernel/drivers/scsi/hv_storvsc.ko.xz"


def _tree(tmp: Path) -> Path:
    root = tmp / "tree"
    (root / "lib/modules/6.1.0-test/kernel/drivers/hv").mkdir(parents=True)
    (root / "usr/lib/modules/6.1.0-test/kernel/drivers/scsi").mkdir(parents=True)
    (root / HV).write_bytes(b"\x7fELF vmbus")
    (root / STORVSC).write_bytes(b"xz storvsc")
    (root / "init").write_text("#!/bin/sh\n")
    (root / "bin").mkdir()
    (root / "bin/sh").symlink_to("busybox")
    return root


def _cpio(root: Path, fmt: str) -> bytes:
    """Archive ``root`` with GNU cpio, as initramfs tools do."""
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    proc = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", fmt],
        input="\n".join(names).encode() + b"\n",
        cwd=root,
        capture_output=True,
        check=True,
    )
    return proc.stdout


def _tool(program: str, data: bytes) -> bytes:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    return subprocess.run([program, "-c"], input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize("fmt", ["newc", "odc"])
def test_plain_cpio_lists_every_member(tmp_path: Path, fmt: str) -> None:
    entries = list_initrd(_cpio(_tree(tmp_path), fmt))
    names = {e.name for e in entries}
    assert {HV, STORVSC, "init", "bin/sh", "lib", "bin"} <= names
    by_name = {e.name: e for e in entries}
    assert by_name[HV].data == b"\x7fELF vmbus"
    assert by_name["bin/sh"].data == b"busybox"
    assert by_name["lib"].is_dir and by_name["init"].is_file
    assert modules_in(entries) == {"hv_vmbus", "hv_storvsc"}
    assert kernel_versions_in(entries) == {"6.1.0-test"}


@pytest.mark.parametrize(
    ("method", "compress"),
    [
        ("gzip", gzip.compress),
        ("xz", lzma.compress),
        ("bzip2", bz2.compress),
        ("lzma", lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE)),
        ("zstd", lambda d: _tool("zstd", d)),
        ("lz4", lambda d: subprocess.run(
            ["lz4", "-l", "-c"], input=d, capture_output=True, check=True).stdout),
    ],
)
def test_early_microcode_then_compressed_main(tmp_path: Path, method: str, compress) -> None:  # type: ignore[no-untyped-def]
    early = newc_archive({"kernel/x86/microcode/GenuineIntel.bin": b"uc"})  # 512-padded
    main = compress(_cpio(_tree(tmp_path), "newc"))
    entries = list_initrd(early + main + b"\x00" * 16)
    assert {e.archive for e in entries} == {0, 1}
    assert entries[0].compression == "none"
    assert {e.compression for e in entries if e.archive == 1} == {method}
    assert "kernel/x86/microcode/GenuineIntel.bin" in {e.name for e in entries}
    assert modules_in(entries) == {"hv_vmbus", "hv_storvsc"}


def test_two_archives_in_one_compressed_stream() -> None:
    a = newc_archive({"a.ko": b"1"})
    b = newc_archive({"dir/hv_netvsc.ko.zst": b"2"})
    entries = list_initrd(gzip.compress(a + b))
    assert modules_in(entries) == {"a", "hv_netvsc"}


def test_garbage_and_truncation_are_errors() -> None:
    with pytest.raises(InitrdError, match="unknown data"):
        list_initrd(b"this is not an initrd")
    with pytest.raises(InitrdError, match="empty"):
        list_initrd(b"\x00" * 64)
    archive = newc_archive({"big": b"x" * 100})
    with pytest.raises(InitrdError, match="past the end"):
        list_initrd(archive[:150])


def test_module_name() -> None:
    assert module_name("lib/modules/5/kernel/drivers/hv/hv_vmbus.ko") == "hv_vmbus"
    assert module_name("x/hv-utils.ko.zst") == "hv_utils"
    assert module_name("lib/modules/5/modules.dep") is None
    assert module_name("etc/hv_storvsc.conf") is None


def _rootfs_initrds() -> list[Path]:
    cache = Path(os.environ.get("AZBUILD_CACHE_DIR", "/var/cache/azbuild")) / "fixtures"
    return sorted(cache.glob("rootfs-*/boot/initrd.img-*"))


@pytest.mark.skipif(not _rootfs_initrds(), reason="no cached root from scripts/make-rootfs.sh")
def test_real_debian_initrd_matches_lsinitramfs() -> None:
    initrd = _rootfs_initrds()[0]
    entries = list_initrd(initrd.read_bytes())
    ours = {e.name for e in entries}
    if shutil.which("lsinitramfs") is None:
        pytest.skip("lsinitramfs is not installed")
    theirs = subprocess.run(
        ["lsinitramfs", str(initrd)], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    theirs_set = {n.removeprefix("./") for n in theirs if n and n != "."}
    assert ours == theirs_set
    assert "hv_vmbus" in modules_in(entries)
