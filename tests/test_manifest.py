"""manifest.json and what a build keeps: the schema, the writer, and real failed builds.

Every manifest written here is validated against the shipped JSON Schema. The failed
builds run the real pipeline from the command line up to the source disk step, which
fails before any VM exists (a truncated image, a wrong checksum)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from builder.cli import main
from builder.context import BuildContext, BuildOptions
from builder.errors import BuildError, Terminated
from builder.manifest import (
    MANIFEST_FILE,
    Failure,
    manifest_json_schema,
    source_digest,
    write_manifest,
)
from builder.report.check_report import CheckResult, Report
from builder.steps import export
from builder.steps.export import CheckFailed
from builder.steps.source_disk import prepare_disk
from builder.template import load_template
from builder.units import MiB
from builder.work_dir import failure_of, keep_outputs
from distros import resolve

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "manifest.md"


def validate(path: Path) -> dict[str, Any]:
    """The manifest at `path`, after checking it against the shipped schema."""
    data: dict[str, Any] = json.loads(path.read_text())
    jsonschema.Draft202012Validator(manifest_json_schema()).validate(data)
    return data


@pytest.fixture
def work_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "work-root"
    monkeypatch.setenv("AZBUILD_WORK_DIR", str(root))
    return root


def write_template(directory: Path, image: Path, checksum: str | None = None) -> Path:
    lines = ['name = "t"', "[source]", f'disk_image = "{image}"']
    if checksum is not None:
        lines.append(f'checksum = "{checksum}"')
    lines += ["[distro]", 'name = "debian"', 'version = "12"', "[vm]", 'disk_size = "128MiB"',
              "[variables]", 'token = { default = "manifest-Secret-42", sensitive = true }']
    template = directory / "t.toml"
    template.write_text("\n".join(lines) + "\n")
    return template


def context(tmp_path: Path) -> BuildContext:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"")
    loaded = load_template(write_template(tmp_path, image))
    ctx = BuildContext(loaded=loaded, options=BuildOptions(), distro=resolve("debian", "12"),
                       uri="qemu:///system", output_dir=tmp_path / "out", build_id="c0ffee00")
    ctx.output_dir.mkdir()
    ctx.work_dir = tmp_path / "work"
    ctx.work_dir.mkdir()
    return ctx


# --- the schema ----------------------------------------------------------------------------


def test_schema_is_printed_and_is_a_valid_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--manifest"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == manifest_json_schema()
    jsonschema.Draft202012Validator.check_schema(printed)
    assert printed["additionalProperties"] is False
    assert set(printed["required"]) == set(printed["properties"])


def test_every_schema_field_is_documented() -> None:
    schema = manifest_json_schema()
    text = DOCS.read_text()
    fields = set(schema["properties"])
    for definition in schema["$defs"].values():
        fields |= set(definition["properties"])
    missing = sorted(f for f in fields if f"`{f}`" not in text)
    assert missing == [], f"docs/manifest.md does not document {missing}"


# --- the writer ----------------------------------------------------------------------------


def test_a_succeeded_manifest(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    raw = ctx.artifact_path("raw")
    with open(raw, "wb") as f:
        f.truncate(20 * MiB)
        f.write(b"boot")
    ctx.artifacts["raw"] = raw
    ctx.accelerator, ctx.accelerator_reason = "tcg", "no /dev/kvm"
    ctx.timer.timings.update({"prepare": 0.5, "export": 1.25})
    data = validate(write_manifest(ctx, None, ["build.log"]))
    assert data["status"] == "succeeded" and data["failure"] is None
    assert data["build_id"] == "c0ffee00"
    assert data["artifacts"] == [{
        "file": "t.raw", "format": "raw", "size": 20 * MiB,
        "allocated": os.stat(raw).st_blocks * 512,
        "sha256": subprocess.run(["sha256sum", str(raw)], capture_output=True, text=True,
                                 check=True).stdout.split()[0],
    }]
    assert data["steps"] == {"prepare": 0.5, "export": 1.25}
    assert data["accelerator"] == {"used": "tcg", "reason": "no /dev/kvm"}
    assert data["ready"] is None and data["check"] is None
    assert data["logs"] == ["build.log"]


def test_a_failed_build_keeps_log_consoles_and_a_failed_manifest(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    assert ctx.work_dir is not None
    (ctx.work_dir / "install-serial.log").write_text("installer says manifest-Secret-42\n")
    (ctx.work_dir / "serial.log").write_text("login: \n")
    (ctx.work_dir / "build.log").write_text("12:00:00 INFO    the build so far\n")
    ctx.timer.timings.update({"prepare": 0.1, "boot": 3.0})
    ctx.step = "boot"
    error = BuildError("the guest did not start", hint="look at its console")

    keep_outputs(ctx, _null_handler(), error)

    out = ctx.output_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "build.log", "manifest.json", "t.install-serial.log", "t.serial.log"]
    data = validate(out / MANIFEST_FILE)
    assert data["status"] == "failed"
    assert data["failure"] == {"step": "boot", "error": "the guest did not start",
                               "hint": "look at its console", "exit_code": 1}
    assert data["steps"] == {"prepare": 0.1, "boot": 3.0}
    assert data["artifacts"] == []
    assert data["logs"] == ["build.log", "t.install-serial.log", "t.serial.log"]
    assert (out / "t.install-serial.log").read_text() == "installer says <sensitive>\n"
    assert (out / "build.log").read_text().startswith("12:00:00 INFO    the build so far")


def test_a_check_failure_keeps_the_image_and_its_verdict(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    vhd = ctx.artifact_path("vhd")
    vhd.write_bytes(b"complete image")
    ctx.artifacts["vhd"] = vhd
    ctx.report = Report(image=str(vhd), checks=[
        CheckResult("R01", "pass", "fixed VHD"), CheckResult("R04", "fail", "swap on /dev/sda2")])
    ctx.step = "check"
    keep_outputs(ctx, _null_handler(), CheckFailed("not Azure-ready"))
    data = validate(ctx.output_dir / MANIFEST_FILE)
    assert data["status"] == "failed" and data["failure"]["step"] == "check"
    assert data["ready"] is False
    assert [(c["id"], c["status"]) for c in data["check"]] == [("R01", "pass"), ("R04", "fail")]
    assert [a["file"] for a in data["artifacts"]] == ["t.vhd"]


def test_a_failed_simulation_keeps_the_image_its_verdict_and_its_logs(tmp_path: Path) -> None:
    from builder.manifest import Simulation, SimulationLine
    from builder.steps.simulate import SimulationFailed

    ctx = context(tmp_path)
    assert ctx.work_dir is not None
    vhd = ctx.artifact_path("vhd")
    vhd.write_bytes(b"complete image")
    ctx.artifacts["vhd"] = vhd
    ctx.report = Report(image=str(vhd), checks=[CheckResult("R01", "pass", "fixed VHD")])
    ctx.simulation = Simulation(status="failed", seconds_to_ready=99.7, assertions=[
        SimulationLine(id="ssh", status="fail", title="SSH answers on the first boot",
                       evidence="not ready after 60s")])
    (ctx.work_dir / "simulate-console.log").write_text("sshd: no hostkeys available\n")
    (ctx.work_dir / "simulate-fabric.jsonl").write_text('{"path": "/?comp=versions"}\n')
    ctx.step = "simulate"
    keep_outputs(ctx, _null_handler(), SimulationFailed("does not provision"))
    data = validate(ctx.output_dir / MANIFEST_FILE)
    assert data["failure"]["step"] == "simulate"
    assert data["ready"] is False  # the check passed; the simulation did not
    assert data["simulation"]["status"] == "failed"
    assert [a["file"] for a in data["artifacts"]] == ["t.vhd"]
    assert data["logs"] == ["build.log", "t.simulate-console.log", "t.simulate-fabric.jsonl"]
    assert (ctx.output_dir / "t.simulate-console.log").read_text() == (
        "sshd: no hostkeys available\n")


@pytest.mark.parametrize(("exc", "error", "code"), [
    (KeyboardInterrupt(), "interrupted by Ctrl-C (SIGINT)", 130),
    (Terminated(), "terminated by SIGTERM", 143),
    (ZeroDivisionError("division by zero"), "internal error: ZeroDivisionError: division by zero",
     1),
])
def test_interrupts_and_bugs_are_failures_too(
    tmp_path: Path, exc: BaseException, error: str, code: int
) -> None:
    ctx = context(tmp_path)
    ctx.step = "provision"
    assert failure_of(ctx, exc).model_dump() == {
        "step": "provision", "error": error, "exit_code": code,
        "hint": "rerun with --debug for a traceback, and please report it" if code == 1 else None}
    keep_outputs(ctx, _null_handler(), exc)
    assert validate(ctx.output_dir / MANIFEST_FILE)["failure"]["exit_code"] == code


def test_secrets_in_an_error_are_masked_in_the_manifest(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    write_manifest(ctx, Failure(step="provision", error="echo manifest-Secret-42 failed",
                                hint=None, exit_code=1), ["build.log"])
    text = (ctx.output_dir / MANIFEST_FILE).read_text()
    assert "manifest-Secret-42" not in text and "echo <sensitive> failed" in text


def _null_handler() -> logging.Handler:
    return logging.NullHandler()


# --- real failed builds, from the command line ---------------------------------------------


@pytest.fixture
def truncated_qcow2(tmp_path: Path) -> Path:
    image = tmp_path / "cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True,
                   capture_output=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 40M", str(image)],
                   check=True, capture_output=True)
    os.truncate(image, 16 * MiB)
    return image


def test_a_build_from_a_truncated_image_fails_and_keeps_its_log_and_manifest(
    tmp_path: Path, work_root: Path, truncated_qcow2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = write_template(tmp_path, truncated_qcow2)
    out, log_file = tmp_path / "out" / "t", tmp_path / "logs" / "nightly.log"
    log_file.parent.mkdir()
    log_file.write_text("yesterday's log\n")
    argv = ["build", str(template), "--output-dir", str(out.parent), "--log-file", str(log_file)]

    assert main(argv) == 2
    assert "is corrupt" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["build.log", "manifest.json"]
    data = validate(out / MANIFEST_FILE)
    assert data["status"] == "failed" and data["artifacts"] == []
    failure = data["failure"]
    assert failure["step"] == "source disk" and failure["exit_code"] == 2
    assert "cloud.qcow2 (qcow2) is corrupt" in failure["error"]
    assert "truncated" in failure["hint"]
    assert list(data["steps"]) == ["prepare", "source disk"]
    build_log = (out / "build.log").read_text()
    assert "build failed in step source disk" in build_log
    assert "could not keep" not in build_log
    # --log-file has the same log, written afresh.
    written = log_file.read_text()
    assert "yesterday" not in written and "build failed in step source disk" in written
    assert "building t (Debian 12)" in written
    assert list(work_root.iterdir()) == [], "the work directory was left behind"

    # The failed manifest blocks no rebuild; the next failure replaces it, and a console
    # an earlier failed build kept does not pass for this one's.
    (out / "t.serial.log").write_text("an earlier build's console\n")
    assert main(argv) == 2
    assert validate(out / MANIFEST_FILE)["build_id"] != data["build_id"]
    assert sorted(p.name for p in out.iterdir()) == ["build.log", "manifest.json"]


def test_a_build_with_a_wrong_checksum_fails_before_copying(
    tmp_path: Path, work_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True,
                   capture_output=True)
    template = write_template(tmp_path, image, "sha256:" + "ab" * 32)
    out = tmp_path / "out"
    assert main(["build", str(template), "--output-dir", str(out)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    data = validate(out / "t" / MANIFEST_FILE)  # --output-dir DIR: DIR/<name>/
    assert data["failure"]["step"] == "source disk"
    assert "checksum mismatch" in data["failure"]["error"]


def test_an_unwritable_log_file_is_a_usage_error(
    tmp_path: Path, work_root: Path, truncated_qcow2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = write_template(tmp_path, truncated_qcow2)
    out = tmp_path / "out"
    argv = ["build", str(template), "--output-dir", str(out),
            "--log-file", str(tmp_path / "missing" / "build.log")]
    assert main(argv) == 2
    assert "cannot write the log file" in capsys.readouterr().err
    assert not out.exists()



# --- a build whose process died: what `azbuild gc --yes` keeps ----------------------------


def test_a_dead_build_s_log_and_failed_manifest_are_salvaged(tmp_path: Path) -> None:
    from builder.housekeeping.salvage import DIED, record, salvage

    ctx = context(tmp_path)
    assert ctx.work_dir is not None
    ctx.step = "provision"
    ctx.timer.timings["boot"] = 3.0
    record(ctx)
    (ctx.work_dir / "build.log").write_text("12:00:00 INFO    ==> provision\n")
    half_written = ctx.output_dir / ".t.raw.0123abcd.tmp"
    half_written.write_bytes(b"partial")
    someone_elses = ctx.output_dir / "notes.txt"
    someone_elses.write_text("kept")
    lines = salvage(ctx.work_dir)
    assert any("kept its build.log" in line for line in lines), lines
    manifest = validate(ctx.output_dir / MANIFEST_FILE)
    assert manifest["status"] == "failed"
    assert manifest["failure"]["step"] == "provision"
    assert manifest["failure"]["error"] == DIED
    assert manifest["logs"] == ["build.log"] and manifest["artifacts"] == []
    assert manifest["steps"] == {"boot": 3.0}
    log_text = (ctx.output_dir / "build.log").read_text()
    assert log_text.startswith("12:00:00 INFO    ==> provision\n") and DIED in log_text
    assert not half_written.exists() and someone_elses.read_text() == "kept"


def test_a_build_that_died_before_its_first_record_leaves_nothing_to_salvage(
    tmp_path: Path,
) -> None:
    from builder.housekeeping.salvage import salvage

    (tmp_path / "work").mkdir()
    assert salvage(tmp_path / "work") == []


# --- the artifacts' digests: hashed alongside the check ------------------------------------


def exported(tmp_path: Path) -> tuple[BuildContext, ExitStack]:
    """A context after the real export step, RAW and VHD, from a 24 MiB work disk."""
    image = tmp_path / "disk.raw"
    image.write_bytes(b"")
    template = write_template(tmp_path, image)
    template.write_text(template.read_text() + '[output]\nformats = ["raw", "vhd"]\n')
    ctx = BuildContext(loaded=load_template(template), options=BuildOptions(),
                       distro=resolve("debian", "12"), uri="qemu:///system",
                       output_dir=tmp_path / "out", build_id="c0ffee00")
    ctx.output_dir.mkdir()
    ctx.work_dir = tmp_path / "work"
    ctx.work_dir.mkdir()
    ctx.disk = ctx.work_dir / "disk.raw"
    with open(ctx.disk, "wb") as f:
        f.truncate(24 * MiB)
        f.seek(MiB)
        f.write(os.urandom(2 * MiB))
    stack = ExitStack()
    export.export(ctx, stack)
    return ctx, stack


def sha256sum(path: Path) -> str:
    done = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return done.stdout.split()[0]


def test_the_manifest_step_lists_the_digests_hashed_in_the_background(tmp_path: Path) -> None:
    ctx, stack = exported(tmp_path)
    with stack:
        export.write_manifest(ctx, stack)
    data = validate(ctx.output_dir / MANIFEST_FILE)
    assert {a["file"]: a["sha256"] for a in data["artifacts"]} == {
        "t.raw": sha256sum(ctx.artifact_path("raw")),
        "t.vhd": sha256sum(ctx.artifact_path("vhd"))}


def test_a_failed_check_still_lists_the_artifacts_digests(tmp_path: Path) -> None:
    ctx, stack = exported(tmp_path)
    ctx.step = "check"
    failure = CheckFailed("not Azure-ready")
    with pytest.raises(CheckFailed), stack:
        raise failure
    assert ctx.digests is not None
    keep_outputs(ctx, _null_handler(), failure)
    data = validate(ctx.output_dir / MANIFEST_FILE)
    assert data["failure"]["step"] == "check"
    assert {a["file"]: a["sha256"] for a in data["artifacts"]} == {
        "t.raw": sha256sum(ctx.artifact_path("raw")),
        "t.vhd": sha256sum(ctx.artifact_path("vhd"))}


def test_an_interrupted_build_stops_the_hashing_before_its_artifacts_go(tmp_path: Path) -> None:
    ctx, stack = exported(tmp_path)
    assert ctx.digests is not None
    with pytest.raises(KeyboardInterrupt), stack:
        raise KeyboardInterrupt
    assert not ctx.digests.running
    assert not ctx.artifact_path("raw").exists() and not ctx.artifact_path("vhd").exists()


# --- inputs --------------------------------------------------------------------------------


def test_the_manifest_records_its_inputs(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    layer = tmp_path / "base.toml"
    layer.write_text('[vm]\nmemory = "2GiB"\n')
    template = tmp_path / "t.toml"
    template.write_text('extends = ["base.toml"]\n' + template.read_text())
    ctx.loaded = load_template(template)
    data = validate(write_manifest(ctx, None, ["build.log"]))
    assert data["inputs"] == {
        "source": {"kind": "disk_image", "location": str(tmp_path / "disk.raw"),
                   "digest": None},
        "template_files": [{"path": str(layer), "sha256": sha256sum(layer)},
                           {"path": str(template), "sha256": sha256sum(template)}],
        "guest_files": [],  # nothing was fed: no step ran
    }
    assert data["inventory"] is None
    assert data["azbuild_version"] and len(data["template_sha256"]) == 64


def test_the_source_disk_step_records_the_source_s_digest(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    source = tmp_path / "disk.raw"
    source.write_bytes(b"\x00" * 510 + b"\x55\xaa" + b"\x00" * (MiB - 512) + b"a disk")
    with ExitStack() as stack:
        prepare_disk(ctx, stack)
    assert ctx.source_digest == f"sha256:{sha256sum(source)}"
    data = validate(write_manifest(ctx, None, ["build.log"]))
    assert data["inputs"]["source"]["digest"] == f"sha256:{sha256sum(source)}"


def test_source_digest(tmp_path: Path) -> None:
    iso = tmp_path / "debian.iso"
    iso.write_bytes(b"an installer")
    literal = "sha256:" + "AB" * 32
    assert source_digest(iso, literal) == literal.lower()
    assert source_digest(iso, "sha512:" + "cd" * 64) == "sha512:" + "cd" * 64
    cached = tmp_path / ("sha512-" + "ef" * 64 + ".iso")
    cached.write_bytes(b"")
    assert source_digest(cached, "file:https://example.org/SHA512SUMS") == "sha512:" + "ef" * 64
    assert source_digest(iso, "file:SHA256SUMS") == f"sha256:{sha256sum(iso)}"
    assert source_digest(iso, None) == f"sha256:{sha256sum(iso)}"
