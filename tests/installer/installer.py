"""azbuild's test installer: a small stand-in for the Debian installer (d-i).

It runs inside the installer ISO's own root (chrooted by the initrd's /init, see
init.sh) and installs that root onto the target disk, driven by the same
`preseed.cfg` azbuild renders for a real Debian netinst. It honours:

    partman-auto/disk, partman-auto/method (regular), partman-auto/expert_recipe
    (primary ext4 partitions with sizes; msdos label), partman-auto/choose_recipe,
    passwd/root-password-crypted, netcfg hostname/domain and the NIC's name in
    /etc/network/interfaces (eth0 with net.ifnames=0 on the installer's command line,
    otherwise the predictable name udev would give, such as ens16), time/zone, locale and
    keyboard, mirror/http/* (the installed sources.list), pkgsel/include and the
    ssh-server task (checked against what the root on the ISO holds),
    debian-installer/add-kernel-opts, grub-installer/bootdev,
    preseed/late_command (with `in-target`), debian-installer/exit/poweroff.

The confirmation questions a real preseed carries (partman/confirm and friends)
are accepted because they only answer prompts. Any other instruction, or a value
this installer cannot honour, prints a d-i style failure line ("[!!] ...") and
the installer halts, waiting for a human, as d-i does.

Exit status: 0 after a complete install (the initrd then powers off or reboots,
as /tmp/exit-action says); 2 after a failure it has reported (the initrd halts).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TARGET = Path("/mnt")
# The installer's mount points (pseudo file systems, its /tmp, the target): made empty in
# the target, with these modes, rather than copied.
PSEUDO_MOUNTS = (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("tmp", 0o1777),
                 ("mnt", 0o755))
MB = 1000 * 1000  # partman sizes are in megabytes
ALIGN = 1024 * 1024  # partitions start on MiB boundaries, as partman aligns them
SECTOR = 512
EXIT_ACTION = Path("/tmp/exit-action")


class InstallFailed(Exception):
    """A d-i style failure: `step` is the installer step's title."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


# --- the preseed file ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    line: int
    owner: str
    question: str
    type: str
    value: str


def parse_preseed(text: str) -> dict[str, Answer]:
    """The preseed's answers by question; every line must read `owner question type value`."""
    answers: dict[str, Answer] = {}
    logical: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        logical.append((start, pending + raw))
        pending = ""
    if pending:
        logical.append((start, pending))
    for number, line in logical:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split(None, 3)
        if len(parts) < 3:
            raise InstallFailed(
                "Load preseed file",
                f"line {number} is not 'owner question type value': {stripped!r}",
            )
        owner, question, qtype = parts[:3]
        value = parts[3] if len(parts) == 4 else ""
        answers[question] = Answer(number, owner, question, qtype, value)
    return answers


# What this installer accepts besides the questions it acts on: answers to prompts
# it never asks, each with the values that keep it meaningful (None: any value).
INERT: dict[str, set[str] | None] = {
    "debian-installer/language": None,
    "localechooser/supported-locales": None,
    "netcfg/choose_interface": {"auto"},
    "hw-detect/load_firmware": {"false"},
    "mirror/country": {"manual"},
    "mirror/http/proxy": {""},
    "passwd/make-user": {"false"},
    "passwd/root-login": {"true"},
    "clock-setup/utc": {"true"},
    "clock-setup/ntp": {"false"},
    "partman-lvm/device_remove_lvm": {"true"},
    "partman-md/device_remove_md": {"true"},
    "partman-lvm/confirm": {"true"},
    "partman-lvm/confirm_nooverwrite": {"true"},
    "partman-basicfilesystems/no_swap": {"false"},
    "partman-partitioning/confirm_write_new_label": {"true"},
    "partman/choose_partition": {"finish"},
    "partman/confirm": {"true"},
    "partman/confirm_nooverwrite": {"true"},
    "apt-setup/cdrom/set-first": {"false"},
    "apt-setup/use_mirror": {"true"},
    "apt-setup/non-free-firmware": {"false"},
    "pkgsel/upgrade": {"none"},
    "popularity-contest/participate": {"false"},
    "grub-installer/only_debian": {"true"},
    "grub-installer/with_other_os": {"true"},
    "finish-install/reboot_in_progress": None,
}
# The questions acted on (see install()), with the values they accept (None: any).
HONOURED: dict[str, set[str] | None] = {
    "debian-installer/locale": None,
    "keyboard-configuration/xkb-keymap": None,
    "netcfg/get_hostname": None,
    "netcfg/get_domain": None,
    "netcfg/hostname": None,
    "mirror/http/hostname": None,
    "mirror/http/directory": None,
    "passwd/root-password-crypted": None,
    "time/zone": None,
    "partman-auto/disk": None,
    "partman-auto/method": {"regular"},
    "partman-partitioning/default_label": {"msdos"},
    "partman-partitioning/choose_label": {"msdos"},
    "partman-auto/expert_recipe": None,
    "partman-auto/choose_recipe": None,
    "tasksel/first": None,
    "pkgsel/include": None,
    "debian-installer/add-kernel-opts": None,
    "grub-installer/bootdev": None,
    "debian-installer/exit/poweroff": {"true", "false"},
    "preseed/late_command": None,
}


