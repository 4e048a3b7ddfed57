"""The rules about the disk: R03 partitions, R04 swap, R13 clean filesystems, R14 the
UEFI fallback loader."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from builder.offline_check.adapter import Guest, is_reg
from builder.offline_check.disklabel import (
    ESP_GPT_TYPE,
    ESP_MBR_TYPES,
    LVM_GPT_TYPE,
    LVM_MBR_TYPES,
    SWAP_GPT_TYPE,
    SWAP_MBR_TYPES,
    superblock_state,
)
from builder.offline_check.facts import Facts
from builder.offline_check.judge import judge_fallback_loader
from builder.offline_check.parsers import fstab_swaps
from builder.report.check_report import CheckResult
from builder.requirements import (
    FALLBACK_LOADER,
    R14_BIOS_SKIP,
    SHIM_MARK,
)

log = logging.getLogger(__name__)


def check_partitions(facts: Facts) -> tuple[CheckResult, list[CheckResult]]:
    extras: list[CheckResult] = []
    problems: list[str] = []
    facts_txt: list[str] = []
    for disk in facts.disks:
        if disk.table == "none":
            vfs = facts.filesystems.get(disk.device, "unknown")
            if vfs != "unknown":
                problems.append(f"no partition table: {vfs} directly on {disk.device}")
            continue
        facts_txt.append(f"{disk.device}: {disk.table} partition table")
        for p in disk.partitions:
            if p.type in LVM_MBR_TYPES or p.type == LVM_GPT_TYPE:
                problems.append(f"{disk.device}{p.number} has the LVM partition type ({p.type})")
        if disk.table == "msdos" and not any(disk.boot_code):
            extras.append(CheckResult(
                "W-MBR", "warn",
                f"{disk.device}: the MBR's 440 boot-code bytes are all zero: no boot loader "
                "is installed there, a Gen1 VM cannot boot this disk",
                "boot code in the MBR",
            ))
    if facts.pvs:
        problems.append(f"LVM physical volume(s) on the OS disk: {', '.join(facts.pvs)} "
                        f"(VG {', '.join(facts.vgs) or 'none'})")
    if facts.md:
        problems.append(f"software RAID on the OS disk: {', '.join(facts.md)}")
    root = facts.root_device
    if root.startswith("/dev/mapper/") or root in facts.lvs:
        problems.append(f"root filesystem on LVM ({root})")
    facts_txt.append(f"root on {root} ({facts.filesystems.get(root, '?')})")
    if problems:
        return CheckResult("R03", "fail", "; ".join(problems)), extras
    return CheckResult("R03", "pass", "; ".join([*facts_txt, "no LVM, no RAID"])), extras


def check_swap(facts: Facts) -> CheckResult:
    problems = [
        f"{d.device}{p.number} has the swap partition type ({p.type})"
        for d in facts.disks for p in d.partitions
        if p.type in SWAP_MBR_TYPES or p.type == SWAP_GPT_TYPE
    ]
    problems += [f"{dev} holds a swap signature"
                 for dev, t in facts.filesystems.items() if t == "swap"]
    if facts.fstab is None:
        problems.append("no /etc/fstab")
    else:
        problems += [f"swap in fstab: {line}" for line in fstab_swaps(facts.fstab)]
    if problems:
        return CheckResult("R04", "fail", "; ".join(problems))
    return CheckResult("R04", "pass", "no swap partition, no swap signature, no swap in /etc/fstab")


def check_clean(g: Any, filesystems: Mapping[str, str]) -> CheckResult:
    problems: list[str] = []
    facts: list[str] = []
    for dev, vfs in sorted(filesystems.items()):
        if vfs in ("ext2", "ext3", "ext4"):
            try:
                sb = bytes(g.pread_device(dev, 1024, 1024))
            except RuntimeError as exc:
                problems.append(f"{dev}: cannot read the superblock: {exc}")
                continue
            clean, text = superblock_state(sb)
            (facts if clean else problems).append(f"{dev} {vfs}: {text}")
        elif vfs == "xfs":
            try:
                rc = int(g.xfs_repair(dev, nomodify=True))
            except RuntimeError as exc:
                msg = str(exc)
                if "log" in msg.lower():
                    problems.append(f"{dev} xfs: log needs to be replayed (xfs_repair -n)")
                else:
                    problems.append(f"{dev} xfs: xfs_repair -n failed: {msg.splitlines()[0]}")
                continue
            if rc:
                problems.append(f"{dev} xfs: xfs_repair -n reports problems (exit {rc})")
            else:
                facts.append(f"{dev} xfs: log clean (xfs_repair -n)")
        elif vfs == "btrfs":
            facts.append(f"{dev} btrfs: copy-on-write, nothing to replay")
    if problems:
        return CheckResult("R13", "fail", "; ".join(problems))
    if not facts:
        return CheckResult("R13", "skip", "no ext2/3/4, xfs or btrfs filesystem to judge")
    return CheckResult("R13", "pass", "; ".join(facts))


def _esp_mountpoint(g: Any, guest: Guest, facts: Facts, device: str) -> str | None:
    """Where the ESP is mounted: by the image's fstab, or read-only here on an empty spot."""
    for mountpoint, dev in facts.mounted.items():
        if dev == device:
            return mountpoint
    for mountpoint in ("/boot/efi", "/efi", "/mnt"):
        if guest.exists(mountpoint):
            try:
                g.mount_ro(device, mountpoint)
            except RuntimeError as exc:
                log.debug("cannot mount %s on %s: %s", device, mountpoint, exc)
                return None
            guest.forget()
            facts.mounted[mountpoint] = device
            return mountpoint
    return None


def check_fallback_loader(g: Any, guest: Guest, facts: Facts) -> CheckResult:
    esps = [f"{d.device}{p.number}" for d in facts.disks for p in d.partitions
            if p.type == ESP_GPT_TYPE or p.type in ESP_MBR_TYPES]
    if not esps:
        return CheckResult("R14", "skip", R14_BIOS_SKIP)
    device = esps[0]
    mountpoint = _esp_mountpoint(g, guest, facts, device)
    if mountpoint is None:
        return CheckResult("R14", "fail", f"EFI system partition {device} cannot be mounted")
    esp = f"ESP {device} (at {mountpoint})"
    efi = next((n for n in guest.ls(mountpoint) if n.lower() == "efi"), None)
    files: dict[str, int] = {}
    if efi:
        for sub in guest.ls(f"{mountpoint}/{efi}"):
            directory = f"{mountpoint}/{efi}/{sub}"
            for name, (mode, size) in guest.stat(directory, guest.ls(directory)).items():
                if is_reg(mode):
                    files[f"EFI/{sub}/{name}"] = size
    lower = {p.lower(): p for p in files}
    loader = lower.get(FALLBACK_LOADER.lower())
    is_shim = False
    prefix_in = None
    if loader:
        candidates = [loader] + [p for p in sorted(files) if p.lower().startswith("efi/boot/grub")
                                 and p.lower().endswith(".efi")]
        for n, path in enumerate(candidates):
            data = guest.download(f"{mountpoint}/{efi}/{path[4:]}") or b""
            if n == 0:
                is_shim = SHIM_MARK.encode() in data
            if b"/boot/grub" in data and prefix_in is None:
                prefix_in = path
    status, evidence = judge_fallback_loader(esp, files, is_shim, prefix_in)
    return CheckResult("R14", status, evidence)
