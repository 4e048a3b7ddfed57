"""A local source file's digest is remembered while the file is unchanged, and only then."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.image.fetch import file_digest
from builder.image.verified import records_dir, remembered_digest


class CountingDigest:
    """The real file_digest, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path, algorithm: str) -> str:
        self.calls += 1
        return file_digest(path, algorithm)


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZBUILD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def iso(tmp_path: Path) -> Path:
    path = tmp_path / "x.iso"
    path.write_bytes(b"installer" * 1000)
    return path


def test_an_unchanged_file_is_hashed_once(iso: Path) -> None:
    compute = CountingDigest()
    first = remembered_digest(iso, "sha256", compute)
    assert remembered_digest(iso, "sha256", compute) == first == file_digest(iso, "sha256")
    assert compute.calls == 1
    assert remembered_digest(iso, "sha512", compute) == file_digest(iso, "sha512")
    assert compute.calls == 2


def test_a_file_rewritten_with_its_size_and_mtime_kept_is_hashed_again(iso: Path) -> None:
    compute = CountingDigest()
    before = remembered_digest(iso, "sha256", compute)
    st = iso.stat()
    with iso.open("r+b") as f:
        f.write(b"X")
    os.utime(iso, ns=(st.st_atime_ns, st.st_mtime_ns))  # what `touch -r` could hide
    assert iso.stat().st_size == st.st_size and iso.stat().st_mtime_ns == st.st_mtime_ns
    after = remembered_digest(iso, "sha256", compute)
    assert compute.calls == 2
    assert after == file_digest(iso, "sha256") != before


def test_a_file_replaced_by_another_is_hashed_again(iso: Path, tmp_path: Path) -> None:
    compute = CountingDigest()
    remembered_digest(iso, "sha256", compute)
    other = tmp_path / "other.iso"
    other.write_bytes(b"another installer" * 500)
    os.replace(other, iso)
    assert remembered_digest(iso, "sha256", compute) == file_digest(iso, "sha256")
    assert compute.calls == 2


def test_a_damaged_record_is_ignored(iso: Path) -> None:
    compute = CountingDigest()
    remembered_digest(iso, "sha256", compute)
    for record in records_dir().iterdir():
        record.write_text("{not json")
    assert remembered_digest(iso, "sha256", compute) == file_digest(iso, "sha256")
    assert compute.calls == 2


def test_a_cache_directory_that_cannot_be_written_only_costs_a_hash(
        iso: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("AZBUILD_CACHE_DIR", str(blocker / "cache"))  # under a file
    compute = CountingDigest()
    assert remembered_digest(iso, "sha256", compute) == file_digest(iso, "sha256")
    assert remembered_digest(iso, "sha256", compute) == file_digest(iso, "sha256")
    assert compute.calls == 2