def check_answers(answers: dict[str, Answer]) -> None:
    for answer in answers.values():
        known = {**INERT, **HONOURED}
        if answer.question not in known:
            raise InstallFailed(
                "Load preseed file",
                f"line {answer.line}: this installer does not support "
                f"'{answer.owner} {answer.question}'",
            )
        allowed = known[answer.question]
        if allowed is not None and answer.value not in allowed:
            raise InstallFailed(
                "Load preseed file",
                f"line {answer.line}: {answer.question} = {answer.value!r} is not supported "
                f"(supported: {', '.join(sorted(allowed)) or 'empty'})",
            )


def value(answers: dict[str, Answer], question: str, default: str = "") -> str:
    answer = answers.get(question)
    return answer.value if answer is not None else default


# --- partman's expert recipe -----------------------------------------------------------


@dataclass
class Partition:
    minimum: int  # bytes
    priority: int
    maximum: int | None  # bytes; None: no limit
    filesystem: str
    mountpoint: str | None
    bootable: bool
    specs: dict[str, str] = field(default_factory=dict)
    size: int = 0  # bytes, after allocation


_SPEC_RE = re.compile(r"(\$?[\w-]+)\{\s*([^}]*?)\s*\}")
_ALLOWED_SPECS = {"$primary", "$bootable", "method", "format", "use_filesystem",
                  "filesystem", "mountpoint", "label"}


def parse_recipe(text: str) -> tuple[str, list[Partition]]:
    """(recipe name, partitions) of an expert recipe limited to primary ext4 partitions."""
    if "::" not in text:
        raise InstallFailed("Partition disks", "the expert recipe has no 'name ::' header")
    name, body = (part.strip() for part in text.split("::", 1))
    chunks = [c.strip() for c in re.split(r"(?:^|\s)\.(?:\s|$)", body) if c.strip()]
    if not chunks:
        raise InstallFailed("Partition disks", "the expert recipe defines no partition")
    if len(chunks) > 4:
        raise InstallFailed("Partition disks", "more than four primary partitions")
    partitions = []
    for chunk in chunks:
        head = chunk.split()
        if len(head) < 4:
            raise InstallFailed("Partition disks", f"malformed recipe entry: {chunk!r}")
        try:
            minimum, priority, maximum = (int(n) for n in head[:3])
        except ValueError:
            raise InstallFailed("Partition disks", f"sizes must be numbers: {chunk!r}") from None
        rest = " ".join(head[4:])
        specs = dict(_SPEC_RE.findall(rest))
        leftover = _SPEC_RE.sub("", rest).strip()
        if leftover:
            raise InstallFailed("Partition disks", f"unsupported recipe words: {leftover!r}")
        unsupported = sorted(set(specs) - _ALLOWED_SPECS)
        if unsupported:
            raise InstallFailed(
                "Partition disks",
                "this installer supports primary ext4 partitions only; unsupported: "
                + ", ".join(unsupported),
            )
        fs = head[3]
        if fs != "ext4" or specs.get("filesystem", "ext4") != "ext4":
            raise InstallFailed("Partition disks", f"unsupported file system {fs!r} (only ext4)")
        if "$primary" not in specs:
            raise InstallFailed("Partition disks", "only primary partitions ($primary{ })")
        if specs.get("method") != "format":
            raise InstallFailed("Partition disks", "only method{ format } partitions")
        partitions.append(Partition(
            minimum=minimum * MB,
            priority=priority,
            maximum=None if maximum < 0 else maximum * MB,
            filesystem="ext4",
            mountpoint=specs.get("mountpoint") or None,
            bootable="$bootable" in specs,
            specs=specs,
        ))
    if not any(p.mountpoint == "/" for p in partitions):
        raise InstallFailed("Partition disks", "No root file system is defined.")
    return name, partitions


