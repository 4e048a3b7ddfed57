from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.image.initrd import append_to_initrd, newc_archive
from builder.image.initrd_list import list_initrd


def read_initrd(data: bytes) -> dict[str, bytes]:
    """Regular files as the kernel would leave them: later archives win (an independent
    reader, builder/image/initrd_list.py, not this module's writer)."""
    return {e.name: e.data for e in list_initrd(data) if e.is_file}

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")

FILES = {
    "preseed.cfg": b"d-i debian-installer/locale string en_US.UTF-8\n",
    "etc/azbuild/host_key": b"x" * 333,
    "odd": b"",
}


def test_newc_header_layout() -> None:
    archive = newc_archive({"a": b"hello"})
    assert archive.startswith(b"070701")
    assert len(archive) % 512 == 0
    # namesize of "a\0" is 2, filesize 5
    assert archive[6 + 8 * 6:6 + 8 * 7] == b"00000005"
    assert archive[6 + 8 * 11:6 + 8 * 12] == b"00000002"
    assert b"TRAILER!!!\0" in archive


def test_newc_is_deterministic_and_rejects_escapes() -> None:
    assert newc_archive(FILES) == newc_archive(dict(reversed(list(FILES.items()))))
    with pytest.raises(ValueError):
        newc_archive({"../etc/passwd": b""})


@needs_cpio
def test_cpio_lists_and_extracts(tmp_path: Path) -> None:
    archive = newc_archive(FILES)
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode().split()
    assert sorted(listing) == ["etc", "etc/azbuild", "etc/azbuild/host_key", "odd", "preseed.cfg"]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"],
        input=archive, cwd=out, capture_output=True, check=True,
    )
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data
    assert (out / "preseed.cfg").stat().st_mode & 0o777 == 0o644


@needs_cpio
def test_append_to_gzip_initrd_keeps_both(tmp_path: Path) -> None:
    # A stand-in for the installer's initrd.gz, made by GNU cpio itself.
    src = tmp_path / "root"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "init").write_bytes(b"#!/bin/sh\necho installer\n")
    made = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"], input=b"bin\nbin/init\n",
        cwd=src, capture_output=True, check=True,
    ).stdout
    initrd = tmp_path / "initrd.gz"
    initrd.write_bytes(gzip.compress(made))
    original = initrd.read_bytes()

    dest = tmp_path / "initrd-preseed.gz"
    append_to_initrd(initrd, {"preseed.cfg": FILES["preseed.cfg"]}, dest)

    assert initrd.read_bytes() == original  # the cached original is untouched
    result = dest.read_bytes()
    assert result.startswith(original)
    files = read_initrd(result)
    assert files["bin/init"] == b"#!/bin/sh\necho installer\n"
    assert files["preseed.cfg"] == FILES["preseed.cfg"]
    # The appended segment on its own is a gzip'd newc archive cpio understands.
    tail = gzip.decompress(result[len(original) + (-len(original)) % 4:])
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=tail, capture_output=True, check=True
    ).stdout.decode().split()
    assert listing == ["preseed.cfg"]


def test_concatenated_plain_archives_read_back_later_wins() -> None:
    first = newc_archive({"preseed.cfg": b"old"})
    second = newc_archive({"preseed.cfg": b"new"})
    assert read_initrd(first + b"\0" * 16 + second)["preseed.cfg"] == b"new"


DI_INITRD = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/initrd.gz")


@pytest.mark.skipif(not DI_INITRD.exists(), reason="needs debian-installer-12-netboot-amd64")
def test_append_to_the_real_debian_installer_initrd(tmp_path: Path) -> None:
    dest = tmp_path / "initrd.gz"
    append_to_initrd(DI_INITRD, {"preseed.cfg": FILES["preseed.cfg"]}, dest)
    files = read_initrd(dest.read_bytes())
    assert files["preseed.cfg"] == FILES["preseed.cfg"]
    assert "init" in files and "sbin/debian-installer" in files
