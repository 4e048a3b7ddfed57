"""`azbuild diff` (builder/report/diff.py) on manifests written by the real manifest writer:
the comparison, its exact text and JSON, and the exit codes of the real command line.
Diffing images (the inventory read on the spot) needs the libguestfs appliance:
tests/e2e/test_inventory_image.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_inventory import sample_inventory
from test_manifest import context, validate

from builder.cli import main
from builder.context import BuildContext, BuildOptions
from builder.errors import UsageError
from builder.inventory import Inventory, Kernel, Package
from builder.manifest import write_manifest
from builder.report.check_report import CheckResult, Report
from builder.report.diff import (
    Change,
    Comparison,
    compare,
    diff,
    load_snapshot,
    manifest_snapshot,
    to_json,
    to_table,
)
from builder.template import load_template
from builder.units import MiB
from distros import resolve

AZBUILD = Path(sys.executable).parent / "azbuild"


def write_build(tmp_path: Path, out: str, inventory: Inventory | None, r10: str = "pass",
                size: int = 20 * MiB) -> Path:
    """A succeeded build of tmp_path's template into tmp_path/`out`, its manifest written
    by write_manifest."""
    if not (tmp_path / "t.toml").exists():
        context(tmp_path)  # writes the template (and the out and work directories)
    ctx = BuildContext(loaded=load_template(tmp_path / "t.toml"), options=BuildOptions(),
                       distro=resolve("debian", "12"), uri="qemu:///system",
                       output_dir=tmp_path / out, build_id="c0ffee00")
    ctx.output_dir.mkdir()
    raw = ctx.artifact_path("raw")
    with open(raw, "wb") as f:
        f.truncate(size)
    ctx.artifacts["raw"] = raw
    ctx.source_digest = "sha256:" + "ab" * 32
    report = Report(str(raw), [CheckResult("R09", "pass", "ssh.service enabled"),
                               CheckResult("R10", r10, "Provisioning.Agent=auto")])
    report.inventory = inventory
    ctx.report = report
    validate(write_manifest(ctx, None, ["build.log"]))
    return ctx.output_dir


def newer(inventory: Inventory) -> Inventory:
    """The inventory after a nightly rebuild: htop added, ca-certificates removed, bash
    upgraded, a new kernel, a service enabled and a kernel argument changed."""
    packages = [p for p in inventory.packages if p.name != "ca-certificates"]
    packages = [p.model_copy(update={"version": "5.2.15-2+b9"}) if p.name == "bash" else p
                for p in packages]
    packages.append(Package(name="htop", version="3.2.2-2", architecture="amd64",
                            source="htop"))
    return inventory.model_copy(update={
        "packages": sorted(packages, key=lambda p: p.name),
        "kernels": [*inventory.kernels,
                    Kernel(version="6.1.0-29-cloud-amd64",
                           image="/boot/vmlinuz-6.1.0-29-cloud-amd64", modules=True)],
        "services": [*inventory.services, "cron.service"],
        "kernel_args": inventory.kernel_args.model_copy(
            update={"default": ["ro", "console=ttyS0", "rootdelay=300"]}),
    })


@pytest.fixture
def builds(tmp_path: Path) -> tuple[Path, Path]:
    old = write_build(tmp_path, "old", sample_inventory())
    new = write_build(tmp_path, "new", newer(sample_inventory()), r10="warn", size=32 * MiB)
    return old, new


def test_the_differences_as_a_table(builds: tuple[Path, Path]) -> None:
    old, new = builds
    comparison = compare(load_snapshot(str(old)), load_snapshot(str(new / "manifest.json")))
    assert to_table(comparison) == "\n".join([
        f"--- {old}",
        f"+++ {new / 'manifest.json'}",
        "section           item                  old               new",
        "packages          bash                  5.2.15-2+b8       5.2.15-2+b9",
        "packages          ca-certificates       20230311          -",
        "packages          htop                  -                 3.2.2-2",
        "kernels           6.1.0-29-cloud-amd64  -                 "
        "/boot/vmlinuz-6.1.0-29-cloud-amd64",
        "kernel arguments  boot loader default   ro console=ttyS0  ro console=ttyS0 rootdelay=300",
        "services          cron.service          -                 enabled",
        "requirements      R10                   pass              warn",
        "sizes             raw                   20971520          33554432",
        "8 differences",
    ])


def test_the_differences_as_json(builds: tuple[Path, Path]) -> None:
    old, new = builds
    data = json.loads(to_json(compare(load_snapshot(str(old)), load_snapshot(str(new)))))
    assert data["identical"] is False and data["not_compared"] == {}
    assert data["changes"][:3] == [
        {"section": "packages", "item": "bash", "old": "5.2.15-2+b8", "new": "5.2.15-2+b9"},
        {"section": "packages", "item": "ca-certificates", "old": "20230311", "new": None},
        {"section": "packages", "item": "htop", "old": None, "new": "3.2.2-2"},
    ]
    assert [c["section"] for c in data["changes"]] == [
        "packages", "packages", "packages", "kernels", "kernel arguments", "services",
        "requirements", "sizes"]
    # Sizes are numbers, for a job that compares them.
    assert data["changes"][-1] == {"section": "sizes", "item": "raw", "old": 20 * MiB,
                                   "new": 32 * MiB}


# --- the build's identity is never a difference -----------------------------------------


NIGHTLY = """name = "web"
[source]
disk_image = "disk.raw"
[distro]
name = "debian"
version = "12"
[vm]
disk_size = "128MiB"
[variables]
stamp = "${build.date}"
[[provision]]
type = "shell"
inline = ["echo built ${build.timestamp} ${var.stamp} > /etc/build"]
[output]
directory = "out/${name}-${build.timestamp}-${build.id}"
"""


def nightly_build(tmp_path: Path, night: int, text: str = NIGHTLY) -> Path:
    """A build of the NIGHTLY template on day `night` of December, with its own id; the
    manifest as the build writes it."""
    from datetime import UTC, datetime

    from builder.template import BuildInfo

    (tmp_path / "disk.raw").write_bytes(b"")
    (tmp_path / "t.toml").write_text(text)
    build = BuildInfo(id=f"{night:08x}", time=datetime(2026, 12, night, 1, 30, tzinfo=UTC))
    loaded = load_template(tmp_path / "t.toml", build=build)
    out = tmp_path / loaded.template.output.directory
    ctx = BuildContext(loaded=loaded, options=BuildOptions(), distro=resolve("debian", "12"),
                       uri="qemu:///system", output_dir=out, build_id=build.id)
    out.mkdir(parents=True)
    raw = ctx.artifact_path("raw")
    with open(raw, "wb") as f:
        f.truncate(20 * MiB)
    ctx.artifacts["raw"] = raw
    ctx.source_digest = "sha256:" + "ab" * 32
    ctx.timer.timings.update({"boot": 10.0 + night, "export": 3.0 * night})
    ctx.report = Report(str(raw), [CheckResult("R09", "pass", "ssh.service enabled")])
    ctx.report.inventory = sample_inventory()
    validate(write_manifest(ctx, None, ["build.log"]))
    return out


def test_two_nights_of_an_unchanged_template_are_identical(tmp_path: Path) -> None:
    """Another id, date, timestamp, output directory and durations: no difference, exit 0."""
    first, second = nightly_build(tmp_path, 7), nightly_build(tmp_path, 8)
    assert first != second
    assert _manifest(first)["template_sha256"] == _manifest(second)["template_sha256"]
    comparison = diff(str(first), str(second))
    assert comparison.changes == [] and comparison.notes == [], to_table(comparison)
    assert main(["diff", str(first), str(second)]) == 0


def test_a_changed_template_is_a_change_of_its_sha256(tmp_path: Path) -> None:
    first = nightly_build(tmp_path, 7)
    second = nightly_build(tmp_path, 8, NIGHTLY.replace("echo built", "echo made"))
    changes = diff(str(first), str(second)).changes
    assert [(c.section, c.item) for c in changes] == [("inputs", "file t.toml"),
                                                      ("inputs", "template sha256")]


def test_notes_say_a_failed_build_another_template_and_another_version(
    builds: tuple[Path, Path]
) -> None:
    old, _ = builds
    before = _manifest(old)
    after = json.loads(json.dumps(before))
    after.update(status="failed", artifacts=[], check=None, inventory=None, template="other",
                 template_sha256="0" * 64, azbuild_version="9.9.9",
                 failure={"step": "install", "error": "installer failed", "hint": None,
                          "exit_code": 1})
    comparison = compare(manifest_snapshot("a", before), manifest_snapshot("b", after))
    assert [n.kind for n in comparison.notes] == ["new_failed", "other_template",
                                                  "other_version"]
    assert Change("status", "build", "succeeded", "failed") in comparison.changes
    text = to_table(comparison)
    assert "note: NEW failed at step install: installer failed" in text
    assert "note: OLD is template 't', NEW is template 'other'" in text
    assert f"note: OLD was built by azbuild {before['azbuild_version']}, NEW by azbuild 9.9.9" \
        in text
    data = json.loads(to_json(comparison))
    assert data["notes"][0]["kind"] == "new_failed"
    backwards = compare(manifest_snapshot("b", after), manifest_snapshot("a", before))
    assert backwards.notes[0].text == ("OLD failed at step install: installer failed; compare"
                                       " with the last build that succeeded")
    assert data["changes"][0] == {"section": "status", "item": "build", "old": "succeeded",
                                  "new": "failed"}


def _manifest(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    return data


def test_inputs_and_a_side_without_inventory(builds: tuple[Path, Path]) -> None:
    old, _ = builds
    before = _manifest(old)
    after = json.loads(json.dumps(before))
    after["inventory"] = None
    after["azbuild_version"] = "0.2.0"
    after["inputs"]["source"]["digest"] = "sha256:" + "cd" * 32
    comparison = compare(manifest_snapshot("a", before), manifest_snapshot("b", after))
    assert comparison.changes == [
        Change("inputs", "source digest", "sha256:" + "ab" * 32, "sha256:" + "cd" * 32),
    ]
    assert to_table(comparison).splitlines()[-7:] == [
        "inputs   source digest  " + "sha256:" + "ab" * 32 + "  sha256:" + "cd" * 32,
        "packages: not compared (b does not record it)",
        "kernels: not compared (b does not record it)",
        "kernel arguments: not compared (b does not record it)",
        "services: not compared (b does not record it)",
        f"note: OLD was built by azbuild {before['azbuild_version']}, NEW by azbuild 0.2.0",
        "1 difference",
    ]


def test_identical_builds() -> None:
    comparison = Comparison("a", "b")
    assert to_table(comparison) == "--- a\n+++ b\nno differences"
    assert json.loads(to_json(comparison)) == {
        "old": "a", "new": "b", "identical": True, "changes": [], "not_compared": {},
        "notes": []}


def test_a_template_file_change_is_an_input_change(builds: tuple[Path, Path]) -> None:
    old, _ = builds
    before = _manifest(old)
    after = json.loads(json.dumps(before))
    after["inputs"]["template_files"][0]["sha256"] = "0" * 64
    [change] = compare(manifest_snapshot("a", before), manifest_snapshot("b", after)).changes
    assert change == Change("inputs", "file t.toml", before["inputs"]["template_files"][0][
        "sha256"], "0" * 64)


# --- the command line: exit codes as diff(1), 2 for bad input --------------------------------


def _azbuild(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AZBUILD), *args], capture_output=True, text=True, timeout=60)


def test_exit_codes_of_the_real_command(builds: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = builds
    same = _azbuild("diff", str(old), str(old / "manifest.json"))
    assert (same.returncode, same.stdout, same.stderr) == (
        0, f"--- {old}\n+++ {old / 'manifest.json'}\nno differences\n", "")
    differ = _azbuild("diff", "--json", str(old), str(new))
    assert differ.returncode == 1 and json.loads(differ.stdout)["identical"] is False

    missing = _azbuild("diff", str(old), str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert f"error: {tmp_path / 'nowhere'} does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize(("content", "message"), [
    ('{"name": "t"}', "is not an azbuild manifest: it lacks status, template, artifacts, check"),
    ("[1, 2]", "is not an azbuild manifest: it lacks status, template, artifacts, check"),
    ("{not json", "is not an azbuild manifest: not JSON"),
])
def test_a_json_file_that_is_not_a_manifest(
    builds: tuple[Path, Path], tmp_path: Path, content: str, message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "other.json"
    bad.write_text(content)
    assert main(["diff", str(builds[0]), str(bad)]) == 2
    assert f"error: {bad} {message}" in capsys.readouterr().err


def test_a_directory_without_a_manifest(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["diff", str(empty), str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"error: {empty} is a directory without manifest.json" in err
    assert "hint: give a manifest.json, a build's output directory or an image" in err
    with pytest.raises(UsageError):
        load_snapshot(str(empty))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(artifacts=[{"file": "x"}]), "no 'format' where one was expected"),
    (lambda m: m.update(check=[{"id": "R01"}]), "no 'status' where one was expected"),
    (lambda m: m["inventory"].update(packages="oops"), "is not an azbuild manifest: "),
    (lambda m: m["inventory"].update(packages=[{"name": "x"}]), "no 'version'"),
    (lambda m: m.update(inputs={"source": None}), "is not an azbuild manifest: "),
])
def test_a_manifest_with_parts_out_of_shape_is_a_usage_error(
    builds: tuple[Path, Path], tmp_path: Path, edit: Any, message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = json.loads((builds[1] / "manifest.json").read_text())
    edit(data)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    assert main(["diff", str(builds[0]), str(edited)]) == 2
    err = capsys.readouterr().err
    assert f"error: {edited} is not an azbuild manifest: " in err and message in err
    assert "internal error" not in err
