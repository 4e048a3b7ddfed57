"""Inputs verified before use: truncated or corrupt images are refused (exit 2) before
anything is written, by convert, check and a build's source disk; checked with real
qemu-img, sfdisk and sgdisk."""

from __future__ import annotations

import hashlib
import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from builder.cli import main
from builder.context import BuildContext, BuildOptions
from builder.errors import UsageError
from builder.image.convert import convert_image
from builder.image.disk import detect_image_format
from builder.image.inputs import raw_extents, verify_image
from builder.image.vhd import build_footer
from builder.steps.source_disk import prepare_disk
from builder.template import load_template
from builder.units import MiB
from distros import resolve


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def qcow2_with_data(path: Path, data_mib: int = 40) -> None:
    """A 64 MiB qcow2 holding `data_mib` MiB of written data (about that long on disk)."""
    qemu_img("create", "-f", "qcow2", path, "64M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x55 0 {data_mib}M", str(path)],
                   check=True, capture_output=True)


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- the repro: a truncated qcow2 ------------------------------------------------------------


def test_convert_refuses_a_truncated_qcow2_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "cloud.qcow2"
    qcow2_with_data(src)
    truncate(src, 16 * MiB)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UsageError, match=r"cloud\.qcow2 \(qcow2\) is corrupt: qemu-img check "
                       r"found \d+ corruption") as info:
        convert_image(src, out / "disk.vhd")
    assert "exceeding the end of the file" in info.value.message
    assert info.value.hint and "truncated" in info.value.hint
    assert names(out) == []


def test_the_cli_exits_2_for_a_truncated_qcow2_in_convert_and_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "cloud.qcow2"
    qcow2_with_data(src)
    truncate(src, 16 * MiB)
    assert main(["convert", str(src), str(tmp_path / "disk.vhd")]) == 2
    assert "is corrupt" in capsys.readouterr().err
    assert main(["check", str(src)]) == 2
    assert "is corrupt" in capsys.readouterr().err
    assert names(tmp_path) == ["cloud.qcow2"]


def test_a_whole_qcow2_passes(tmp_path: Path) -> None:
    src = tmp_path / "cloud.qcow2"
    qcow2_with_data(src, 4)
    verify_image(src, detect_image_format(src))


@pytest.mark.parametrize(("fmt", "options", "pattern"), [
    ("vhdx", [], r"(?s)is corrupt: qemu-img check found \d+ corruption.*points after end of file"),
    ("vpc", [], r"is truncated: block \d+ of the block allocation table .* needs the file to "
                r"hold \d+ bytes, but it has only 16777216"),
])
def test_truncated_containers_are_refused(
    tmp_path: Path, fmt: str, options: list[str], pattern: str
) -> None:
    qcow2 = tmp_path / "whole.qcow2"
    qcow2_with_data(qcow2)
    src = tmp_path / f"disk.{fmt}"
    qemu_img("convert", "-f", "qcow2", "-O", fmt, *options, qcow2, src)
    verify_image(src, detect_image_format(src))  # whole, it passes
    truncate(src, 16 * MiB)
    with pytest.raises(UsageError, match=pattern):
        convert_image(src, tmp_path / "out.vhd")
    assert not (tmp_path / "out.vhd").exists()


# --- fixed VHD and raw: lengths against what the headers claim ---------------------------


def test_a_fixed_vhd_must_be_its_size_plus_the_footer(tmp_path: Path) -> None:
    good = tmp_path / "good.vhd"
    qemu_img("create", "-f", "vpc", "-o", "subformat=fixed", good, "30M")
    verify_image(good, detect_image_format(good))
    # A 20 MiB disk whose footer claims 21 MiB: a truncated VHD with its footer re-appended.
    bad = tmp_path / "bad.vhd"
    with open(bad, "wb") as f:
        f.truncate(20 * MiB)
        f.seek(20 * MiB)
        f.write(build_footer(21 * MiB))
    with pytest.raises(UsageError, match=rf"footer says {21 * MiB} bytes of disk, so the file "
                       rf"should be {21 * MiB + 512} bytes, but it is {20 * MiB + 512}"):
        convert_image(bad, tmp_path / "out.vhd")
    assert not (tmp_path / "out.vhd").exists()


