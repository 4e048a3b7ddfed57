"""`azbuild simulate IMAGE`: boot an image as Azure provisions it, with nothing outside
this machine, and say whether it reports Ready and lets its user in on the first boot.

This outer half prepares a work directory (a qcow2 overlay on the image, so the image is
never written; a fresh key; the UEFI variable store for Gen2), then runs the simulation
itself in a private network namespace (`unshare --net`, with `--map-root-user` for a
user who is not root), relays its log and reads its outcome. Design: docs/simulate.md.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from builder.errors import BuildError, UsageError, indent
from builder.housekeeping.gc import claim_work_dir
from builder.image.disk import detect_image_format
from builder.offline_check.disklabel import (
    ESP_GPT_TYPE,
    SECTOR,
    parse_gpt_entries,
    parse_gpt_header,
    parse_mbr,
)
from builder.paths import SIMULATE_CONSOLE, SIMULATE_REQUESTS, work_root
from builder.run import run
from builder.simulate.config import SimulationConfig
from builder.simulate.diagnosis import diagnose
from builder.simulate.machine import OVMF_CODE, OVMF_VARS, Firmware, SimulatedVm
from builder.simulate.outcome import SimulationOutcome
from builder.vm.keys import KeyPair
from builder.vm.libvirt import free_port

log = logging.getLogger("builder.simulate")

BIOS_BOOT_GPT_TYPE = "21686148-6449-6E6F-744E-656564454649"
SIM_USER = "azureuser"
# Formats QEMU can put an overlay on; anything else is refused before a VM starts.
BOOTABLE_FORMATS = ("raw", "vhd-fixed", "vhd-dynamic", "qcow2")
# The inner process's own work after SSH (checks, CustomData wait): on top of the waits.
CHECKS_BOUND = 900.0
DEFAULT_READY_TIMEOUT = 900.0
DEFAULT_SSH_TIMEOUT = 180.0
# Failures whose cause the guest's disk can show once the VM stopped.
DIAGNOSED = {"ready", "ssh", "sudo"}


@dataclass(frozen=True)
class SimulateOptions:
    firmware: Firmware | None = None  # None: from the manifest beside the image, or its disk
    accelerator: Literal["kvm", "tcg"] = "tcg"
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    ssh_timeout: float = DEFAULT_SSH_TIMEOUT
    expect_agent: Literal["waagent", "cloud-init"] | None = None
    hostname: str = "azbuild-simulated"
    memory_mib: int = 1024
    keep_dir: Path | None = None  # where the console and fabric log are copied, if anywhere


def firmware_of_disk(image: Path) -> Firmware:
    """UEFI when the disk is GPT with an EFI system partition and no BIOS boot partition
    (a raw image, or a fixed VHD, whose data is raw); BIOS otherwise."""
    with open(image, "rb") as f:
        head = f.read(SECTOR * 34)
    label, _ = parse_mbr(head[:SECTOR])
    if label != "gpt":
        return "bios"
    header = parse_gpt_header(head[SECTOR:SECTOR * 2])
    if header is None:
        return "bios"
    lba, count, size = header
    with open(image, "rb") as f:
        f.seek(lba * SECTOR)
        entries = parse_gpt_entries(f.read(count * size), count, size)
    types = {p.type for p in entries}
    return "uefi" if ESP_GPT_TYPE in types and BIOS_BOOT_GPT_TYPE not in types else "bios"


def facts_from_manifest(image: Path) -> dict[str, str]:
    """firmware and provisioning as the build's manifest beside the image records them."""
    path = image.parent / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    names = {a.get("file", "") for a in data.get("artifacts", []) if isinstance(a, dict)}
    if names and image.name not in {Path(n).name for n in names}:
        return {}
    return {k: v for k in ("firmware", "provisioning")
            if isinstance(v := data.get(k), str)}


def namespace_argv() -> list[str]:
    """A private network namespace that dies with its first process (and that process
    with azbuild, kill -9 included)."""
    argv = ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--net", "--fork",
            "--kill-child"]
    if os.geteuid() != 0:
        argv.append("--map-root-user")
    return argv


def _overlay(image: Path, image_format: str, overlay: Path) -> None:
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.resolve()),
         "-F", image_format, str(overlay)])


def _check_image(image: Path) -> str:
    if not image.is_file():
        raise UsageError(f"{image}: no such image file",
                         hint="give the path of a RAW, fixed VHD or qcow2 image")
    fmt = detect_image_format(image)
    if fmt.name not in BOOTABLE_FORMATS:
        raise UsageError(f"{image} is a {fmt.name} image ({fmt.evidence}): it cannot be "
                         "simulated", hint="simulate the RAW or fixed VHD that azbuild wrote")
    return fmt.qemu_format


def _relay(stream: object, tail: deque[str]) -> None:
    for raw in stream:  # type: ignore[attr-defined]
        line = raw.decode(errors="replace").rstrip()
        try:
            record = json.loads(line)
            level = logging.getLevelName(record["level"])
            message = str(record["message"])
        except (ValueError, KeyError, TypeError):
            level, message = logging.WARNING, line
        tail.append(message)
        log.log(level if isinstance(level, int) else logging.INFO, "%s", message)


