"""manifest.json: what a build made, or where and why it failed; its model is its schema.

Every build that got past its preflight writes one, succeeded or failed. The pydantic
models below build it (so it matches its schema by construction) and are the schema
that `azbuild schema --manifest` prints. docs/manifest.md documents every field.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from builder import __version__
from builder.image.digest import BackgroundDigests, sha256_file
from builder.image.disk import allocated_bytes, atomic_output
from builder.image.verified import remembered_digest
from builder.inventory import Inventory
from builder.records import Record, document_config
from builder.redact import redact, redact_data

if TYPE_CHECKING:
    from builder.context import BuildContext

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
Status = Literal["succeeded", "failed"]


class Distro(Record):
    """The distribution the image holds."""

    name: str = Field(description="the template's distro.name, e.g. 'debian'")
    version: str = Field(description="the template's distro.version, e.g. '12'")
    label: str = Field(description="a readable name, e.g. 'Debian 12'")


class Accelerator(Record):
    """How the build's VM ran."""

    used: Literal["kvm", "tcg"] | None = Field(
        description="the accelerator the VM ran on; null when the build failed before the "
        "accelerator step")
    reason: str | None = Field(description="why that accelerator was chosen")


class Artifact(Record):
    """One image file in the output directory."""

    file: str = Field(description="file name, relative to the output directory")
    format: Literal["raw", "vhd-fixed"] = Field(description="what the file holds")
    size: int = Field(ge=0, description="the file's length in bytes")
    allocated: int = Field(ge=0, description="bytes the filesystem allocated (sparse files)")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="SHA-256 of the whole file")


class CheckLine(Record):
    """One line of the Azure-readiness check (`azbuild check`)."""

    id: str = Field(description="R01..R15, or another id for an extra finding (a warning)")
    status: Literal["pass", "fail", "warn", "skip"] = Field(description="the verdict")
    title: str = Field(description="what the requirement asks")
    evidence: str = Field(description="what was found")


class SimulationLine(Record):
    """One assertion of the simulation (`azbuild simulate`)."""

    id: str = Field(description="ready, no-failure-after-ready, ssh, user, sudo, hostname, "
                    "password-auth, custom-data, agent-errors, resource-disk, ...")
    status: Literal["pass", "fail", "info"] = Field(description="the verdict")
    title: str = Field(description="what was asserted")
    evidence: str = Field(description="what was seen")


class Simulation(Record):
    """The first boot as Azure provisions it, simulated offline (docs/simulate.md)."""

    status: Literal["passed", "failed", "skipped"] = Field(description="the verdict")
    reason: str | None = Field(None, description="why it was skipped, or could not run")
    seconds_to_ready: float | None = Field(
        None, description="from the VM's start to the agent's first Ready report")
    seconds_to_ssh: float | None = Field(
        None, description="from the VM's start to the first SSH login")
    agents: list[str] = Field(default_factory=list,
                              description="the User-Agents that reported Ready")
    assertions: list[SimulationLine] = Field(default_factory=list)


class Time(Record):
    """Where the wall time went."""

    wall_seconds: float = Field(ge=0, description="from the start of the build to the manifest")
    waiting_on_guest_seconds: float = Field(
        ge=0, description="time spent waiting on the guest (boot, installer, SSH, provisioners, "
        "shutdown)")
    azbuild_seconds: float = Field(description="wall_seconds minus waiting_on_guest_seconds")
    overhead_seconds: float = Field(
        description="orchestration overhead: azbuild_seconds minus the offline check "
        "(`steps.check`); what azbuild itself adds to the guest's work")


class Failure(Record):
    """Why a failed build failed: what the command line printed as its error."""

    step: str = Field(description="the step that failed: the last key of `steps`")
    error: str = Field(description="the error message, secrets masked")
    hint: str | None = Field(description="what to do about it, when azbuild knows")
    exit_code: int = Field(description="azbuild's exit code: 1 failed, 2 the user's input or "
                           "environment, 130 Ctrl-C, 143 SIGTERM")


class Source(Record):
    """The install medium or source disk the build started from."""

    kind: Literal["iso", "disk_image"] = Field(description="source.iso or source.disk_image")
    location: str = Field(description="the template's source.iso (path or URL) or "
                          "source.disk_image (path)")
    digest: str | None = Field(
        description="'sha256:<hex>' (or 'sha512:<hex>', as the template's checksum gives it) "
        "of the file the build used; null when the build failed before reading it")