def test_a_truncated_gpt_disk_is_refused_and_a_grown_one_passes(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"")
    truncate(raw, 64 * MiB)
    subprocess.run(["sgdisk", "-n", "1:2048:0", str(raw)], check=True, capture_output=True)
    verify_image(raw, detect_image_format(raw))
    truncate(raw, 80 * MiB)  # grown, as vm.disk_size does: the old backup header is inside
    verify_image(raw, detect_image_format(raw))
    truncate(raw, 40 * MiB)
    with pytest.raises(UsageError, match=r"disk\.raw is truncated: the GPT's backup header at "
                       rf"sector {64 * MiB // 512 - 1} needs the file to hold {64 * MiB} bytes, "
                       rf"but it has only {40 * MiB}"):
        verify_image(raw, detect_image_format(raw), role="source image")


def test_a_truncated_mbr_disk_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"")
    truncate(raw, 64 * MiB)
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", str(raw)],
                   input=b"label: dos\nstart=2048, size=100000, type=83\n",
                   check=True, capture_output=True)
    verify_image(raw, detect_image_format(raw))
    truncate(raw, 32 * MiB)
    with pytest.raises(UsageError, match=r"MBR partition 1 \(sectors 2048 to 102047\) needs "
                       rf"the file to hold {102048 * 512} bytes, but it has only {32 * MiB}"):
        verify_image(raw, detect_image_format(raw))


def test_raw_without_a_partition_table_claims_nothing() -> None:
    assert raw_extents(bytes(34 * 512)) == []
    assert raw_extents(b"") == []


# --- a build's source.disk_image: checksum, then verification, then the copy ---------------


def _source_disk_context(tmp_path: Path, image: Path, checksum: str | None) -> BuildContext:
    lines = ["name = \"t\"", "[source]", f"disk_image = \"{image}\""]
    if checksum is not None:
        lines.append(f"checksum = \"{checksum}\"")
    lines += ["[distro]", "name = \"debian\"", "version = \"12\"",
              "[vm]", "disk_size = \"128MiB\""]
    template = tmp_path / "t.toml"
    template.write_text("\n".join(lines) + "\n")
    loaded = load_template(template)
    ctx = BuildContext(loaded=loaded, options=BuildOptions(), distro=resolve("debian", "12"),
                       uri="qemu:///system", output_dir=tmp_path / "out", build_id="0")
    ctx.work_dir = tmp_path / "work"
    ctx.work_dir.mkdir()
    return ctx


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_source_disk_checksum_is_verified_before_the_copy(tmp_path: Path) -> None:
    image = tmp_path / "cloud.qcow2"
    qcow2_with_data(image, 4)
    ctx = _source_disk_context(tmp_path, image, "sha256:" + "0" * 64)
    with pytest.raises(UsageError, match=r"checksum mismatch for .*cloud\.qcow2") as info:
        prepare_disk(ctx, ExitStack())
    assert info.value.hint and "disk image" in info.value.hint
    assert ctx.work_dir is not None and names(ctx.work_dir) == []

    (tmp_path / "ok").mkdir()
    ctx = _source_disk_context(tmp_path / "ok", image, "sha256:" + _sha256(image))
    prepare_disk(ctx, ExitStack())
    assert ctx.disk is not None and ctx.disk.stat().st_size == 128 * MiB


def test_source_disk_checksum_file_names_the_image(tmp_path: Path) -> None:
    image = tmp_path / "cloud.qcow2"
    qcow2_with_data(image, 4)
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{_sha256(image)}  cloud.qcow2\n{'1' * 64}  other.qcow2\n")
    ctx = _source_disk_context(tmp_path, image, f"file:{sums}")
    prepare_disk(ctx, ExitStack())
    assert ctx.disk is not None and ctx.disk.is_file()


def test_source_disk_refuses_a_truncated_image_before_copying(tmp_path: Path) -> None:
    image = tmp_path / "cloud.qcow2"
    qcow2_with_data(image)
    truncate(image, 16 * MiB)
    ctx = _source_disk_context(tmp_path, image, None)
    with pytest.raises(UsageError, match=r"source\.disk_image .*cloud\.qcow2 \(qcow2\) is "
                       "corrupt"):
        prepare_disk(ctx, ExitStack())
    assert ctx.work_dir is not None and names(ctx.work_dir) == []


# --- destinations -------------------------------------------------------------------------


def test_convert_exits_2_for_a_missing_or_unwritable_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(b"")
    truncate(src, 20 * MiB)
    assert main(["convert", str(src), str(tmp_path / "missing" / "disk.vhd")]) == 2
    assert "output directory" in capsys.readouterr().err
    readonly = tmp_path / "ro"
    readonly.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        assert main(["convert", str(src), str(readonly / "disk.vhd")]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and "Read-only file system" in err
        assert names(readonly) == []
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
