"""The requirements table: what AZURE-REQUIREMENTS.md asks of an image, as frozen data.

One place for every requirement fact that more than one part of azbuild needs: the
preparation scripts (builder/azure_prep.py and the templates of distros/prep/), the
in-guest check (distros/prep/azure-check.sh.j2) and the offline check
(builder/offline_check/). Each of them reads it from here; none writes it again.
Nothing here runs anything or imports the rest of the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Requirement:
    id: str  # R01..R15: what checks, logs and reports name
    title: str  # one line, as `azbuild check` prints it


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("R01", "fixed-format VHD"),
    Requirement("R02", "virtual size a whole number of MiB, within bounds"),
    Requirement("R03", "standard partitions, no LVM on the OS disk"),
    Requirement("R04", "no swap on the OS disk"),
    Requirement("R05", "Hyper-V drivers in the initrd"),
    Requirement("R06", "kernel version policy"),
    Requirement("R07", "kernel command line for Azure"),
    Requirement("R08", "Azure Linux agent installed and enabled"),
    Requirement("R09", "SSH server installed and enabled"),
    Requirement("R10", "provisioning mode and resource disk settings"),
    Requirement("R11", "sudoers without targetpw or ALL ALL"),
    Requirement("R12", "generalised (deprovisioned)"),
    Requirement("R13", "shut down cleanly"),
    Requirement("R14", "UEFI fallback boot loader EFI/BOOT/BOOTX64.EFI"),
    Requirement("R15", "SSH answers on the first boot"),
)
# ID -> title, in requirement order (reports sort by it).
TITLES: Mapping[str, str] = MappingProxyType({r.id: r.title for r in REQUIREMENTS})
# How messages name the whole range ("R01 to R15").
ID_RANGE = f"{REQUIREMENTS[0].id} to {REQUIREMENTS[-1].id}"
IMAGE_IDS = ("R01", "R02")  # judged from the image's bytes
GUEST_IDS = tuple(r.id for r in REQUIREMENTS if r.id not in IMAGE_IDS)  # judged inside it
# What the in-guest check (azure-check.sh) judges before deprovisioning; R14 on UEFI too.
IN_GUEST_IDS = ("R03", "R04", "R05", "R06", "R07", "R08", "R09", "R10", "R11", "R15")
# R14 does not apply to a BIOS image: what both checks say about it.
R14_BIOS_SKIP = "BIOS image (Gen1): no EFI system partition, no removable-path loader needed"

# ---- R05: Hyper-V drivers


@dataclass(frozen=True)
class Driver:
    name: str
    required: bool  # without it the image does not boot; else a warning


# In the order the preparation writes them into the initrd configuration.
HYPERV_DRIVERS: tuple[Driver, ...] = (
    Driver("hv_vmbus", True), Driver("hv_netvsc", False), Driver("hv_storvsc", True))
HYPERV_MODULES = tuple(d.name for d in HYPERV_DRIVERS)  # the template's default
REQUIRED_MODULES = tuple(d.name for d in HYPERV_DRIVERS if d.required)
WANTED_MODULES = tuple(d.name for d in HYPERV_DRIVERS if not d.required)

# ---- R06, R07: the kernel command line

SERIAL_CONSOLE_ARGS = ("console=ttyS0", "earlyprintk=ttyS0")
ROOTDELAY = "rootdelay=300"
ROOTDELAY_ANY = "rootdelay=*"  # a pattern: rootdelay with any value
FORBIDDEN_ARGS = ("rhgb", "quiet")
CRASHKERNEL_AUTO = "crashkernel=auto"  # a warning: it reserves 128 MB+ of RAM
NUMA_OFF = "numa=off"
NUMA_OFF_UP_TO = "2.6.37"  # kernels up to this one must boot with numa=off (R06)
RECOMMENDED_KERNEL = "3.8"  # older kernels are warned about (R06)
# initramfs-tools' init runs `sleep "$ROOTDELAY"` before it looks for the root device.
INITRAMFS_TOOLS_INIT = "/usr/share/initramfs-tools/init"


@dataclass(frozen=True)
class KernelArgs:
    """R07 for one kind of initrd: the families differ only by how their initrd treats
    rootdelay (an upper bound for dracut, an unconditional sleep for initramfs-tools)."""

    required: tuple[str, ...]
    forbidden: tuple[str, ...]  # words, or patterns ending in `=*` (any value)

    @property
    def always_removed(self) -> tuple[str, ...]:
        """The forbidden patterns (`key=*`): removed whatever the template's
        kernel_args_add and kernel_args_remove say, since no value is right."""
        return tuple(p for p in self.forbidden if p.endswith("=*"))


# By initrd generator: initramfs-tools is the Debian family's (Debian, Ubuntu), dracut and
# mkinitrd the RHEL family's and SUSE's; an initrd the offline check cannot tell is
# judged as dracut's.
_DRACUT = KernelArgs((*SERIAL_CONSOLE_ARGS, ROOTDELAY), FORBIDDEN_ARGS)
KERNEL_ARGS: Mapping[str, KernelArgs] = MappingProxyType({
    "initramfs-tools": KernelArgs(SERIAL_CONSOLE_ARGS, (*FORBIDDEN_ARGS, ROOTDELAY_ANY)),
    "dracut": _DRACUT,
    "mkinitrd": _DRACUT,
    "unknown": _DRACUT,
})


def kernel_args_for(initrd_tool: str) -> KernelArgs:
    return KERNEL_ARGS.get(initrd_tool, _DRACUT)


def arg_matches(arg: str, pattern: str) -> bool:
    """`arg` is the word `pattern`, or has its key when the pattern ends in `=*`."""
    if pattern.endswith("=*"):
        return arg.startswith(pattern[:-1])
    return arg == pattern


# The template's defaults (builder/models.py adds the distros' stable NIC names): what the
# dracut families need; the preparation drops what an initrd tool forbids.
DEFAULT_ARGS_ADD = _DRACUT.required
DEFAULT_ARGS_REMOVE = (*FORBIDDEN_ARGS, CRASHKERNEL_AUTO)

# ---- R10: /etc/waagent.conf per provisioning mode

WAAGENT_CONF = "/etc/waagent.conf"
AGENT = "Provisioning.Agent"
# What the in-guest check accepts in cloud-init mode (auto picks cloud-init when enabled).
CLOUD_INIT_AGENT_VALUES = ("cloud-init", "auto")
REGENERATE_HOST_KEYS = "Provisioning.RegenerateSshHostKeyPair"
RESOURCE_FORMAT = "ResourceDisk.Format"
RESOURCE_FILESYSTEM = "ResourceDisk.Filesystem"
RESOURCE_MOUNT_POINT = "ResourceDisk.MountPoint"
ENABLE_SWAP = "ResourceDisk.EnableSwap"
SWAP_SIZE_MB = "ResourceDisk.SwapSizeMB"


@dataclass(frozen=True)
class AgentMode:
    """The waagent.conf keys one provisioning mode sets, every one explicitly (packages
    ship other defaults): those whose value the mode fixes, in the order they are written,
    then those the template's [azure.agent] settings give."""

    name: str
    fixed: tuple[tuple[str, str], ...]
    from_settings: tuple[str, ...]


