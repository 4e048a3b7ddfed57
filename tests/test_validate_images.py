"""`azbuild validate` inspects a source disk image with the checks the build's source-disk
step makes (builder/image/inputs.py): a file that is no disk image, or a truncated one, is exit 2
naming the file and what it looks like; the build refuses it the same way, before any VM.
`validate --strict` makes a source missing now an error. Real files, real qemu-img."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.cli import main
from builder.units import MiB

HTML = b"""<!DOCTYPE html>
<html><head><title>404 Not Found</title></head>
<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>
"""


def qcow2_with_data(path: Path, data_mib: int = 8) -> None:
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), "64M"], check=True,
                   capture_output=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x55 0 {data_mib}M", str(path)],
                   check=True, capture_output=True)


def truncated_qcow2(path: Path) -> None:
    qcow2_with_data(path)
    os.truncate(path, 4 * MiB)


def zeroed_header_qcow2(path: Path) -> None:
    qcow2_with_data(path)
    with open(path, "r+b") as f:
        f.write(bytes(4096))


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(2 * MiB))


def html_page(path: Path) -> None:
    path.write_bytes(HTML)


def gzip_file(path: Path) -> None:
    path.write_bytes(gzip.compress(os.urandom(MiB)))


def iso_image(path: Path) -> None:
    data = bytearray(64 * 1024)
    data[0x8001:0x8006] = b"CD001"
    path.write_bytes(bytes(data))


CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("truncated-qcow2", truncated_qcow2, "(qcow2) is corrupt: qemu-img check found"),
    ("zeroed-header", zeroed_header_qcow2,
     "is no disk image: it looks like zeros (its first 512 bytes are all zero"),
    ("random-bytes", random_bytes, "is no disk image: it looks like random bytes ("),
    ("html-page", html_page, "is no disk image: it looks like an HTML page"),
    ("gzip", gzip_file, "is a gzip-compressed file, not a disk image"),
    ("iso", iso_image, "is an ISO 9660 image, not a disk image"),
]


def _template(directory: Path, image: Path) -> Path:
    path = directory / "t.toml"
    path.write_text(f'name = "t"\n[source]\ndisk_image = "{image.name}"\n[distro]\n'
                    f'name = "debian"\nversion = "12"\n[output]\ndirectory = "{directory}/out"\n')
    return path


@pytest.mark.parametrize(("make", "says"), [(m, s) for _, m, s in CASES],
                         ids=[c for c, _, _ in CASES])
def test_validate_refuses_what_is_no_whole_disk_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], None], says: str
) -> None:
    image = tmp_path / "cloud.qcow2"
    make(image)
    template = _template(tmp_path, image)
    assert main(["validate", str(template)]) == 2
    err = capsys.readouterr().err
    assert f"source.disk_image: {image} " in err and says in err, err
    assert main(["--log-format", "json", "validate", str(template)]) == 2
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    problem = next(r for r in records if r.get("key") == "source.disk_image")
    assert problem["file"] == str(template) and says in problem["message"]


def test_a_whole_qcow2_and_a_partitioned_raw_disk_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "cloud.qcow2"
    qcow2_with_data(image)
    assert main(["validate", str(_template(tmp_path, image))]) == 0
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", str(raw)],
                   input="label: dos\n2048,,L\n", text=True, check=True, capture_output=True)
    assert main(["validate", str(_template(tmp_path, raw))]) == 0
    assert "valid (debian 12)" in capsys.readouterr().out


def test_the_build_refuses_an_html_page_in_its_source_disk_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The build makes the same check in its source-disk step, before any VM, and keeps
    its manifest and log as for any failed build."""
    monkeypatch.setenv("AZBUILD_WORK_DIR", str(tmp_path / "work"))
    image = tmp_path / "cloud.qcow2"
    html_page(image)
    assert main(["build", str(_template(tmp_path, image))]) == 2
    assert "is no disk image: it looks like an HTML page" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["failure"]["step"] == "source disk"
    assert list(manifest["steps"]) == ["prepare", "source disk"]


def test_the_source_disk_step_refuses_random_bytes(tmp_path: Path) -> None:
    from contextlib import ExitStack

    from builder.context import BuildContext, BuildOptions
    from builder.errors import UsageError
    from builder.steps.source_disk import prepare_disk
    from builder.template import load_template
    from distros import resolve

    image = tmp_path / "cloud.qcow2"
    random_bytes(image)
    loaded = load_template(_template(tmp_path, image))
    ctx = BuildContext(loaded=loaded, options=BuildOptions(), distro=resolve("debian", "12"),
                       uri="qemu:///system", output_dir=tmp_path / "out", build_id="c0ffee00")
    ctx.work_dir = tmp_path / "work"
    ctx.work_dir.mkdir()
    with ExitStack() as stack, pytest.raises(UsageError, match="it looks like random bytes"):
        prepare_disk(ctx, stack)
    assert list(ctx.work_dir.iterdir()) == []  # nothing copied


def test_validate_strict_makes_a_missing_source_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _template(tmp_path, tmp_path / "later.qcow2")
    assert main(["validate", str(template)]) == 0
    err = capsys.readouterr().err
    assert "source.disk_image: file not found" in err and "(needed at build time)" in err
    assert main(["validate", "--strict", str(template)]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "source.disk_image: file not found" in err
