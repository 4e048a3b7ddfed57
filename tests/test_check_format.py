"""`azbuild check` R01/R02 from the bytes, on images written by qemu-img and by us,
and the exit codes of `convert` and `check` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from builder.cli import main
from builder.errors import BuildError, UsageError
from builder.image.convert import convert_image
from builder.image.vhd import FOOTER_SIZE, build_footer, footer_checksum
from builder.offline_check.check import run_check
from builder.offline_check.image import verify_vhd
from builder.report.check_report import CheckResult
from builder.requirements import GUEST_IDS
from builder.units import GiB, MiB

# These images hold bytes, not an operating system: only R01/R02 are judged here
# (the guest checks have their own corpus tests).
GUEST_ONLY = list(GUEST_IDS)
SKIP_GUEST = ["--skip", ",".join(GUEST_IDS)]


def make_raw(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"\xeb\x63\x90" + os.urandom(509))
    return path


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def by_id(checks: list[CheckResult]) -> dict[str, CheckResult]:
    return {c.id: c for c in checks}


def test_qemu_force_size_fixed_vhd_passes(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "d.raw", 30 * MiB)
    vhd = tmp_path / "q.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", raw, vhd)
    report = run_check(vhd, skip=GUEST_ONLY)
    checks = by_id(report.checks)
    assert report.ready
    assert checks["R01"].status == "pass" and checks["R02"].status == "pass"
    assert "creator 'qem2'" in checks["R01"].evidence
    assert "checksum" in checks["R01"].evidence and "valid" in checks["R01"].evidence
    assert f"current size {30 * MiB} bytes" in checks["R02"].evidence


def test_our_vhd_passes(tmp_path: Path) -> None:
    vhd = convert_image(make_raw(tmp_path / "d.raw", 30 * MiB + 1), tmp_path / "d.vhd")
    report = run_check(vhd, skip=GUEST_ONLY)
    assert [(c.id, c.status) for c in report.checks] == [
        ("R01", "pass"), ("R02", "pass"), *((i, "skip") for i in GUEST_ONLY)
    ]
    assert "vhd-fixed" in report.checks[0].evidence
    assert f"file length {31 * MiB + 512} = size + 512" in report.checks[1].evidence
    verify_vhd(vhd)


def test_qemu_fixed_vhd_without_force_size_fails_r02(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "d.raw", 30 * MiB)
    vhd = tmp_path / "q.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", raw, vhd)
    checks = by_id(run_check(vhd, skip=GUEST_ONLY).checks)
    assert checks["R01"].status == "pass"  # a valid fixed VHD ...
    assert checks["R02"].status == "fail"  # ... padded to CHS 31473664 bytes, not whole MiB
    assert "31473664 is not a whole number of MiB" in checks["R02"].evidence
    with pytest.raises(BuildError, match="R02"):
        verify_vhd(vhd)


@pytest.mark.parametrize(
    ("fmt", "options", "name"),
    [
        ("vpc", [], "vhd-dynamic"),
        ("qcow2", [], "qcow2"),
        ("vhdx", [], "vhdx"),
        ("raw", [], "raw"),
    ],
)
def test_other_formats_fail_r01_with_the_fix(
    tmp_path: Path, fmt: str, options: list[str], name: str
) -> None:
    raw = make_raw(tmp_path / "d.raw", 30 * MiB)
    image = tmp_path / f"image.{fmt}"
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, raw, image)
    report = run_check(image, skip=GUEST_ONLY)
    checks = by_id(report.checks)
    assert not report.ready
    assert checks["R01"].status == "fail"
    assert checks["R01"].evidence.startswith(f"{name}:")
    assert f"azbuild convert {image} " in checks["R01"].evidence
    assert checks["R02"].status == "fail"


def test_qcow2_size_is_read_from_its_header(tmp_path: Path) -> None:
    image = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", image, str(30 * MiB + 512))
    r02 = by_id(run_check(image, skip=GUEST_ONLY).checks)["R02"]
    assert f"virtual size {30 * MiB + 512} bytes" in r02.evidence
    assert "not a whole number of MiB" in r02.evidence


def _fixed_vhd(path: Path, size: int, footer: bytes) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(size)
        f.write(footer)
    return path


def test_each_broken_footer_field_fails_r01(tmp_path: Path) -> None:
    good = bytearray(build_footer(20 * MiB))
    cases = {
        "checksum": (64, b"\0\0\0\0", "checksum 0x00000000 is wrong"),
        "disk type": (60, b"\0\0\0\3", "disk type 3 (dynamic), expected 2"),
        "data offset": (16, b"\0" * 8, "data offset 0x0000000000000000, expected all ones"),
    }
    for label, (offset, value, message) in cases.items():
        footer = bytearray(good)
        footer[offset:offset + len(value)] = value
        if label != "checksum":  # keep the checksum right so only this field is wrong
            footer[64:68] = footer_checksum(bytes(footer)).to_bytes(4, "big")
        image = _fixed_vhd(tmp_path / f"{label}.vhd", 20 * MiB, bytes(footer))
        r01 = by_id(run_check(image, skip=GUEST_ONLY).checks)["R01"]
        assert r01.status == "fail", label
        assert message in r01.evidence, r01.evidence


def test_wrong_length_and_bounds_fail_r02(tmp_path: Path) -> None:
    # The footer claims 21 MiB, the file holds 20 MiB + footer.
    image = _fixed_vhd(tmp_path / "short.vhd", 20 * MiB, build_footer(21 * MiB))
    r02 = by_id(run_check(image, skip=GUEST_ONLY).checks)["R02"]
    assert r02.status == "fail"
    assert f"file length {20 * MiB + 512} is not current size + 512 = {21 * MiB + 512}" in (
        r02.evidence
    )
    # 2041 GiB in a sparse file: over the maximum (the footer is hand-made for the test).
    footer = bytearray(build_footer(2040 * GiB))
    footer[40:56] = (2041 * GiB).to_bytes(8, "big") * 2
    footer[64:68] = footer_checksum(bytes(footer)).to_bytes(4, "big")
    big = _fixed_vhd(tmp_path / "big.vhd", 2041 * GiB, bytes(footer))
    checks = by_id(run_check(big, skip=GUEST_ONLY).checks)
    assert checks["R01"].status == "pass"
    assert checks["R02"].status == "fail" and "over 2040 GiB" in checks["R02"].evidence
    assert big.stat().st_size == 2041 * GiB + FOOTER_SIZE


def test_skip_marks_requirements(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "d.raw", 30 * MiB)
    report = run_check(raw, skip=["r01", "R7", *GUEST_ONLY])
    assert [(c.id, c.status) for c in report.checks][:3] == [
        ("R01", "skip"), ("R02", "fail"), ("R03", "skip")
    ]
    assert {c.id: c.status for c in report.checks}["R07"] == "skip"
    with pytest.raises(UsageError, match="unknown requirement"):
        run_check(raw, skip=["R99", *GUEST_ONLY])


def test_missing_or_unreadable_image_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        run_check(tmp_path / "nope.vhd", skip=GUEST_ONLY)
    with pytest.raises(UsageError, match="directory"):
        run_check(tmp_path, skip=GUEST_ONLY)


# --- the CLI's exit codes -----------------------------------------------------------------


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = make_raw(tmp_path / "d.raw", 20 * MiB + 3)
    vhd = tmp_path / "d.vhd"

    assert main(["convert", str(raw), str(vhd)]) == 0
    assert capsys.readouterr().out.strip() == str(vhd)
    assert main(["convert", str(raw), str(vhd)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(raw), str(vhd), "--force"]) == 0
    assert main(["convert", str(tmp_path / "missing.raw"), str(tmp_path / "m.vhd")]) == 2
    small = make_raw(tmp_path / "small.raw", 10 * MiB)
    assert main(["convert", str(small), str(tmp_path / "small.vhd")]) == 2
    assert "under Azure's minimum of 20 MiB" in capsys.readouterr().err
    assert not (tmp_path / "small.vhd").exists()

    assert main(["check", str(vhd), *SKIP_GUEST]) == 0
    assert "READY for Azure" in capsys.readouterr().out
    assert main(["check", "--json", str(vhd), *SKIP_GUEST]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ready"] is True
    assert [c["status"] for c in data["checks"]] == ["pass", "pass"] + ["skip"] * len(GUEST_IDS)
    assert main(["check", str(raw), *SKIP_GUEST]) == 1
    assert "NOT READY" in capsys.readouterr().out
    assert main(["check", str(raw), "--skip", "R01", "--skip", "R02", *SKIP_GUEST]) == 0
    assert main(["check", str(tmp_path / "missing.vhd"), *SKIP_GUEST]) == 2