def _run_inside(config: Path, bound: float) -> None:
    """Run the inner process to its end, or kill it (and so everything it started) at
    `bound`, on Ctrl-C or on SIGTERM."""
    argv = [*namespace_argv(), sys.executable, "-m", "builder.simulate.inside", str(config)]
    log.debug("simulation: %s", " ".join(argv))
    tail: deque[str] = deque(maxlen=20)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    except OSError as exc:
        raise BuildError(f"cannot start the simulation: {exc}",
                         hint="it needs util-linux's unshare and setpriv") from None
    relay = threading.Thread(target=_relay, args=(proc.stderr, tail), daemon=True)
    relay.start()
    try:
        proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BuildError(f"the simulation did not end within {bound:.0f}s: stopped it") from None
    finally:
        if proc.poll() is None:  # Ctrl-C, SIGTERM: the namespace goes with its process
            proc.kill()
            proc.wait()
        relay.join(timeout=5)
    if proc.returncode != 0:
        raise BuildError(
            f"the simulation failed to run (exit {proc.returncode}):\n" + indent(tail),
            hint="a user who is not root needs user namespaces "
                 "(sysctl kernel.unprivileged_userns_clone=1) and access to /dev/kvm or TCG",
        )


def simulate_image(image: Path, options: SimulateOptions) -> SimulationOutcome:
    """Boot `image` as Azure would provision it; the image itself is only read."""
    image_format = _check_image(image)
    recorded = facts_from_manifest(image)
    firmware: Firmware = options.firmware or (
        "uefi" if recorded.get("firmware") == "uefi" else
        "bios" if recorded.get("firmware") == "bios" else
        firmware_of_disk(image) if image_format in ("raw", "vpc") else "bios")
    expect = options.expect_agent
    if expect is None and recorded.get("provisioning") in ("waagent", "cloud-init"):
        expect = "waagent" if recorded["provisioning"] == "waagent" else "cloud-init"
    if firmware == "uefi" and not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        raise UsageError(f"a UEFI (Gen2) image needs OVMF: {OVMF_CODE} is missing",
                         hint="apt-get install ovmf")
    root = work_root()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="simulate-", dir=root))
    try:
        claim_work_dir(work)
        disk = work / "os-disk.qcow2"
        _overlay(image, image_format, disk)
        vars_file = None
        if firmware == "uefi":
            vars_file = work / "OVMF_VARS.fd"  # empty, as an Azure Gen2 VM's
            shutil.copyfile(OVMF_VARS, vars_file)
        key = KeyPair.generate("azbuild-simulate")
        private = work / "client_key"
        private.touch(mode=0o600)
        private.write_text(key.private_openssh)
        token = secrets.token_hex(8)
        marker = Path(f"/var/tmp/azbuild-custom-data-{token}")
        cfg = SimulationConfig(
            vm=SimulatedVm(disk=disk, media=work / "provisioning.iso",
                           console=work / "console.log", ssh_port=free_port(),
                           accelerator=options.accelerator, firmware=firmware,
                           vars_file=vars_file, memory_mib=options.memory_mib,
                           vm_uuid=str(uuid.uuid4())),
            user=SIM_USER, hostname=options.hostname, public_key=key.public_line,
            private_key=private,
            custom_data=f"#!/bin/sh\necho {marker.name} > {marker}\n".encode(),
            custom_data_marker=marker, fabric_log=work / "fabric.jsonl",
            outcome=work / "outcome.json", image=str(image),
            ready_timeout=options.ready_timeout, ssh_timeout=options.ssh_timeout,
            expect_agent=expect)
        config = work / "config.json"
        cfg.write(config)
        log.info("simulating %s as Azure provisions it (%s, %s, waagent/cloud-init as the "
                 "image has them; Ready within %.0fs)", image, firmware, options.accelerator,
                 options.ready_timeout)
        started = time.monotonic()
        _run_inside(config, options.ready_timeout + options.ssh_timeout + CHECKS_BOUND)
        try:
            outcome = SimulationOutcome.from_json(json.loads(cfg.outcome.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise BuildError(f"the simulation wrote no outcome: {exc}") from None
        failed = {a.id for a in outcome.failed()} & DIAGNOSED
        if failed:
            for cause in diagnose(disk, options.accelerator, failed):
                outcome.add("cause", "info", "what the guest's disk shows", cause)
        outcome.seconds = time.monotonic() - started
        if options.keep_dir is not None:
            _keep(work, options.keep_dir)
        return outcome
    finally:
        shutil.rmtree(work, ignore_errors=True)


KEPT_FILES = {"console.log": SIMULATE_CONSOLE, "fabric.jsonl": SIMULATE_REQUESTS}


def _keep(work: Path, target: Path) -> None:
    """The console and the fabric's request log, for whoever reads why it failed."""
    target.mkdir(parents=True, exist_ok=True)
    for name, kept in KEPT_FILES.items():
        if (work / name).is_file():
            shutil.copyfile(work / name, target / kept)


__all__ = ["KEPT_FILES", "SimulateOptions", "firmware_of_disk", "namespace_argv",
           "simulate_image"]