AGENT_MODES: Mapping[str, AgentMode] = MappingProxyType({
    "waagent": AgentMode(
        "waagent",
        # Deprovisioning removes the host keys; Debian's sshd does not start without them.
        fixed=((AGENT, "waagent"), (REGENERATE_HOST_KEYS, "y")),
        from_settings=(RESOURCE_FORMAT, RESOURCE_FILESYSTEM, RESOURCE_MOUNT_POINT,
                       ENABLE_SWAP, SWAP_SIZE_MB),
    ),
    "cloud-init": AgentMode(
        "cloud-init",
        # cloud-init owns the resource disk and swap, and regenerates the host keys.
        fixed=((AGENT, "cloud-init"), (REGENERATE_HOST_KEYS, "n"),
               (RESOURCE_FORMAT, "n"), (ENABLE_SWAP, "n")),
        from_settings=(),
    ),
})

# ---- R12: what must not be left in the image


@dataclass(frozen=True)
class Leaks:
    """Files a generalised image must not hold. `checked` is what the offline check looks
    for; the deprovisioning removes those and `tidied` too (harmless, but the build's)."""

    checked: tuple[str, ...]
    tidied: tuple[str, ...] = ()

    @property
    def removed(self) -> tuple[str, ...]:
        return (*self.checked, *self.tidied)