class InputFile(Record):
    """One template file of the build."""

    path: str = Field(description="the file's absolute path")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="SHA-256 of the file's bytes")


class GuestFile(Record):
    """One file the build fed its guest."""

    name: str = Field(description="the file's name in `azbuild render`'s output "
                      "(preseed.cfg, user-data, azure-prep.sh, provision-1.sh, ...)")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="SHA-256 of the file as "
                        "`azbuild render` writes it: what the guest got, with render's "
                        "placeholders for the keys (and password hash, instance-id) the "
                        "build generated, secrets masked")


class Inputs(Record):
    """What the build was made from (with template_sha256 and azbuild_version)."""

    source: Source
    template_files: list[InputFile] = Field(
        description="the template and its layers as read: each layer before the file that "
        "extends it, the template itself last")
    guest_files: list[GuestFile] = Field(
        default_factory=list,
        description="the files the build fed its guest, in the order it fed them: answer "
        "files and the installer's command line (unless the install was cached) or the "
        "seed, the provisioner scripts it ran, the Azure preparation scripts. "
        "`azbuild render` of the same template writes them byte for byte")


class CacheStage(Record):
    """One stage of the build's chain and what the stage cache did with it (docs/cache.md)."""

    stage: str = Field(description="'install', 'source', or 'provision N' (1-based)")
    description: str = Field(description="what the stage is, e.g. 'shell: apt-get ...'")
    key: str = Field(pattern="^[0-9a-f]{64}$", description="the stage's cache key")
    result: Literal["hit", "stored", "miss"] = Field(
        description="'hit': started from the cached entry; 'stored': made and kept; "
        "'miss': made, not kept (--no-cache, or the store failed)")
    seconds_saved: float | None = Field(
        description="for a hit: what making the entry took when it was stored")