def allocate(partitions: list[Partition], space: int) -> None:
    """Size the partitions the way partman-auto does: each gets its minimum, then the
    rest of `space` is shared out by weight (priority - minimum) up to each maximum."""
    total_min = sum(p.minimum for p in partitions)
    if total_min > space:
        raise InstallFailed(
            "Partition disks",
            f"the recipe needs {total_min // MB} MB but the disk has {space // MB} MB",
        )
    for p in partitions:
        p.size = p.minimum
    growing = [p for p in partitions if p.maximum is None or p.maximum > p.minimum]
    spare = space - total_min
    while spare > 0 and growing:
        weights = {id(p): max(p.priority * MB - p.minimum, 1) for p in growing}
        total = sum(weights.values())
        handed = 0
        for p in list(growing):
            share = spare * weights[id(p)] // total
            if p.maximum is not None and p.size + share >= p.maximum:
                share = p.maximum - p.size
                growing.remove(p)
            p.size += share
            handed += share
        spare -= handed
        if handed == 0:
            break
    for p in partitions:
        p.size -= p.size % ALIGN


# --- the network interface's name ----------------------------------------------------

_PCI_ADDRESS = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
_MAX_ONBOARD_INDEX = 16383  # udev ignores larger firmware indexes


def _pci_device(sys_root: Path, kernel_name: str) -> Path | None:
    """The PCI device behind a network interface (a virtio NIC's parent), or None."""
    link = sys_root / "class/net" / kernel_name / "device"
    if not link.exists():
        return None
    device = link.resolve()
    while device != device.parent:
        if _PCI_ADDRESS.match(device.name):
            return device
        device = device.parent
    return None


def _firmware_index(device: Path) -> int | None:
    for attribute in ("acpi_index", "index"):
        path = device / attribute
        if path.is_file():
            text = path.read_text().strip()
            if text.isdigit() and 0 < int(text) <= _MAX_ONBOARD_INDEX:
                return int(text)
    return None


def predictable_name(sys_root: Path, kernel_name: str) -> str:
    """The name systemd-udevd's default policy (onboard, slot, path) gives a PCI NIC:
    eno<firmware index>, else ens<hotplug slot> when a slot in /sys/bus/pci/slots holds
    the device, else enp<bus>s<slot>; f<function> for a function other than 0. The
    installer's initrd has no udev, so the kernel's eth0 is renamed here, as d-i's
    netcfg would see it on a real installer, which runs udev."""
    device = _pci_device(sys_root, kernel_name)
    if device is None:
        return kernel_name
    match = _PCI_ADDRESS.match(device.name)
    assert match is not None
    domain, bus, slot, function = match.groups()
    suffix = f"f{int(function)}" if function != "0" else ""
    onboard = _firmware_index(device)
    if onboard is not None:
        return f"eno{onboard}"
    slots = sys_root / "bus/pci/slots"
    if slots.is_dir():
        for slot_dir in sorted(slots.iterdir()):
            address = slot_dir / "address"
            if address.is_file() and address.read_text().strip() == f"{domain}:{bus}:{slot}":
                return f"ens{slot_dir.name}{suffix}"
    domain_part = f"P{int(domain, 16)}" if domain != "0000" else ""
    return f"en{domain_part}p{int(bus, 16)}s{int(slot, 16)}{suffix}"


