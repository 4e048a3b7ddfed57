"""The simulated Azure VM's command line, the namespace it runs in, and how an image's
generation is told: pure functions, checked argument for argument."""

from __future__ import annotations

import json
import os
import struct
import uuid
from pathlib import Path

import pytest

from builder.offline_check.disklabel import ESP_GPT_TYPE
from builder.simulate.machine import SimulatedVm, qemu_argv
from builder.simulate.outcome import SimulationOutcome
from builder.simulate.simulator import (
    BIOS_BOOT_GPT_TYPE,
    facts_from_manifest,
    firmware_of_disk,
    namespace_argv,
)


def vm(tmp_path: Path, **changes: object) -> SimulatedVm:
    base: dict[str, object] = dict(
        disk=tmp_path / "os.qcow2", media=tmp_path / "ovf.iso", console=tmp_path / "console.log",
        ssh_port=40022, accelerator="tcg", vm_uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    base.update(changes)
    return SimulatedVm(**base)  # type: ignore[arg-type]


def test_a_gen1_vm_looks_like_hyper_v_on_azure(tmp_path: Path) -> None:
    argv = qemu_argv(vm(tmp_path))
    assert argv == [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-name", "azbuild-simulate",
        "-machine", "pc", "-accel", "tcg", "-cpu", "max,-hypervisor", "-smp", "2",
        "-m", "1024", "-uuid", "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "-smbios", "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine,"
                   "version=Hyper-V UEFI Release v4.1,uuid=1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "-smbios", "type=3,manufacturer=Microsoft Corporation,"
                   "asset=7783-7084-3265-9085-8269-3286-77",
        "-display", "none", "-serial", f"file:{tmp_path}/console.log",
        "-drive", f"file={tmp_path}/os.qcow2,if=none,id=osdisk,format=qcow2,cache=unsafe",
        "-device", "virtio-blk-pci,drive=osdisk,bootindex=0",
        "-device", "virtio-scsi-pci,id=scsi0",
        "-drive", f"file={tmp_path}/ovf.iso,if=none,id=media,format=raw,media=cdrom,"
                  "readonly=on",
        "-device", "scsi-cd,bus=scsi0.0,drive=media",
        "-netdev", "user,id=n0,net=168.63.129.0/24,host=168.63.129.16,dns=168.63.129.3,"
                   "hostfwd=tcp:127.0.0.1:40022-:22",
        "-device", "virtio-net-pci,netdev=n0,mac=00:15:5d:a0:00:01",
        "-device", "virtio-rng-pci",
    ]


def test_a_gen2_vm_boots_ovmf_with_its_own_empty_variables(tmp_path: Path) -> None:
    argv = qemu_argv(vm(tmp_path, firmware="uefi", vars_file=tmp_path / "vars.fd",
                        accelerator="kvm"))
    assert argv[argv.index("-machine") + 1] == "q35"
    assert argv[argv.index("-cpu") + 1] == "host,-hypervisor"
    assert argv[-4:] == [
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,"
                  "file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        "-drive", f"if=pflash,format=raw,unit=1,file={tmp_path}/vars.fd",
    ]
    with pytest.raises(ValueError, match="variable store"):
        qemu_argv(vm(tmp_path, firmware="uefi"))


def test_the_namespace_maps_root_only_for_a_user_who_is_not_root() -> None:
    argv = namespace_argv()
    assert argv[:8] == ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--net", "--fork",
                        "--kill-child"]
    assert ("--map-root-user" in argv) == (os.geteuid() != 0)


def _gpt_disk(path: Path, types: list[str]) -> None:
    """A disk with a protective MBR, a GPT header and one entry per type."""
    data = bytearray(512 * 40)
    data[510:512] = b"\x55\xaa"
    data[446 + 4] = 0xEE  # protective MBR partition type
    struct.pack_into("<I", data, 446 + 8, 1)
    data[512:520] = b"EFI PART"
    struct.pack_into("<QII", data, 512 + 72, 2, len(types), 128)
    for i, guid in enumerate(types):
        entry = 1024 + i * 128
        data[entry:entry + 16] = uuid.UUID(guid).bytes_le
        struct.pack_into("<QQ", data, entry + 32, 2048 * (i + 1), 2048 * (i + 2) - 1)
    path.write_bytes(bytes(data))


def test_the_generation_comes_from_the_partition_table(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    _gpt_disk(disk, [ESP_GPT_TYPE, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"])
    assert firmware_of_disk(disk) == "uefi"
    _gpt_disk(disk, [BIOS_BOOT_GPT_TYPE, ESP_GPT_TYPE])  # hybrid: boots as Gen1 too
    assert firmware_of_disk(disk) == "bios"
    mbr = bytearray(512 * 40)
    mbr[510:512] = b"\x55\xaa"
    mbr[446 + 4] = 0x83
    disk.write_bytes(bytes(mbr))
    assert firmware_of_disk(disk) == "bios"


def test_the_manifest_beside_the_image_speaks_only_for_its_own_artifacts(tmp_path: Path) -> None:
    image = tmp_path / "demo.vhd"
    image.write_bytes(b"")
    manifest = {"firmware": "uefi", "provisioning": "cloud-init",
                "artifacts": [{"file": "demo.vhd"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert facts_from_manifest(image) == {"firmware": "uefi", "provisioning": "cloud-init"}
    manifest["artifacts"] = [{"file": "other.vhd"}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert facts_from_manifest(image) == {}
    (tmp_path / "manifest.json").write_text("not json")
    assert facts_from_manifest(image) == {}


def test_an_outcome_passes_only_with_assertions_and_no_failure() -> None:
    outcome = SimulationOutcome(image="x.vhd", firmware="bios", accelerator="tcg")
    assert not outcome.passed  # nothing was asserted: nothing is proven
    outcome.add("ready", "pass", "the agent reported Ready", "after 1s")
    outcome.add("resource-disk", "info", "the resource disk", "not simulated")
    assert outcome.passed
    outcome.add("ssh", "fail", "SSH answers", "refused")
    assert not outcome.passed
    again = SimulationOutcome.from_json(json.loads(json.dumps(outcome.to_json())))
    assert again == outcome
    assert again.summary_lines()[-1].startswith("simulation FAILED: Ready after -")