class Manifest(Record):
    """manifest.json in a build's output directory."""

    model_config = document_config("azbuild build manifest")

    status: Status = Field(description="'succeeded', or 'failed' (an interrupt included)")
    failure: Failure | None = Field(description="why the build failed; null when it succeeded")
    build_id: str = Field(description="the build's id, as in the VM's and work directory's names")
    template: str = Field(description="the template's name")
    template_sha256: str = Field(
        pattern="^[0-9a-f]{64}$",
        description="the template's identity: SHA-256 of the resolved template (layers, "
        "variables and all) with its ${build.*} references as written, without "
        "output.directory and secrets; the same for two builds of an unchanged template")
    distro: Distro
    azbuild_version: str = Field(description="the azbuild that built it")
    started: str = Field(description="when the build started, ISO 8601 with time zone")
    finished: str = Field(description="when the manifest was written, ISO 8601 with time zone")
    accelerator: Accelerator
    firmware: Literal["bios", "uefi"] = Field(description="the template's vm.firmware")
    provisioning: str = Field(description="the template's azure.provisioning")
    artifacts: list[Artifact] = Field(
        description="the images written; empty for a failed build unless it failed only the "
        "Azure-readiness check")
    logs: list[str] = Field(
        description="log files kept beside the manifest: build.log, and for a failed build "
        "the installer and boot consoles")
    skipped_requirements: dict[str, str] = Field(
        description="requirement id to the reason the template gives for skipping it")
    ready: bool | None = Field(
        description="the Azure-readiness verdict: the check passed and the simulation "
        "passed or was skipped; null when the check did not run")
    check: list[CheckLine] | None = Field(
        description="the check's lines; null when the check did not run")
    simulation: Simulation | None = Field(
        description="the simulated first boot; null when the build ended before it")
    publish: list[dict[str, Any]] = Field(
        description="one record per [[publish]] entry run, in order: type, what was sent "
        "and skipped, the blob's URL (no SAS), the Azure resources created, duration, and "
        "the error of a failed entry (docs/publish.md)")
    steps: dict[str, float] = Field(
        description="seconds per step run, in order; a failed build's last step is the one "
        "that failed")
    time: Time
    inputs: Inputs = Field(description="the source and template files the build used")
    cache: list[CacheStage] = Field(
        description="the stage cache, stage by stage in chain order: hits, entries stored; "
        "empty when the build used no cache (--no-cache, or a disk-image build without a "
        "cache point)")
    inventory: Inventory | None = Field(
        description="what the image holds, read by the check: packages, "
        "kernels, enabled services, os-release, kernel arguments; null when the check did "
        "not run")


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of manifest.json, as `azbuild schema --manifest` prints it."""
    return Manifest.model_json_schema()


def build_manifest(ctx: BuildContext, failure: Failure | None, logs: list[str],
                   with_artifacts: bool = True) -> Manifest:
    """The manifest of the build in `ctx` as it stands now (`with_artifacts` False: no
    artifact is listed, so nothing is hashed)."""
    template = ctx.template
    finished = datetime.now(UTC)
    wall = max((finished - ctx.started).total_seconds(), 0.0)
    report = ctx.report
    return Manifest(
        status="failed" if failure is not None else "succeeded",
        failure=failure,
        build_id=ctx.build_id,
        template=template.name,
        template_sha256=ctx.loaded.digest(),
        distro=Distro(name=template.distro.name, version=template.distro.version,
                      label=ctx.distro.label),
        azbuild_version=__version__,
        started=ctx.started.isoformat(timespec="seconds"),
        finished=finished.isoformat(timespec="seconds"),
        accelerator=Accelerator(
            used="kvm" if ctx.accelerator == "kvm" else "tcg" if ctx.accelerator else None,
            reason=ctx.accelerator_reason),
        firmware=template.vm.firmware,
        provisioning=template.azure.provisioning,
        artifacts=[_artifact(fmt, path, ctx.digests) for fmt, path in ctx.artifacts.items()
                   if path.is_file()] if with_artifacts else [],
        logs=logs,
        skipped_requirements=dict(template.azure.skip),
        ready=(report.ready and (ctx.simulation is None or ctx.simulation.status != "failed"))
        if report else None,
        check=[CheckLine(id=c.id, status=c.status, title=c.title, evidence=c.evidence)
               for c in report.checks] if report else None,
        simulation=ctx.simulation,
        publish=list(ctx.published),
        steps=dict(ctx.timer.timings),
        time=Time(
            wall_seconds=round(wall, 1),
            waiting_on_guest_seconds=round(ctx.guest_seconds, 1),
            azbuild_seconds=round(wall - ctx.guest_seconds, 1),
            overhead_seconds=round(ctx.overhead_seconds(wall), 1),
        ),
        inputs=_inputs(ctx),
        cache=list(ctx.cache_stages),
        inventory=report.inventory if report else None,
    )


def _inputs(ctx: BuildContext) -> Inputs:
    source = ctx.template.source
    kind: Literal["iso", "disk_image"] = "iso" if source.iso is not None else "disk_image"
    files = [InputFile(path=str(p), sha256=sha256_file(p)) for p in ctx.loaded.layers
             if p.is_file()]
    return Inputs(
        source=Source(kind=kind, location=str(source.iso or source.disk_image),
                      digest=ctx.source_digest),
        template_files=files,
        guest_files=[GuestFile(name=name, sha256=digest)
                     for name, digest in ctx.guest_files.items()])


def source_digest(path: Path, checksum: str | None) -> str:
    """'<algorithm>:<hex>' of a verified source file: the template's literal checksum, or
    the ISO cache's name for it (sha256-<hex>.iso), else the file's SHA-256: remembered
    from its verification (a 'file:' checksum) or an earlier build, or hashed now."""
    if checksum is not None and checksum.startswith(("sha256:", "sha512:")):
        return checksum.lower()
    cached = re.fullmatch(r"(sha256|sha512)-([0-9a-f]+)\.iso", path.name)
    if cached:
        return f"{cached.group(1)}:{cached.group(2)}"
    return f"sha256:{remembered_digest(path, 'sha256', _sparse_sha256)}"


def _sparse_sha256(path: Path, algorithm: str) -> str:
    assert algorithm == "sha256"
    return sha256_file(path)


def write_manifest(ctx: BuildContext, failure: Failure | None, logs: list[str]) -> Path:
    """Write manifest.json into the output directory atomically, secrets masked."""
    data: dict[str, Any] = redact_data(build_manifest(ctx, failure, logs).model_dump(mode="json"))
    target = ctx.output_dir / MANIFEST_FILE
    with atomic_output(target, force=True) as tmp:
        tmp.write_text(redact(json.dumps(data, indent=2)) + "\n")
    log.info("wrote %s (%s)", target, data["status"])
    return target


def _artifact(fmt: str, path: Path, digests: BackgroundDigests | None) -> Artifact:
    # The export step's background hashing, when the file is unchanged since; else now.
    sha256 = (digests.known(path) if digests is not None else None) or sha256_file(path)
    return Artifact(file=path.name, format="vhd-fixed" if fmt == "vhd" else "raw",
                    size=path.stat().st_size, allocated=allocated_bytes(path), sha256=sha256)