def interface_name(cmdline: str, sys_root: Path, kernel_name: str) -> str:
    """The name netcfg writes into the target's /etc/network/interfaces: the kernel's
    with net.ifnames=0 on the installer's command line, the predictable name otherwise."""
    if "net.ifnames=0" in cmdline.split():
        return kernel_name
    return predictable_name(sys_root, kernel_name)


def interfaces_file(nic: str) -> str:
    """/etc/network/interfaces as netcfg writes it for a DHCP-configured NIC."""
    return ("source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n"
            f"allow-hotplug {nic}\niface {nic} inet dhcp\n")


# --- running things --------------------------------------------------------------------


def say(text: str) -> None:
    print(f"azbuild-test-installer: {text}", flush=True)


def sh(*argv: str, target: bool = False) -> str:
    cmd = ["chroot", str(TARGET), *argv] if target else list(argv)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InstallFailed(
            "Install the system",
            f"{shlex.join(cmd)} failed ({result.returncode}): "
            + (result.stderr.strip() or result.stdout.strip()),
        )
    return result.stdout


def wait_for_block(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise InstallFailed("Partition disks", f"{path} did not appear")
        time.sleep(0.2)


def partition_path(disk: str, number: int) -> str:
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


# --- the install -----------------------------------------------------------------------


def partition_disk(answers: dict[str, Answer]) -> tuple[str, list[Partition]]:
    disk = value(answers, "partman-auto/disk", "/dev/vda")
    if not Path(disk).exists():
        raise InstallFailed("Partition disks", f"the disk {disk} (partman-auto/disk) is missing")
    recipe_text = value(answers, "partman-auto/expert_recipe")
    if not recipe_text:
        raise InstallFailed("Partition disks", "no partman-auto/expert_recipe: nothing to do")
    name, partitions = parse_recipe(recipe_text)
    chosen = value(answers, "partman-auto/choose_recipe", name)
    if chosen != name:
        raise InstallFailed("Partition disks", f"recipe {chosen!r} is not defined")
    disk_bytes = int(Path(f"/sys/block/{Path(disk).name}/size").read_text()) * SECTOR
    allocate(partitions, disk_bytes - ALIGN)
    script = ["label: dos"]
    start = ALIGN
    for p in partitions:
        line = f"start={start // SECTOR}, size={p.size // SECTOR}, type=83"
        script.append(line + (", bootable" if p.bootable else ""))
        start += p.size
    say(f"partitioning {disk} with recipe {name!r}: "
        + ", ".join(f"{p.mountpoint or '-'} {p.size // MB} MB" for p in partitions))
    subprocess.run(["sfdisk", "--quiet", "--wipe", "always", disk],
                   input="\n".join(script) + "\n", text=True, check=True,
                   capture_output=True)
    for number in range(1, len(partitions) + 1):
        device = partition_path(disk, number)
        wait_for_block(device)
        sh("mke2fs", "-q", "-F", "-t", "ext4", device)
    return disk, partitions


def mount_target(disk: str, partitions: list[Partition]) -> tuple[list[str], list[Path]]:
    """Mount the new file systems under TARGET, root first, then by depth; returns the
    fstab lines and the mount points in the order they were mounted."""
    numbered = sorted(
        ((n, p) for n, p in enumerate(partitions, start=1) if p.mountpoint is not None),
        key=lambda item: (item[1].mountpoint != "/", str(item[1].mountpoint).count("/")),
    )
    fstab = []
    mounted = []
    for number, p in numbered:
        assert p.mountpoint is not None
        device = partition_path(disk, number)
        where = TARGET / p.mountpoint.lstrip("/")
        where.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "ext4", device, str(where))
        mounted.append(where)
        uuid = sh("blkid", "-s", "UUID", "-o", "value", device).strip()
        # There is no udev here: make the link grub-probe looks for, or update-grub
        # would name the root by its device (root=/dev/vda1) instead of its UUID.
        by_uuid = Path("/dev/disk/by-uuid")
        by_uuid.mkdir(parents=True, exist_ok=True)
        link = by_uuid / uuid
        link.unlink(missing_ok=True)
        link.symlink_to(device)
        options = "errors=remount-ro" if p.mountpoint == "/" else "defaults"
        passno = 1 if p.mountpoint == "/" else 2
        fstab.append(f"UUID={uuid} {p.mountpoint} ext4 {options} 0 {passno}")
    return fstab, mounted


