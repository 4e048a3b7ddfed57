"""The simulated Azure VM's QEMU command line, built by a pure function (tested exactly).

QEMU runs directly, not through libvirt: its user-mode network must live in the
simulation's private network namespace, where the fabric listens, and libvirt starts
QEMU in the host's namespace (docs/simulate.md). What the guest must see to take the
machine for Azure:

- SMBIOS saying Microsoft Corporation / Virtual Machine, and the chassis asset tag that
  cloud-init's ds-identify looks for;
- systemd's ConditionVirtualization=microsoft on the agent's unit must hold. On Azure
  systemd reads Hyper-V's CPUID signature ("Microsoft Hv"), which QEMU offers only under
  KVM; so the CPUID hypervisor bit is hidden (else QEMU's "TCGTCGTCGTCG" decides) and
  systemd falls back to DMI, where only a product version starting with "Hyper-V"
  means Microsoft to it (the manufacturer alone does not: seen in systemd 252);
- the OS disk on virtio: with Hyper-V's DMI strings the kernel's ata_piix ignores IDE disks;
- exactly one CD-ROM, the provisioning media (waagent mounts the first CD it finds);
- the WireServer's address as the gateway of QEMU's user network, so the agents reach
  168.63.129.16 (and, routed through it, 169.254.169.254) on the namespace's loopback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

WIRESERVER_IP = "168.63.129.16"
IMDS_IP = "169.254.169.254"
# QEMU's user network: the WireServer is its host address (the gateway); the guest leases
# the first address of the DHCP range, .15 as QEMU numbers it by default.
GUEST_NET = "168.63.129.0/24"
GUEST_IP = "168.63.129.15"
GUEST_DNS = "168.63.129.3"
# Hyper-V's MAC prefix (00:15:5d) as Azure's NICs carry it.
GUEST_MAC = "00:15:5d:a0:00:01"
AZURE_CHASSIS_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
PRODUCT_VERSION = "Hyper-V UEFI Release v4.1"  # what systemd's DMI table knows as Microsoft
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

Firmware = Literal["bios", "uefi"]


@dataclass(frozen=True)
class SimulatedVm:
    """What one simulated Azure VM is made of; every path is inside the work directory
    except the firmware code, which QEMU reads only."""

    disk: Path  # qcow2 overlay on the image under test: the image itself is never written
    media: Path  # the provisioning CD (ovf-env.xml)
    console: Path  # the serial console, written by QEMU
    ssh_port: int  # on the namespace's loopback, forwarded to the guest's port 22
    accelerator: Literal["kvm", "tcg"]
    firmware: Firmware = "bios"
    vars_file: Path | None = None  # a copy of the empty OVMF variable store (Gen2)
    memory_mib: int = 1024
    cpus: int = 2
    vm_uuid: str = "00000000-0000-0000-0000-000000000000"


def smbios_args(vm_uuid: str) -> list[str]:
    """SMBIOS types 1 and 3 as a Hyper-V VM on Azure reports them."""
    return [
        "-smbios",
        "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine,"
        f"version={PRODUCT_VERSION},uuid={vm_uuid}",
        "-smbios",
        "type=3,manufacturer=Microsoft Corporation,"
        f"asset={AZURE_CHASSIS_ASSET_TAG}",
    ]


def netdev_arg(ssh_port: int) -> str:
    """QEMU user networking with the WireServer as host and gateway, and the guest's SSH
    on the namespace's loopback only."""
    return (
        f"user,id=n0,net={GUEST_NET},host={WIRESERVER_IP},dns={GUEST_DNS},"
        f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
    )


def qemu_argv(vm: SimulatedVm, qemu: str = "qemu-system-x86_64") -> list[str]:
    """The full command line of the simulated VM."""
    cpu = "host,-hypervisor" if vm.accelerator == "kvm" else "max,-hypervisor"
    argv = [
        qemu,
        "-nodefaults", "-no-user-config",  # no default CD-ROM, NIC or display
        "-name", "azbuild-simulate",
        "-machine", "q35" if vm.firmware == "uefi" else "pc",
        "-accel", vm.accelerator,
        "-cpu", cpu,
        "-smp", str(vm.cpus),
        "-m", str(vm.memory_mib),
        "-uuid", vm.vm_uuid,
        *smbios_args(vm.vm_uuid),
        "-display", "none",
        "-serial", f"file:{vm.console}",
        "-drive", f"file={vm.disk},if=none,id=osdisk,format=qcow2,cache=unsafe",
        "-device", "virtio-blk-pci,drive=osdisk,bootindex=0",
        "-device", "virtio-scsi-pci,id=scsi0",
        "-drive", f"file={vm.media},if=none,id=media,format=raw,media=cdrom,readonly=on",
        "-device", "scsi-cd,bus=scsi0.0,drive=media",
        "-netdev", netdev_arg(vm.ssh_port),
        "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}",
        "-device", "virtio-rng-pci",
    ]
    if vm.firmware == "uefi":
        if vm.vars_file is None:
            raise ValueError("a UEFI VM needs its own copy of the variable store")
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vm.vars_file}",
        ]
    return argv


__all__ = [
    "AZURE_CHASSIS_ASSET_TAG", "GUEST_IP", "GUEST_MAC", "IMDS_IP", "OVMF_CODE", "OVMF_VARS",
    "WIRESERVER_IP", "SimulatedVm", "qemu_argv",
]
