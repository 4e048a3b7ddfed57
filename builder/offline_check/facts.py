"""What the offline check learns from the guest before it judges anything: the disks'
partition tables, filesystems, LVM and RAID, the mounted OS, its packages, systemd unit
files and service links, and boot loader kernel lines."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import UsageError
from builder.offline_check.adapter import Guest
from builder.offline_check.disklabel import (
    SECTOR,
    Partition,
    parse_ebr,
    parse_gpt_entries,
    parse_gpt_header,
    parse_mbr,
)
from builder.offline_check.parsers import (
    KernelLine,
    bls_kernel_line,
    grub_kernel_lines,
    parse_dpkg_status,
    parse_fstab,
    parse_grubenv,
)
from builder.offline_check.units import UNIT_DIRS

log = logging.getLogger(__name__)
SYSV_DIRS = tuple(f"/etc/rc{n}.d" for n in (2, 3, 4, 5)) + tuple(
    f"/etc/rc.d/rc{n}.d" for n in (2, 3, 4, 5)
)
GRUB_CONFIGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/efi/EFI/*/grub.cfg",
                "/boot/grub/grub.conf", "/boot/grub/menu.lst", "/boot/grub2/grub.conf")


@dataclass
class Disk:
    device: str
    table: str  # "msdos", "gpt" or "none"
    partitions: list[Partition]
    boot_code: bytes


@dataclass
class Facts:
    """What was learnt from the guest before the per-requirement judgements."""

    disks: list[Disk] = field(default_factory=list)
    filesystems: dict[str, str] = field(default_factory=dict)  # device -> vfs type
    pvs: list[str] = field(default_factory=list)
    vgs: list[str] = field(default_factory=list)
    lvs: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    root_device: str = ""
    mounted: dict[str, str] = field(default_factory=dict)  # mountpoint -> device
    unmounted: list[str] = field(default_factory=list)
    fstab: str | None = None
    packages: dict[str, str] = field(default_factory=dict)
    package_source: str = ""
    links: dict[str, str] = field(default_factory=dict)
    unit_files: dict[str, str] = field(default_factory=dict)  # systemd units and drop-ins
    rc_entries: dict[str, list[str]] = field(default_factory=dict)
    kernel_lines: list[KernelLine] = field(default_factory=list)
    kernel_args_any: set[str] = field(default_factory=set)


def _read_partitions(g: Any, device: str) -> Disk:
    sector0 = bytes(g.pread_device(device, SECTOR, 0))
    table, parts = parse_mbr(sector0)
    if table == "gpt":
        header = parse_gpt_header(bytes(g.pread_device(device, SECTOR, SECTOR)))
        if header is None:
            table = "none"
        else:
            lba, count, size = header
            data = bytes(g.pread_device(device, count * size, lba * SECTOR))
            parts = parse_gpt_entries(data, count, size)
    elif table == "msdos":
        for ext in [p for p in parts if p.extended]:
            ebr_lba: int | None = ext.start // SECTOR
            number = 5
            while ebr_lba is not None and number < 5 + 128:
                ebr = bytes(g.pread_device(device, SECTOR, ebr_lba * SECTOR))
                logical, nxt = parse_ebr(ebr, ebr_lba, ext.start // SECTOR, number)
                if logical:
                    parts.append(logical)
                    number += 1
                ebr_lba = nxt
    return Disk(device, table, parts, sector0[:440])


def scan_block_devices(g: Any, facts: Facts) -> None:
    """Partition tables (read raw), LVM, RAID, and the filesystem type of every candidate
    device: a handful of appliance calls where list_filesystems/part_* take dozens."""
    candidates: list[str] = []
    for device in g.list_devices():
        disk = _read_partitions(g, device)
        facts.disks.append(disk)
        if disk.table == "none":
            candidates.append(device)
        candidates += [f"{device}{p.number}" for p in disk.partitions if not p.extended]
    facts.pvs = list(g.pvs())
    if facts.pvs:
        facts.vgs = list(g.vgs())
        facts.lvs = list(g.lvs())
    facts.md = list(g.list_md_devices())
    for dev in [*candidates, *facts.lvs, *facts.md]:
        try:
            facts.filesystems[dev] = str(g.vfs_type(dev))
        except RuntimeError:
            facts.filesystems[dev] = "unknown"


def _is_os_root(guest: Guest) -> bool:
    etc = guest.ls("/etc")
    return "fstab" in etc and any(n == "os-release" or n.endswith("-release") for n in etc)


def _resolve_fstab_spec(g: Any, spec: str) -> str | None:
    try:
        if spec.startswith("UUID="):
            return str(g.findfs_uuid(spec[5:].strip('"')))
        if spec.startswith("LABEL="):
            return str(g.findfs_label(spec[6:].strip('"')))
        if spec.startswith("/dev/disk/by-uuid/"):
            return str(g.findfs_uuid(spec.rsplit("/", 1)[1]))
        if spec.startswith("/dev/disk/by-label/"):
            return str(g.findfs_label(spec.rsplit("/", 1)[1]))
    except RuntimeError:
        return None
    return spec if spec.startswith("/dev/") else None


def mount_os(g: Any, guest: Guest, facts: Facts, image: Path) -> None:
    """Find the Linux root among the filesystems, mount it read-only at /, then what its
    fstab mounts (ext*, xfs, btrfs with subvol=, vfat). No libguestfs inspection: it takes
    tens of seconds under TCG and mounts the filesystems itself."""
    for dev, vfs in facts.filesystems.items():
        if vfs not in ("ext2", "ext3", "ext4", "xfs", "btrfs"):
            continue
        try:
            g.mount_ro(dev, "/")
        except RuntimeError as exc:
            log.debug("cannot mount %s: %s", dev, exc)
            continue
        guest.forget()
        if _is_os_root(guest):
            facts.root_device = dev
            break
        g.umount_all()
    if not facts.root_device:
        raise UsageError(
            f"no Linux operating system found in {image}",
            hint="is this the OS disk of a Linux image (and the right --format)?",
        )
    facts.mounted["/"] = facts.root_device
    facts.fstab = guest.read_text("/etc/fstab")
    entries = parse_fstab(facts.fstab or "")
    for e in sorted(entries, key=lambda e: e.mountpoint.count("/")):
        if e.mountpoint == "/" or not e.mountpoint.startswith("/"):
            continue
        if e.vfstype not in ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"):
            continue
        found = _resolve_fstab_spec(g, e.spec)
        if found is None:
            facts.unmounted.append(f"{e.mountpoint} ({e.spec}: device not found)")
            continue
        dev = found
        opts = ["ro", *(o for o in e.options.split(",") if o.startswith("subvol"))]
        try:
            g.mount_options(",".join(opts), dev, e.mountpoint)
            facts.mounted[e.mountpoint] = dev
        except RuntimeError as exc:
            facts.unmounted.append(f"{e.mountpoint} ({dev}: {exc})")
    guest.forget()
    if facts.unmounted:
        log.warning("could not mount %s", "; ".join(facts.unmounted))


def gather(g: Any, guest: Guest, facts: Facts) -> None:
    status = guest.read_text("/var/lib/dpkg/status")
    if status is not None:
        facts.packages = parse_dpkg_status(status)
        facts.package_source = "dpkg"
    else:
        _packages_by_inspection(g, guest, facts)
    seen: set[str] = set()
    for directory in UNIT_DIRS:
        try:
            real = str(g.realpath(directory))
        except RuntimeError:
            continue
        if real in seen:
            continue
        seen.add(real)
        facts.unit_files.update(guest.read_tree(directory))
        facts.links.update(guest.links_in(directory))
        for sub in guest.ls(directory):
            if sub.endswith((".wants", ".requires")):
                facts.links.update(guest.links_in(f"{directory}/{sub}"))
    for directory in SYSV_DIRS:
        names = guest.ls(directory)
        if names:
            facts.rc_entries[directory] = names
    facts.kernel_lines = _kernel_lines(guest)
    for kl in facts.kernel_lines:
        facts.kernel_args_any.update(kl.args)


def _packages_by_inspection(g: Any, guest: Guest, facts: Facts) -> None:
    """rpm and other package databases: libguestfs inspection reads them. It unmounts
    everything when it finishes, so the OS is mounted again afterwards."""
    try:
        g.umount_all()
        found = list(g.inspect_os())
        roots = [r for r in found if r == facts.root_device] or found
        for mp, dev in sorted(facts.mounted.items(), key=lambda m: m[0].count("/")):
            g.mount_ro(dev, mp)
        if roots:
            apps = g.inspect_list_applications2(roots[0])
            facts.packages = {a["app2_name"]: a["app2_version"] for a in apps}
            facts.package_source = str(g.inspect_get_package_format(roots[0]))
    except RuntimeError as exc:
        log.warning("cannot list the guest's packages: %s", exc)
    guest.forget()


def _kernel_lines(guest: Guest) -> list[KernelLine]:
    grubenv: dict[str, str] = {}
    for env_path in ("/boot/grub2/grubenv", "/boot/grub/grubenv"):
        text = guest.read_text(env_path)
        if text:
            grubenv.update(parse_grubenv(text))
    lines: list[KernelLine] = []
    uses_bls = False
    for pattern in GRUB_CONFIGS:
        for path in guest.glob(pattern) if "*" in pattern else [pattern]:
            text = guest.read_text(path)
            if text is None:
                continue
            uses_bls = uses_bls or "blscfg" in text
            lines += grub_kernel_lines(text, path, grubenv)
    if uses_bls or not lines:
        for name in guest.ls("/boot/loader/entries"):
            if not name.endswith(".conf"):
                continue
            path = f"/boot/loader/entries/{name}"
            text = guest.read_text(path)
            kl = bls_kernel_line(text, path, grubenv) if text else None
            if kl:
                lines.append(kl)
    return lines