def unmount(mounted: list[Path]) -> None:
    """Unmount in the reverse of the mounting order (best effort: the install is over)."""
    for where in reversed(mounted):
        subprocess.run(["umount", str(where)], check=False)


def copy_system() -> None:
    say("installing the base system (copying the root file system from the ISO)")
    # The mount points stay out, made below: /mnt is the target's own root, which the
    # unpacking tar writes into while this one reads it; GNU tar then fails with "./mnt:
    # file changed as we read it" whenever the two meet there (a race; CI lost a build
    # to it).
    pack = subprocess.Popen(
        ["tar", "--one-file-system", "--numeric-owner",
         *(f"--exclude=./{name}" for name, _ in PSEUDO_MOUNTS), "-C", "/", "-cf", "-", "."],
        stdout=subprocess.PIPE,
    )
    unpack = subprocess.run(["tar", "--numeric-owner", "-C", str(TARGET), "-xpf", "-"],
                            stdin=pack.stdout, capture_output=True, text=True, check=False)
    assert pack.stdout is not None
    pack.stdout.close()
    if pack.wait() != 0 or unpack.returncode != 0:
        raise InstallFailed("Install the base system",
                            f"copying the root failed: {unpack.stderr.strip()}")
    for name, mode in PSEUDO_MOUNTS:
        path = TARGET / name
        path.mkdir(exist_ok=True)
        path.chmod(mode)


def bind_pseudo_filesystems() -> list[Path]:
    mounted = []
    for name in ("dev", "proc", "sys"):
        where = TARGET / name
        sh("mount", "--bind", f"/{name}", str(where))
        mounted.append(where)
    return mounted


def configure(answers: dict[str, Answer], fstab: list[str]) -> None:
    etc = TARGET / "etc"
    (etc / "fstab").write_text("# written by azbuild's test installer\n"
                               + "\n".join(fstab) + "\n")
    hostname = value(answers, "netcfg/hostname") or value(answers, "netcfg/get_hostname",
                                                            "debian")
    domain = value(answers, "netcfg/get_domain")
    (etc / "hostname").write_text(hostname + "\n")
    fqdn = f"{hostname}.{domain} {hostname}" if domain else hostname
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{fqdn}\n\n"
                               "::1\tlocalhost ip6-localhost ip6-loopback\n")
    # Like netcfg: DHCP on the interface the installer used, by the name it had there.
    nics = sorted(n for n in os.listdir("/sys/class/net") if n != "lo")
    nic = interface_name(Path("/proc/cmdline").read_text(), Path("/sys"),
                         nics[0] if nics else "eth0")
    say(f"network: allow-hotplug {nic} (DHCP)")
    (etc / "network" / "interfaces").write_text(interfaces_file(nic))
    host = value(answers, "mirror/http/hostname", "deb.debian.org")
    directory = value(answers, "mirror/http/directory", "/debian")
    (etc / "apt" / "sources.list").write_text(
        f"deb http://{host}{directory} bookworm main\n"
        f"deb http://{host}{directory} bookworm-updates main\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
    )
    locale = value(answers, "debian-installer/locale", "en_US.UTF-8")
    (etc / "default" / "locale").write_text(f"LANG={locale}\n")
    keymap = value(answers, "keyboard-configuration/xkb-keymap", "us")
    (etc / "default" / "keyboard").write_text(
        f'XKBMODEL="pc105"\nXKBLAYOUT="{keymap}"\nXKBVARIANT=""\nXKBOPTIONS=""\n'
    )
    zone = value(answers, "time/zone", "Etc/UTC")
    (etc / "timezone").write_text(zone + "\n")
    localtime = etc / "localtime"
    if (TARGET / "usr/share/zoneinfo" / zone).exists():
        localtime.unlink(missing_ok=True)
        localtime.symlink_to(f"/usr/share/zoneinfo/{zone}")
    crypted = value(answers, "passwd/root-password-crypted", "!")
    if crypted in ("!", "*", ""):
        sh("usermod", "-p", "*", "root", target=True)
        say("root password: locked")
    else:
        sh("usermod", "-p", crypted, "root", target=True)
        say("root password: set from passwd/root-password-crypted")