# In /root and every /home/*: shell and tool histories.
HISTORY_FILES = Leaks(
    checked=(".bash_history", ".zsh_history", ".sh_history", ".ash_history", ".history"),
    tidied=(".python_history", ".lesshst", ".viminfo"),
)
# In /root/.ssh and every /home/*/.ssh: the build's key (and anybody's) opens the image.
AUTHORIZED_KEYS = ("authorized_keys", "authorized_keys2")
SSH_HOST_KEYS = "/etc/ssh/ssh_host_*"  # every VM from the image would share them
AGENT_STATE = "/var/lib/waagent"  # its contents
# cloud-init instance data keeps the user data, which may hold secrets.
CLOUD_INIT_INSTANCE = Leaks(
    checked=("/var/lib/cloud/instance", "/var/lib/cloud/instances"),
    tidied=("/var/lib/cloud/data", "/var/lib/cloud/sem"),
)
# Answer files and installer logs: they hold the build's passwords and keys.
INSTALLER_LEFTOVERS = Leaks(
    checked=(
        "/root/anaconda-ks.cfg", "/root/original-ks.cfg", "/root/initial-setup-ks.cfg",
        "/var/log/anaconda", "/var/log/installer", "/root/autoinst.xml",
        "/var/adm/autoinstall", "/autoinstall.yaml", "/var/lib/cloud/seed/nocloud/user-data",
    ),
    tidied=(
        "/root/anaconda-post.log", "/root/install.log", "/root/install.log.syslog",
        "/var/lib/autoinstall", "/root/preseed.cfg", "/etc/cloud/cloud.cfg.d/99-installer.cfg",
        "/var/lib/cloud/seed/nocloud", "/var/lib/cloud/seed/nocloud-net",
    ),
)
# DHCP leases: directory -> the pattern of its lease files.
LEASE_DIRS: Mapping[str, str] = MappingProxyType({
    "/var/lib/dhcp": "*", "/var/lib/dhclient": "*", "/var/lib/NetworkManager": "*lease*",
    "/var/lib/dhcpcd": "*.lease", "/var/lib/dhcpcd5": "*.lease", "/var/lib/wicked": "*lease*",
    "/var/lib/systemd/netif/leases": "*",
})
# Emptied, not removed: systemd fills it in at first boot; a copied one would be shared.
MACHINE_ID = "/etc/machine-id"

# ---- R14: the UEFI fallback boot loader

# The removable path, the only one a VM with empty UEFI variables tries (on the ESP).
FALLBACK_LOADER = "EFI/BOOT/BOOTX64.EFI"
SHIM_MARK = "UEFI SHIM"  # shim's version string, in every shim binary

# ---- R15: SSH host keys made before sshd starts on the first boot

# R12 removes the host keys (SSH_HOST_KEYS); sshd refuses to start without a private one.
SSH_HOST_PRIVATE_KEYS = "/etc/ssh/ssh_host_*_key"
# Where a family's sshd makes no keys itself (Debian, Ubuntu), the preparation installs
# this oneshot unit, enabled and ordered before the SSH server's unit.
HOST_KEYGEN_UNIT = "azbuild-ssh-host-keygen.service"
HOST_KEYGEN_UNIT_DIR = "/etc/systemd/system"
HOST_KEYGEN_COMMAND = "/usr/bin/ssh-keygen -A"  # every missing default key type
# What the offline check counts as making host keys when it appears in a unit's ExecStart
# or ExecStartPre (or a SysV init script): OpenSSH's own `ssh-keygen -A`, the RHEL
# family's `sshd-keygen` (the script of sshd-keygen.service and sshd-keygen@.service),
# SUSE's `sshd-gen-keys-start` (ExecStartPre of its sshd.service).
HOST_KEYGEN_PROGRAMS = ("sshd-keygen", "sshd-gen-keys-start")
