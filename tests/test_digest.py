"""builder.image.digest: sparse hashing, the VHD digest derived from the RAW's, background hashing.

Every digest is compared with hashlib over the real file's bytes; the VHDs are made by
builder.image.convert.raw_to_vhd, as a build's export step makes them."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from builder.image.convert import raw_to_vhd
from builder.image.digest import CHUNK, BackgroundDigests, artifact_digests, sha256_file
from builder.image.disk import copy_sparse
from builder.units import MiB


def plain_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def sparse_file(path: Path, size: int, writes: list[tuple[int, bytes]]) -> Path:
    """A file of `size` bytes, holes except for `writes` (offset, bytes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for offset, data in writes:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
    return path


SHAPES = {
    "leading and trailing holes": (3 * CHUNK + 1234, [(CHUNK + 17, os.urandom(5000))]),
    "data at both ends": (2 * CHUNK + 99, [(0, b"start"), (2 * CHUNK + 90, b"end-bytes")]),
    "all holes": (CHUNK + 4095, []),
    "empty": (0, []),
    "one byte": (1, [(0, b"\x01")]),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_sparse_sha256_is_hashlibs_over_the_whole_file(tmp_path: Path, shape: str) -> None:
    size, writes = SHAPES[shape]
    path = sparse_file(tmp_path / "f", size, writes)
    assert sha256_file(path) == plain_sha256(path)


def test_a_file_without_holes_not_a_multiple_of_the_buffer(tmp_path: Path) -> None:
    path = tmp_path / "dense"
    path.write_bytes(os.urandom(CHUNK + CHUNK // 3 + 7))
    assert sha256_file(path) == plain_sha256(path)


def build_outputs(tmp_path: Path, length: int) -> tuple[Path, Path]:
    """RAW and VHD as the export step makes them: a sparse copy of the work disk, then the
    work disk itself becomes the VHD in place. The work disk comes from qemu-img."""
    disk = tmp_path / "work.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), str(length)],
                   check=True)
    fd = os.open(disk, os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(3 * MiB), MiB + 512)
        os.pwrite(fd, b"tail of the disk", length - 16)
    finally:
        os.close(fd)
    raw, vhd = tmp_path / "out.raw", tmp_path / "out.vhd"
    out = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        copy_sparse(disk, out)
    finally:
        os.close(out)
    raw_to_vhd(disk, vhd, keep_raw=False, force=False)
    return raw, vhd


@pytest.mark.parametrize("length", [24 * MiB, 24 * MiB + 4096 + 512])
def test_the_vhd_digest_derived_from_the_raws_is_the_vhds(tmp_path: Path, length: int) -> None:
    # A length not a whole MiB: the VHD is padded with zeros before its footer.
    raw, vhd = build_outputs(tmp_path, length)
    digests = artifact_digests(raw, vhd, vhd_holds_raw=True)
    assert digests[raw].sha256 == plain_sha256(raw)
    assert digests[vhd].sha256 == plain_sha256(vhd)
    assert digests[vhd].stamp.size == vhd.stat().st_size


def test_a_vhd_alone_is_hashed_whole(tmp_path: Path) -> None:
    _, vhd = build_outputs(tmp_path, 24 * MiB)
    assert artifact_digests(None, vhd, vhd_holds_raw=True)[vhd].sha256 == plain_sha256(vhd)


def test_a_vhd_of_another_length_is_not_derived(tmp_path: Path) -> None:
    # Not the RAW's length padded plus a footer: it cannot hold the RAW, so it is hashed.
    raw = sparse_file(tmp_path / "a.raw", 20 * MiB, [(0, b"raw")])
    vhd = sparse_file(tmp_path / "b.vhd", 21 * MiB + 512, [(0, b"vhd")])
    assert artifact_digests(raw, vhd, vhd_holds_raw=True)[vhd].sha256 == plain_sha256(vhd)


def test_background_digests_are_reused_until_the_file_changes(tmp_path: Path) -> None:
    raw, vhd = build_outputs(tmp_path, 24 * MiB)
    digests = BackgroundDigests({"raw": raw, "vhd": vhd}, vhd_holds_raw=True)
    assert digests.known(vhd) == plain_sha256(vhd)
    assert digests.known(raw) == plain_sha256(raw)
    with open(raw, "r+b") as f:
        f.write(b"changed")
    assert digests.known(raw) is None  # changed since hashed: the caller hashes again
    assert digests.known(tmp_path / "never-hashed") is None


def test_a_hashing_error_surfaces_where_the_digests_are_awaited(tmp_path: Path) -> None:
    digests = BackgroundDigests({"raw": tmp_path / "missing.raw"}, vhd_holds_raw=True)
    with pytest.raises(FileNotFoundError):
        digests.wait()
    with pytest.raises(FileNotFoundError):
        digests.known(tmp_path / "missing.raw")


def test_stopping_ends_the_thread_without_digests(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(MiB))
    with open(big, "ab") as f:  # many chunks of data to read: stopped well before the end
        for _ in range(63):
            f.write(os.urandom(MiB))
    digests = BackgroundDigests({"raw": big}, vhd_holds_raw=True)
    digests.stop()
    assert not digests.running
    found = digests.wait()
    # Stopped mid-way (nothing), or it had already finished (then the digest is right).
    assert found == {} or found[big].sha256 == plain_sha256(big)