def check_software(answers: dict[str, Answer]) -> None:
    wanted = value(answers, "pkgsel/include").split()
    tasks = [t.strip() for t in value(answers, "tasksel/first").split(",") if t.strip()]
    for task in tasks:
        if task == "ssh-server":
            wanted.append("openssh-server")
        elif task != "standard":
            raise InstallFailed("Select and install software",
                                f"task {task!r} is not available on this installer ISO")
    missing = []
    for package in wanted:
        status = subprocess.run(
            ["chroot", str(TARGET), "dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True, text=True, check=False,
        ).stdout
        if status != "install ok installed":
            missing.append(package)
    if missing:
        raise InstallFailed(
            "Select and install software",
            "not on this installer ISO (it installs offline): " + " ".join(missing),
        )
    say("software: " + (" ".join(wanted) or "(nothing extra)") + " present")


def install_bootloader(answers: dict[str, Answer], disk: str) -> None:
    bootdev = value(answers, "grub-installer/bootdev", "default")
    device = disk if bootdev in ("default", "") else bootdev
    cmdline = Path("/proc/cmdline").read_text().split()
    # As d-i does: the installed system keeps the installer's serial console.
    consoles = [arg for arg in cmdline if arg.startswith("console=")]
    extra = value(answers, "debian-installer/add-kernel-opts").split()
    args = " ".join(dict.fromkeys(consoles + extra))
    grub = TARGET / "etc/default/grub"
    text = grub.read_text()
    text = re.sub(r"(?m)^GRUB_CMDLINE_LINUX=.*$", f'GRUB_CMDLINE_LINUX="{args}"', text)
    if any(c.startswith("console=ttyS") for c in consoles):
        text += ('GRUB_TERMINAL="console serial"\n'
                 'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n')
    grub.write_text(text)
    say(f"installing GRUB on {device} (kernel arguments: {args or 'none'})")
    sh("grub-install", "--target=i386-pc", device, target=True)
    sh("update-grub", target=True)


def late_command(answers: dict[str, Answer]) -> None:
    command = value(answers, "preseed/late_command")
    if not command:
        return
    bindir = Path("/tmp/bin")
    bindir.mkdir(exist_ok=True)
    in_target = bindir / "in-target"
    in_target.write_text(f'#!/bin/sh\nexec chroot {TARGET} "$@"\n')
    in_target.chmod(0o755)
    say("running preseed/late_command")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"}
    result = subprocess.run(["sh", "-c", command], env=env, check=False)
    if result.returncode != 0:
        raise InstallFailed("Finish the installation",
                            f"preseed/late_command failed with status {result.returncode}")


def install(preseed: Path) -> None:
    answers = parse_preseed(preseed.read_text())
    check_answers(answers)
    say(f"preseed {preseed}: {len(answers)} answers accepted")
    disk, partitions = partition_disk(answers)
    fstab, mounted = mount_target(disk, partitions)
    copy_system()
    binds = bind_pseudo_filesystems()
    try:
        configure(answers, fstab)
        check_software(answers)
        install_bootloader(answers, disk)
        late_command(answers)
    finally:
        unmount(binds)
    subprocess.run(["sync"], check=False)
    unmount(mounted)
    poweroff = value(answers, "debian-installer/exit/poweroff", "false") == "true"
    EXIT_ACTION.write_text("poweroff\n" if poweroff else "reboot\n")
    say("Installation complete; " + ("powering off" if poweroff else "rebooting"))


def main(argv: list[str]) -> int:
    try:
        install(Path(argv[1] if len(argv) > 1 else "/tmp/preseed.cfg"))
    except InstallFailed as failure:
        print(f"\n[!!] {failure.step}\n\n{failure.message}\n\nInstallation step failed.",
              flush=True)
        return 1
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"\n[!!] Install the system\n\n{exc}\n\nInstallation step failed.", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
