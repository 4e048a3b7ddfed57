"""Offline Azure-readiness checks R03..R14 of a Linux disk image, from one libguestfs launch.

The image is added read-only (libguestfs puts a throw-away overlay in front of
it). The filesystems' clean/dirty state (R13) is read from the raw superblocks
first, before anything mounts them, because mounting an ext4 that needs
recovery replays its journal into the overlay and would hide the problem. Then
the OS is inspected and mounted read-only, and every other check reads files:
the pure parsing functions below take file text and return findings, so they
are unit-tested without an appliance (tests/test_guest_checks_parse.py).
Initrds are downloaded and listed on the host by builder/initrd_list.py.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import shlex
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from builder.appliance import Drive, launch
from builder.errors import CommandError, UsageError
from builder.initrd_list import InitrdError, kernel_versions_in, list_initrd, module_name
from builder.qemu_img import info_argv
from builder.report import CheckResult, Status
from builder.requirements import (
    AGENT,
    AGENT_STATE,
    AUTHORIZED_KEYS,
    CLOUD_INIT_INSTANCE,
    CRASHKERNEL_AUTO,
    ENABLE_SWAP,
    FORBIDDEN_ARGS,
    HISTORY_FILES,
    INITRAMFS_TOOLS_INIT,
    INSTALLER_LEFTOVERS,
    LEASE_DIRS,
    NUMA_OFF,
    R14_BIOS_SKIP,
    REGENERATE_HOST_KEYS,
    REQUIRED_MODULES,
    RESOURCE_FILESYSTEM,
    RESOURCE_FORMAT,
    RESOURCE_MOUNT_POINT,
    SSH_HOST_KEYS,
    SWAP_SIZE_MB,
    WAAGENT_CONF,
    WANTED_MODULES,
    arg_matches,
    kernel_args_for,
)
from builder.run import run

log = logging.getLogger(__name__)

IMAGE_FORMATS = ("raw", "qcow2", "vpc", "vhdx")
AGENT_PACKAGES = ("waagent", "walinuxagent", "WALinuxAgent", "python-azure-agent",
                  "python3-azure-agent")
AGENT_UNITS = ("walinuxagent.service", "waagent.service")
AGENT_SYSV = ("walinuxagent", "waagent")
AGENT_BINARIES = ("/usr/sbin/waagent", "/usr/bin/waagent", "/usr/local/sbin/waagent")
SSH_PACKAGES = ("openssh-server", "openssh")
SSH_UNITS = ("ssh.service", "sshd.service", "ssh.socket", "sshd.socket")
SSH_SYSV = ("ssh", "sshd", "openssh-server")
SSH_BINARIES = ("/usr/sbin/sshd",)
CLOUD_INIT_UNITS = ("cloud-init.service", "cloud-init-local.service", "cloud-init-main.service")
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
SYSV_DIRS = tuple(f"/etc/rc{n}.d" for n in (2, 3, 4, 5)) + tuple(
    f"/etc/rc.d/rc{n}.d" for n in (2, 3, 4, 5)
)
GRUB_CONFIGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/efi/EFI/*/grub.cfg",
                "/boot/grub/grub.conf", "/boot/grub/menu.lst", "/boot/grub2/grub.conf")
SWAP_GPT_TYPE = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
SWAP_MBR_TYPES = ("0x82",)
LVM_MBR_TYPES = ("0x8e",)
LVM_GPT_TYPE = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
ESP_GPT_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ESP_MBR_TYPES = ("0xef",)
FALLBACK_LOADER = "EFI/BOOT/BOOTX64.EFI"
SHIM_MARK = b"UEFI SHIM"  # shim's version string, in every shim binary
EXT_MAGIC = 0xEF53
EXT_STATE_VALID = 0x0001
EXT_STATE_ERROR = 0x0002
EXT_INCOMPAT_RECOVER = 0x0004
EXT_COMPAT_HAS_JOURNAL = 0x0004


# ---------------------------------------------------------------- pure parsing


def where(path: str, number: int, text: str) -> str:
    """Evidence for one line of a file: `path:number: text`."""
    return f"{path}:{number}: {text.strip()}"


@dataclass(frozen=True)
class FstabEntry:
    spec: str
    mountpoint: str
    vfstype: str
    options: str
    line: int
    text: str


def parse_fstab(text: str) -> list[FstabEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3:
            opts = fields[3] if len(fields) > 3 else "defaults"
            entries.append(FstabEntry(fields[0], fields[1], fields[2], opts, number, line))
    return entries


def fstab_swaps(text: str, path: str = "/etc/fstab") -> list[str]:
    """Evidence lines for every swap entry of an fstab."""
    return [where(path, e.line, e.text) for e in parse_fstab(text) if e.vfstype == "swap"]


def parse_shell_assignments(
    text: str, known: Mapping[str, str] | None = None
) -> dict[str, tuple[str, int]]:
    """`KEY=value` lines of a shell-sourced defaults file (/etc/default/grub):
    quotes removed, `$KEY`/`${KEY}` of earlier lines (or of `known`, from files sourced
    before) expanded. Value and line number of the keys this text assigns."""
    values: dict[str, tuple[str, int]] = {}
    earlier = dict(known or {})
    for number, line in enumerate(text.splitlines(), start=1):
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not m:
            continue
        raw = m.group(2)
        try:
            words = shlex.split(raw, comments=True)
        except ValueError:
            words = [raw.strip().strip("\"'")]
        value = " ".join(words)
        value = re.sub(
            r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
            lambda v: earlier.get(v.group(1), ""),
            value,
        )
        values[m.group(1)] = (value, number)
        earlier[m.group(1)] = value
    return values


def grub_defaults(files: Sequence[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """The effective GRUB_* settings of /etc/default/grub and then /etc/default/grub.d/*.cfg
    (sourced in that order by grub-mkconfig): key -> (value, "path:line")."""
    merged: dict[str, tuple[str, str]] = {}
    for path, text in files:
        known = {k: v for k, (v, _) in merged.items()}
        for key, (value, line) in parse_shell_assignments(text, known).items():
            merged[key] = (value, f"{path}:{line}")
    return merged


@dataclass(frozen=True)
class KernelLine:
    path: str
    line: int
    kernel: str  # the kernel image path as written (e.g. /boot/vmlinuz-6.1.0-28-amd64)
    args: tuple[str, ...]
    title: str = ""

    @property
    def recovery(self) -> bool:
        """Recovery/single-user entries carry only the distro's base arguments."""
        t = self.title.lower()
        return "recovery mode" in t or "single" in self.args or "emergency" in self.args

    def evidence(self) -> str:
        return f"{self.path}:{self.line}"


_TITLE_RE = re.compile(r"""^\s*(?:menuentry|submenu)\s+(?:'([^']*)'|"([^"]*)"|(\S+))""")


def _expand_grub_vars(args: Iterable[str], variables: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for arg in args:
        m = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", arg)
        if m and m.group(1) in variables:
            out += variables[m.group(1)].split()
        else:
            out.append(arg)
    return out


def grub_kernel_lines(
    text: str, path: str, variables: Mapping[str, str] | None = None
) -> list[KernelLine]:
    """Kernel lines of a grub2 grub.cfg (`linux`, `linux16`, `linuxefi`) or of a legacy
    grub.conf/menu.lst (`kernel`), with the title of the entry they belong to.
    `$var` arguments are expanded from `variables` (grubenv's `kernelopts`)."""
    variables = dict(variables or {})
    lines: list[KernelLine] = []
    title = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        m = _TITLE_RE.match(stripped)
        if m and stripped.startswith("menuentry"):
            title = next(g for g in m.groups() if g is not None)
            continue
        if stripped.startswith("title "):
            title = stripped[6:].strip()
            continue
        sm = re.match(r"set\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$", stripped)
        if sm and sm.group(1) == "kernelopts":
            with contextlib.suppress(ValueError):
                variables.setdefault("kernelopts", " ".join(shlex.split(sm.group(2))))
            continue
        words = stripped.split()
        if len(words) >= 2 and words[0] in ("linux", "linux16", "linuxefi", "kernel"):
            args = tuple(_expand_grub_vars(words[2:], variables))
            lines.append(KernelLine(path, number, words[1], args, title))
    return lines


def bls_kernel_line(text: str, path: str, variables: Mapping[str, str]) -> KernelLine | None:
    """A Boot Loader Specification entry (/boot/loader/entries/*.conf)."""
    title, kernel, options, opt_line = "", "", "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        key, _, value = line.strip().partition(" ")
        if key == "title":
            title = value.strip()
        elif key == "linux":
            kernel = value.strip()
        elif key == "options":
            options, opt_line = value.strip(), number
    if not kernel:
        return None
    args = tuple(_expand_grub_vars(options.split(), variables))
    return KernelLine(path, opt_line or 1, kernel, args, title)


def parse_grubenv(text: str) -> dict[str, str]:
    return {
        k: v for k, _, v in (ln.partition("=") for ln in text.splitlines())
        if k and not k.startswith("#")
    }


def _has_arg(args: Sequence[str], wanted: str) -> bool:
    key, _, value = wanted.partition("=")
    for arg in args:
        k, _, v = arg.partition("=")
        if k != key:
            continue
        if not value or v == value or v.startswith(value + ","):
            return True
        if key == "rootdelay" and v.isdigit() and int(v) >= int(value):
            return True
    return False


def required_args(initrd_tool: str) -> tuple[str, ...]:
    """R07's required arguments: rootdelay only where the initrd treats it as an upper bound
    (dracut, or a tool not recognised); initramfs-tools sleeps it on every boot."""
    return kernel_args_for(initrd_tool).required


def judge_cmdline(
    args: Sequence[str], initrd_tool: str = "dracut"
) -> tuple[list[str], list[str], bool]:
    """(missing required arguments, forbidden arguments present, has crashkernel=auto).
    On an initramfs-tools image every `rootdelay=` is forbidden."""
    rule = kernel_args_for(initrd_tool)
    missing = [w for w in rule.required if not _has_arg(args, w)]
    forbidden = [a for a in args if any(arg_matches(a, p) for p in rule.forbidden)]
    return missing, forbidden, CRASHKERNEL_AUTO in args


def rootdelay_cost(forbidden: Sequence[str], init_evidence: str) -> str:
    """What a rootdelay on an initramfs-tools image costs, in words (empty when none)."""
    delays = sorted({a.partition("=")[2] for a in forbidden if a.startswith("rootdelay=")})
    if not delays:
        return ""
    seconds = " or ".join(f"{d} s" for d in delays)
    return (f"rootdelay on an initramfs-tools image: its init sleeps that long unconditionally "
            f"({init_evidence}), so every boot on Azure waits {seconds} before it even looks "
            "for the root disk; remove rootdelay from the GRUB defaults and regenerate grub.cfg")


def initramfs_sleep_line(text: str, path: str = INITRAMFS_TOOLS_INIT) -> str:
    """Evidence for the unconditional sleep in initramfs-tools' init: `path:line: text`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if re.search(r'\bsleep\s+"?\$\{?ROOTDELAY', line):
            return where(path, number, line)
    return f"{path} reads rootdelay"


def parse_key_values(text: str) -> dict[str, tuple[str, int]]:
    """`Key=value` lines (waagent.conf): comments and blanks skipped; value and line number."""
    out: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "=" not in stripped:
            continue
        key, _, value = stripped.partition("=")
        out[key.strip()] = (value.split("#", 1)[0].strip(), number)
    return out


@dataclass(frozen=True)
class CloudInitState:
    installed: bool
    enabled: bool
    evidence: str  # why it is (not) enabled
    datasources: list[str] | None = None  # None: no datasource_list (default includes Azure)
    datasource_evidence: str = ""
    regenerates_host_keys: bool = True


def cloud_datasources(text: str) -> list[str] | None:
    """The `datasource_list` a cloud-init config sets (flow `[A, B]` or block `- A`), or None."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*datasource_list\s*:\s*(.*)$", line.split("#", 1)[0])
        if not m:
            continue
        rest = m.group(1).strip()
        if rest.startswith("["):
            flow = rest
            j = i
            while "]" not in flow and j + 1 < len(lines):
                j += 1
                flow += " " + lines[j].split("#", 1)[0]
            inner = flow[1 : flow.index("]")] if "]" in flow else flow[1:]
            return [s.strip().strip("'\"") for s in inner.split(",") if s.strip()]
        if not rest:
            items = []
            for nxt in lines[i + 1 :]:
                im = re.match(r"\s*-\s*(\S+)", nxt)
                if not im:
                    break
                items.append(im.group(1).strip("'\""))
            return items
        return [rest.strip("'\"")]
    return None


def judge_waagent_conf(
    conf: Mapping[str, tuple[str, int]], cloud_init: CloudInitState, path: str = WAAGENT_CONF
) -> tuple[Status, str]:
    """R10: judge waagent.conf by the provisioning mode it declares."""
    def val(key: str) -> str | None:
        return conf[key][0] if key in conf else None

    def show(key: str) -> str:
        return f"{key}={conf[key][0]} ({path}:{conf[key][1]})" if key in conf else f"{key} unset"

    problems: list[str] = []
    agent = val(AGENT)
    if agent is None:
        if (val("Provisioning.UseCloudInit") or "").lower() == "y":
            agent = "cloud-init"
        elif (val("Provisioning.Enabled") or "").lower() == "n":
            agent = "disabled"
        elif (val("Provisioning.Enabled") or "").lower() == "y":
            agent = "waagent"
        else:
            problems.append(f"{AGENT} is not set explicitly (the default is auto)")
            agent = "auto"
    agent = agent.lower()
    mode = agent
    if agent == "auto":
        mode = "cloud-init" if cloud_init.enabled else "waagent"
    facts = [show(AGENT) if AGENT in conf else f"mode {agent}"]
    if agent == "auto":
        facts.append(f"auto resolves to {mode}")
    fmt = (val(RESOURCE_FORMAT) or "").lower()
    swap = (val(ENABLE_SWAP) or "").lower()
    for key in (RESOURCE_FORMAT, ENABLE_SWAP):
        if key not in conf:
            problems.append(f"{key} is not set explicitly")
    if mode == "waagent":
        if fmt != "y":
            problems.append(
                f"waagent mode needs {RESOURCE_FORMAT}=y, found {show(RESOURCE_FORMAT)}"
            )
        for key in (RESOURCE_FILESYSTEM, RESOURCE_MOUNT_POINT):
            if not val(key):
                problems.append(f"{key} is not set")
        if swap == "y":
            size = val(SWAP_SIZE_MB) or ""
            if not size.isdigit() or int(size) <= 0:
                problems.append(
                    f"EnableSwap=y needs a positive {SWAP_SIZE_MB}, "
                    f"found {show(SWAP_SIZE_MB)}"
                )
            if fmt != "y":
                problems.append(f"EnableSwap=y needs {RESOURCE_FORMAT}=y")
        if (val(REGENERATE_HOST_KEYS) or "").lower() != "y":
            problems.append(
                f"waagent mode needs {REGENERATE_HOST_KEYS}=y (host keys are "
                f"removed by deprovisioning), found {show(REGENERATE_HOST_KEYS)}"
            )
        if cloud_init.enabled:
            problems.append(f"cloud-init is enabled ({cloud_init.evidence}) but waagent provisions")
        facts += [show(RESOURCE_FORMAT), show(ENABLE_SWAP),
                  f"cloud-init: {cloud_init.evidence}"]
    elif mode == "cloud-init":
        if fmt != "n":
            problems.append(
                f"cloud-init mode needs {RESOURCE_FORMAT}=n (cloud-init owns the resource disk), "
                f"found {show(RESOURCE_FORMAT)}"
            )
        if swap != "n":
            problems.append(
                f"cloud-init mode needs {ENABLE_SWAP}=n, "
                f"found {show(ENABLE_SWAP)}"
            )
        if not cloud_init.installed:
            problems.append("cloud-init mode but cloud-init is not installed")
        elif not cloud_init.enabled:
            problems.append(
                f"cloud-init mode but cloud-init is not enabled ({cloud_init.evidence})"
            )
        if cloud_init.datasources is not None and "Azure" not in cloud_init.datasources:
            problems.append(
                f"cloud-init's datasource_list has no Azure: {cloud_init.datasource_evidence}"
            )
        if not cloud_init.regenerates_host_keys:
            problems.append(
                "cloud-init is configured not to generate SSH host keys (ssh_genkeytypes: [])"
            )
        facts += [show(RESOURCE_FORMAT), show(ENABLE_SWAP),
                  f"cloud-init {cloud_init.evidence}",
                  cloud_init.datasource_evidence or "default datasource list (includes Azure)"]
    elif mode == "disabled":
        problems.append(
            "provisioning is disabled: nothing creates the admin user or regenerates SSH host keys"
        )
    else:
        problems.append(f"unknown provisioning agent {agent!r}")
    if problems:
        return "fail", "; ".join(problems)
    return "pass", f"{mode} mode: " + "; ".join(facts)


def sudoers_findings(text: str, path: str) -> list[str]:
    """R11: `Defaults targetpw` and `ALL ALL=(ALL) ALL` style lines in one sudoers file."""
    findings = []
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        logical.append((start, pending + (line.strip() if pending else line)))
        pending = ""
    if pending:
        logical.append((start, pending))
    for number, line in logical:
        body = line.strip()
        if body.startswith(("#include", "@include")) or not body:
            continue
        body = re.sub(r"(?<!\\)#(?!\d).*$", "", body).strip()  # "#123" is a uid, not a comment
        if not body:
            continue
        m = re.match(r"Defaults(?:[:@!>][^\s]+)?\s+(.*)$", body)
        if m:
            opts = [o.strip() for o in m.group(1).split(",")]
            if "targetpw" in opts:
                findings.append(where(path, number, line))
            continue
        norm = re.sub(r"\s+", " ", body)
        if re.fullmatch(
            r"ALL ALL ?= ?(\(ALL(?: ?: ?ALL)?\) ?)?(?:[A-Z_]+: ?)*ALL", norm
        ):
            findings.append(where(path, number, line))
    return findings


def shadow_password_field(shadow: str, user: str) -> str | None:
    for line in shadow.splitlines():
        parts = line.split(":")
        if len(parts) >= 2 and parts[0] == user:
            return parts[1]
    return None


def password_locked(field_value: str) -> bool:
    """Locked: `!`/`*` prefix (`!`, `!!`, `*`, `!$6$...`). Empty means no password at all."""
    return field_value.startswith(("!", "*"))


def users_with_passwords(passwd: str, shadow: str) -> list[str]:
    """Login users (uid >= 1000, not nobody) whose password is usable: build leftovers."""
    users = []
    for line in passwd.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit() and 1000 <= int(parts[2]) < 60000:
            pw = shadow_password_field(shadow, parts[0])
            if pw is not None and pw and not password_locked(pw):
                users.append(parts[0])
    return users


def unit_enabled(
    units: Sequence[str], links: Mapping[str, str]
) -> tuple[bool | None, str]:
    """Is any of `units` enabled, judging from systemd's symlinks (`links`: link path ->
    target, from /etc/systemd/system and the vendor unit directories)? True with the
    enabling link, False when masked, None when nothing enables it."""
    names = set(units)
    for link, target in links.items():  # aliases: sshd.service -> ssh.service
        p = PurePosixPath(link)
        if p.parent.name.endswith((".wants", ".requires")):
            continue
        tname = PurePosixPath(target).name
        if p.name in names and target != "/dev/null":
            names.add(tname)
        elif tname in names and p.name.endswith((".service", ".socket")):
            names.add(p.name)
    for link, target in sorted(links.items()):
        p = PurePosixPath(link)
        if str(p.parent) == "/etc/systemd/system" and p.name in units and target == "/dev/null":
            return False, f"{link} -> /dev/null (masked)"
    for link, target in sorted(links.items()):
        p = PurePosixPath(link)
        if not p.parent.name.endswith((".wants", ".requires")):
            continue
        if p.name in names or PurePosixPath(target).name in names:
            return True, f"{link} -> {target}"
    return None, "no enablement link for " + "/".join(units)


def sysv_enabled(sysv_names: Sequence[str], rc_entries: Mapping[str, Sequence[str]]) -> str | None:
    """A SysV start link (`/etc/rc3.d/S20name`) for one of the names, or None."""
    for directory, names in sorted(rc_entries.items()):
        for name in names:
            m = re.match(r"S\d\d(.+)$", name)
            if m and m.group(1) in sysv_names:
                return f"{directory}/{name}"
    return None


def parse_dpkg_status(text: str) -> dict[str, str]:
    """Installed packages (`Status: install ok installed`) of a dpkg status file -> version."""
    installed: dict[str, str] = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        status = fields.get("Status", "").split()
        if "Package" in fields and status[-1:] == ["installed"] and status[:1] != ["deinstall"]:
            installed[fields["Package"]] = fields.get("Version", "")
    return installed


def version_tuple(version: str) -> tuple[int, ...]:
    """`2.6.32-754.el6.x86_64` -> (2, 6, 32); `6.1.0-28-cloud-amd64` -> (6, 1, 0)."""
    m = re.match(r"(\d+(?:\.\d+)*)", version)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def kernel_version_status(version: str, numa_off: bool) -> tuple[Status, str]:
    v = version_tuple(version)
    if not v:
        return "warn", f"{version}: version not understood"
    if v <= (2, 6, 37):
        if numa_off:
            return "warn", f"{version} (2.6.37 or older, boots with {NUMA_OFF}; 3.8+ recommended)"
        return "fail", f"{version} is 2.6.37 or older and its kernel lines lack {NUMA_OFF}"
    if v < (3, 8):
        return "warn", f"{version} is older than 3.8 (recommended minimum)"
    return "pass", version


def initrd_version(name: str) -> str | None:
    """Kernel version from an initrd file name (Debian, RHEL and SUSE naming)."""
    for pattern in (r"initrd\.img-(.+)$", r"initramfs-(.+?)\.img$", r"initrd-(.+?)(?:\.img)?$"):
        m = re.match(pattern, name)
        if m:
            return m.group(1)
    return None


def builtin_modules(text: str) -> set[str]:
    """Module names of /lib/modules/<ver>/modules.builtin."""
    return {n for line in text.splitlines() if (n := module_name(line.strip()))}


def superblock_state(sb: bytes) -> tuple[bool, str]:
    """R13 for ext2/3/4 from the 1024-byte superblock: (clean, description)."""
    if len(sb) < 0x64 or struct.unpack_from("<H", sb, 0x38)[0] != EXT_MAGIC:
        return False, "no ext2/3/4 superblock"
    state = struct.unpack_from("<H", sb, 0x3A)[0]
    compat, incompat = struct.unpack_from("<II", sb, 0x5C)
    problems = []
    if incompat & EXT_INCOMPAT_RECOVER:
        problems.append("needs_recovery (journal not replayed)")
    if not state & EXT_STATE_VALID:
        problems.append(f"not clean (s_state=0x{state:04x})")
    if state & EXT_STATE_ERROR:
        problems.append(f"has errors (s_state=0x{state:04x})")
    if problems:
        return False, ", ".join(problems)
    journal = "journal clean" if compat & EXT_COMPAT_HAS_JOURNAL else "no journal"
    return True, f"clean (s_state=0x{state:04x}, {journal})"


@dataclass(frozen=True)
class Partition:
    number: int  # as Linux numbers them: MBR primaries 1-4, logical 5+; GPT entry index + 1
    type: str  # MBR "0x83"; GPT type GUID in upper case
    start: int  # bytes
    size: int  # bytes

    @property
    def extended(self) -> bool:
        return self.type in ("0x05", "0x0f", "0x85")


SECTOR = 512


def parse_mbr(sector0: bytes) -> tuple[str, list[Partition]]:
    """("msdos", primary partitions) / ("gpt", []) for a protective MBR / ("none", [])."""
    if len(sector0) < SECTOR or sector0[510:512] != b"\x55\xaa":
        return "none", []
    parts = []
    for i in range(4):
        entry = sector0[446 + 16 * i : 462 + 16 * i]
        ptype = entry[4]
        lba, count = struct.unpack_from("<II", entry, 8)
        if ptype == 0xEE:
            return "gpt", []
        if ptype and count:
            parts.append(Partition(i + 1, f"0x{ptype:02x}", lba * SECTOR, count * SECTOR))
    if not parts and not any(sector0[446:510]):
        return "none", []  # a boot sector signature but no table (e.g. a filesystem's)
    return "msdos", parts


def parse_ebr(ebr: bytes, ebr_lba: int, extended_lba: int, number: int
              ) -> tuple[Partition | None, int | None]:
    """One extended boot record: its logical partition and the LBA of the next EBR."""
    if len(ebr) < SECTOR or ebr[510:512] != b"\x55\xaa":
        return None, None
    first, second = ebr[446:462], ebr[462:478]
    part = None
    if first[4]:
        lba, count = struct.unpack_from("<II", first, 8)
        part = Partition(number, f"0x{first[4]:02x}", (ebr_lba + lba) * SECTOR, count * SECTOR)
    nxt = None
    if second[4] in (0x05, 0x0F, 0x85):
        nxt = extended_lba + struct.unpack_from("<I", second, 8)[0]
    return part, nxt


def parse_gpt_header(header: bytes) -> tuple[int, int, int] | None:
    """(entries LBA, number of entries, entry size) of a GPT header, or None."""
    if header[:8] != b"EFI PART":
        return None
    lba, count, size = struct.unpack_from("<QII", header, 72)
    return lba, count, size


def parse_gpt_entries(data: bytes, count: int, size: int) -> list[Partition]:
    parts = []
    for i in range(count):
        entry = data[i * size : (i + 1) * size]
        if len(entry) < 56 or not any(entry[:16]):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        guid = str(uuid.UUID(bytes_le=bytes(entry[:16]))).upper()
        parts.append(Partition(i + 1, guid, first * SECTOR, (last - first + 1) * SECTOR))
    return parts


def judge_fallback_loader(
    esp: str, files: Mapping[str, int], loader_is_shim: bool, grub_prefix_in: str | None
) -> tuple[Status, str]:
    """R14 from the ESP's files (`EFI/<dir>/<name>` -> size, names as stored: FAT ignores
    case): the removable-path loader is there and reaches a GRUB configuration, through a
    grub.cfg beside it, shim's fallback (fbx64.efi) with a vendor's BOOTX64.CSV, a vendor's
    grub.cfg (a signed GRUB's prefix is its EFI/<vendor>), or `/boot/grub` built into the
    loader (`grub_prefix_in` names the file that has it)."""
    lower = {p.lower(): p for p in files}
    loader = lower.get(FALLBACK_LOADER.lower())
    vendors = sorted({p.split("/")[1] for p in files
                      if p.count("/") == 2 and p.split("/")[1].lower() != "boot"})
    if loader is None or files[loader] == 0:
        found = ", ".join(f"EFI/{v}" for v in vendors) or "no loader directory"
        return "fail", (
            f"{esp}: no {FALLBACK_LOADER} ({found} only): a VM created from this image starts "
            "with empty UEFI variables and tries only that path; install the boot loader with "
            "the distro's removable option (grub-install --removable) or copy EFI/<vendor> to "
            "EFI/BOOT with shim as BOOTX64.EFI")
    boot = {p.rsplit("/", 1)[1].lower(): p for p in files if p.lower().startswith("efi/boot/")}
    fallback = next((boot[n] for n in sorted(boot) if n.startswith("fb") and n.endswith(".efi")),
                    None)
    if loader_is_shim and fallback is None and not ({"grubx64.efi", "grub.efi"} & set(boot)):
        return "fail", (f"{esp}: {loader} is shim, but EFI/BOOT holds neither its second stage "
                        "(grubx64.efi) nor its fallback (fbx64.efi)")
    elsewhere = [p for p in sorted(files) if p.count("/") == 2 and p.split("/")[1] in vendors]
    csvs = [p for p in elsewhere if p.rsplit("/", 1)[1].lower() in ("bootx64.csv", "boot.csv")]
    cfgs = [p for p in elsewhere if p.rsplit("/", 1)[1].lower() == "grub.cfg"]
    if "grub.cfg" in boot:
        config = boot["grub.cfg"]
    elif fallback and csvs:
        config = f"shim's fallback {fallback} with {csvs[0]}"
    elif cfgs:
        config = f"{cfgs[0]} (the prefix of a signed GRUB)"
    elif grub_prefix_in:
        config = f"/boot/grub built into {grub_prefix_in}"
    else:
        return "fail", (f"{esp}: {loader} finds no grub.cfg: none in EFI/BOOT or "
                        f"{', '.join(f'EFI/{v}' for v in vendors) or 'a vendor directory'}, "
                        "and no /boot/grub built into the loader")
    kind = "shim" if loader_is_shim else "GRUB or another loader"
    return "pass", f"{esp}: {loader} ({kind}, {files[loader]} bytes) reaches {config}"


# ---------------------------------------------------------------- the appliance side


class _Guest:
    """Failure-tolerant helpers over a launched guestfs handle. Every call is a round trip
    to the appliance (tens of milliseconds under TCG), so each helper makes as few as it can."""

    def __init__(self, g: Any, tmp: Path) -> None:
        self.g = g
        self.tmp = tmp
        self._ls: dict[str, list[str]] = {}

    def exists(self, path: str) -> bool:
        try:
            return bool(self.g.exists(path))
        except RuntimeError:
            return False

    def is_file(self, path: str) -> bool:
        try:
            return bool(self.g.is_file(path, followsymlinks=True))
        except RuntimeError:
            return False

    def is_symlink(self, path: str) -> bool:
        try:
            return bool(self.g.is_symlink(path))
        except RuntimeError:
            return False

    def read_bytes(self, path: str) -> bytes | None:
        """The file's bytes (symlinks followed), or None when it is missing or not a file."""
        try:
            return bytes(self.g.read_file(path))
        except RuntimeError as exc:
            msg = str(exc)
            if any(m in msg for m in ("No such file", "Not a directory", "Is a directory",
                                      "Too many levels", "Permission denied")):
                return None
        return self.download(path)  # too large for one protocol message

    def download(self, path: str) -> bytes | None:
        local = self.tmp / "download"
        try:
            self.g.download(path, str(local))
        except RuntimeError as exc:
            log.debug("cannot download %s: %s", path, exc)
            return None
        data = local.read_bytes()
        local.unlink()
        return data

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode("utf-8", "replace")

    def forget(self) -> None:
        """Drop cached listings (after mounting or unmounting)."""
        self._ls.clear()

    def ls(self, path: str) -> list[str]:
        if path not in self._ls:
            try:
                self._ls[path] = sorted(self.g.ls(path))
            except RuntimeError:
                self._ls[path] = []
        return self._ls[path]

    def stat(self, directory: str, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        """name -> (st_mode, st_size) without following symlinks, for entries of one dir."""
        if not names:
            return {}
        try:
            stats = self.g.lstatnslist(directory, list(names))
        except RuntimeError:
            return {}
        return {n: (int(st["st_mode"]), int(st["st_size"]))
                for n, st in zip(names, stats, strict=False) if int(st["st_ino"]) >= 0}

    def nonempty_files(self, directory: str, names: Sequence[str] | None = None) -> list[str]:
        """Regular files of `directory` (optionally only `names`) with a size above zero."""
        present = self.ls(directory)
        wanted = [n for n in present if names is None or n in names]
        return [f"{directory}/{n}" for n, (mode, size) in self.stat(directory, wanted).items()
                if mode & 0o170000 == 0o100000 and size > 0]

    def glob(self, pattern: str) -> list[str]:
        try:
            return sorted(self.g.glob_expand(pattern))
        except RuntimeError:
            return []

    def links_in(self, directory: str) -> dict[str, str]:
        names = self.ls(directory)
        if not names:
            return {}
        try:
            targets = self.g.readlinklist(directory, names)
        except RuntimeError:
            return {}
        return {f"{directory}/{n}": t for n, t in zip(names, targets, strict=False) if t}


@dataclass
class _Disk:
    device: str
    table: str  # "msdos", "gpt" or "none"
    partitions: list[Partition]
    boot_code: bytes


@dataclass
class _Facts:
    """What was learnt from the guest before the per-requirement judgements."""

    disks: list[_Disk] = field(default_factory=list)
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
    rc_entries: dict[str, list[str]] = field(default_factory=dict)
    kernel_lines: list[KernelLine] = field(default_factory=list)
    kernel_args_any: set[str] = field(default_factory=set)


# Called with the handle and the kernel lines while the guest's OS is mounted read-only.
MountedVisitor = Callable[[Any, "list[KernelLine]"], None]


def guest_checks(
    image: Path, image_format: str, accelerator: Literal["kvm", "tcg"] | None = None,
    visit: MountedVisitor | None = None,
) -> list[CheckResult]:
    """One CheckResult for each of R03..R14 (in that order), then extra warnings (W-*).
    The appliance runs on `accelerator`, else on the KVM probe's answer. `visit` reads
    more from the mounted guest in the same launch (builder/inventory.py)."""
    if image_format not in IMAGE_FORMATS:
        raise UsageError(
            f"unknown image format {image_format!r}", hint=f"one of {', '.join(IMAGE_FORMATS)}"
        )
    if not image.is_file() or not os.access(image, os.R_OK):
        raise UsageError(f"cannot read {image}: not a readable file")
    try:  # the input's fault, told apart from an appliance that cannot start
        run(info_argv(image, image_format), timeout=120)
    except CommandError as exc:
        raise UsageError(
            f"cannot open {image} as a {image_format} disk image: "
            f"{(exc.stderr or exc.stdout).strip()}",
            hint="check the file and its format; `qemu-img info` shows what it holds",
        ) from None
    started = time.monotonic()
    g = launch([Drive(image, image_format)], accelerator)
    try:
        with tempfile.TemporaryDirectory(prefix="azbuild-check-") as tmp:
            results = _run_checks(g, _Guest(g, Path(tmp)), image, visit)
        with contextlib.suppress(RuntimeError):
            g.shutdown()
    finally:
        g.close()
    log.info("guest checks of %s took %.1f s", image, time.monotonic() - started)
    return results


def _run_checks(g: Any, guest: _Guest, image: Path,
                visit: MountedVisitor | None = None) -> list[CheckResult]:
    facts = _Facts()
    _scan_block_devices(g, facts)
    r13 = _check_clean(g, facts.filesystems)  # before anything mounts a filesystem
    _mount_os(g, guest, facts, image)
    _gather(g, guest, facts)
    if visit is not None:
        started = time.monotonic()
        visit(g, facts.kernel_lines)
        log.info("reading more from the guest took %.1f s", time.monotonic() - started)
    r03, extras = _check_partitions(facts)
    results = [
        r03,
        _check_swap(facts),
        _check_initrds(guest),
        _check_kernels(guest, facts),
        _check_cmdline(guest, facts),
        _check_service("R08", guest, facts, AGENT_PACKAGES, AGENT_UNITS, AGENT_SYSV,
                       AGENT_BINARIES),
        _check_service("R09", guest, facts, SSH_PACKAGES, SSH_UNITS, SSH_SYSV, SSH_BINARIES),
        _check_waagent_conf(guest, facts),
        _check_sudoers(guest),
        _check_generalised(guest),
        r13,
        _check_fallback_loader(g, guest, facts),
    ]
    if facts.unmounted:
        extras.append(CheckResult(
            "W-MOUNT", "warn", "could not mount " + "; ".join(facts.unmounted),
            "every filesystem of the OS mounts"))
    return results + extras


def _read_partitions(g: Any, device: str) -> _Disk:
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
    return _Disk(device, table, parts, sector0[:440])


def _scan_block_devices(g: Any, facts: _Facts) -> None:
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


def _is_os_root(guest: _Guest) -> bool:
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


def _mount_os(g: Any, guest: _Guest, facts: _Facts, image: Path) -> None:
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


def _gather(g: Any, guest: _Guest, facts: _Facts) -> None:
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


def _packages_by_inspection(g: Any, guest: _Guest, facts: _Facts) -> None:
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


def _kernel_lines(guest: _Guest) -> list[KernelLine]:
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


def _result(rid: str, status: Status, evidence: str) -> CheckResult:
    return CheckResult(rid, status, evidence)


def _check_partitions(facts: _Facts) -> tuple[CheckResult, list[CheckResult]]:
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
        return _result("R03", "fail", "; ".join(problems)), extras
    return _result("R03", "pass", "; ".join([*facts_txt, "no LVM, no RAID"])), extras


def _check_swap(facts: _Facts) -> CheckResult:
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
        return _result("R04", "fail", "; ".join(problems))
    return _result("R04", "pass", "no swap partition, no swap signature, no swap in /etc/fstab")


def _installed_kernels(guest: _Guest) -> dict[str, str]:
    """Kernel version -> where it was found."""
    kernels: dict[str, str] = {}
    for name, (mode, _size) in _boot_files(guest).items():
        for prefix in ("vmlinuz-", "vmlinux-", "kernel-"):
            if name.startswith(prefix) and "rescue" not in name and _is_reg(mode):
                kernels[name[len(prefix):]] = f"/boot/{name}"
    for ver in guest.ls("/lib/modules") or guest.ls("/usr/lib/modules"):
        if ver not in kernels and "vmlinuz" in guest.ls(f"/lib/modules/{ver}"):
            kernels[ver] = f"/lib/modules/{ver}/vmlinuz"
    return kernels


def _is_reg(mode: int) -> bool:
    return mode & 0o170000 == 0o100000


def _boot_files(guest: _Guest) -> dict[str, tuple[int, int]]:
    """name -> (mode, size) of /boot's entries (symlinks not followed)."""
    return guest.stat("/boot", guest.ls("/boot"))


def _check_kernels(guest: _Guest, facts: _Facts) -> CheckResult:
    kernels = _installed_kernels(guest)
    if not kernels:
        return _result("R06", "fail", "no kernel found in /boot or /lib/modules")
    worst: Status = "pass"
    parts = []
    order: dict[Status, int] = {"pass": 0, "skip": 0, "warn": 1, "fail": 2}
    for ver, where_found in sorted(kernels.items()):
        lines = [kl for kl in facts.kernel_lines if kl.kernel.endswith(ver)]
        numa_off = bool(lines) and all(NUMA_OFF in kl.args for kl in lines)
        status, text = kernel_version_status(ver, numa_off)
        parts.append(f"{text} ({where_found})")
        if order[status] > order[worst]:
            worst = status
    return _result("R06", worst, "; ".join(parts))


def _check_initrds(guest: _Guest) -> CheckResult:
    kernels = _installed_kernels(guest)
    initrds = [
        f"/boot/{n}" for n, (mode, _size) in _boot_files(guest).items()
        if n.startswith(("initrd", "initramfs")) and "kdump" not in n and _is_reg(mode)
    ]
    problems: list[str] = []
    good: list[str] = []
    warnings: list[str] = []
    covered: set[str] = set()
    builtin_cache: dict[str, set[str]] = {}

    def builtins(ver: str | None) -> set[str]:
        if ver is None:
            return set()
        if ver not in builtin_cache:
            text = guest.read_text(f"/lib/modules/{ver}/modules.builtin") or guest.read_text(
                f"/usr/lib/modules/{ver}/modules.builtin")
            builtin_cache[ver] = builtin_modules(text or "")
        return builtin_cache[ver]

    for path in initrds:
        data = guest.download(path)
        if data is None:
            problems.append(f"{path}: cannot be read")
            continue
        try:
            entries = list_initrd(data)
        except InitrdError as exc:
            problems.append(f"{path}: cannot be listed: {exc}")
            continue
        ver = initrd_version(PurePosixPath(path).name)
        in_tree = kernel_versions_in(entries)
        if ver not in kernels and len(in_tree) == 1:
            ver = next(iter(in_tree))
        if ver:
            covered.add(ver)
        segments = {e.archive: e.compression for e in entries}
        label = f"{path} ({' + '.join(segments[k] for k in sorted(segments))})"
        present = {n for e in entries if e.is_file and (n := module_name(e.name))}
        have = present | builtins(ver)
        missing = [m for m in REQUIRED_MODULES if m not in have]
        if missing:
            problems.append(f"{label} lacks {', '.join(missing)}")
        else:
            where_b = [m for m in REQUIRED_MODULES if m not in present]
            note = f" ({', '.join(where_b)} built into the kernel)" if where_b else ""
            good.append(f"{label}: {', '.join(REQUIRED_MODULES)}{note}")
        lacking = [m for m in WANTED_MODULES if m not in have]
        if lacking:
            warnings.append(f"{label} lacks {', '.join(lacking)}")
    for ver in sorted(set(kernels) - covered):
        have = builtins(ver)
        if all(m in have for m in REQUIRED_MODULES):
            good.append(f"kernel {ver}: no initrd, {', '.join(REQUIRED_MODULES)} built in")
        else:
            problems.append(f"kernel {ver} has no initrd under /boot and the Hyper-V "
                            "drivers are not built in")
    if problems:
        return _result("R05", "fail", "; ".join(problems + warnings))
    if not good:
        return _result("R05", "fail", "no initrd under /boot")
    if warnings:
        return _result("R05", "warn", "; ".join(good + warnings))
    return _result("R05", "pass", "; ".join(good) + f"; {', '.join(WANTED_MODULES)} too")


def _initrd_tool(guest: _Guest) -> tuple[str, str]:
    """The image's initrd generator and the evidence: initramfs-tools (Debian, Ubuntu) when
    its init script is there, dracut when its modules are, else "unknown"."""
    if _listed(guest, INITRAMFS_TOOLS_INIT):
        text = guest.read_text(INITRAMFS_TOOLS_INIT) or ""
        return "initramfs-tools", initramfs_sleep_line(text)
    for path in ("/usr/lib/dracut", "/etc/dracut.conf"):
        if _listed(guest, path):
            return "dracut", path
    return "unknown", ""


def _check_cmdline(guest: _Guest, facts: _Facts) -> CheckResult:
    problems: list[str] = []
    notes: list[str] = []
    crash = False
    tool, tool_evidence = _initrd_tool(guest)
    rootdelays: list[str] = []
    sources = [("/etc/default/grub", guest.read_text("/etc/default/grub"))] + [
        (f"/etc/default/grub.d/{n}", guest.read_text(f"/etc/default/grub.d/{n}"))
        for n in guest.ls("/etc/default/grub.d") if n.endswith(".cfg")
    ]
    files = [(path, text) for path, text in sources if text is not None]
    if files:
        values = grub_defaults(files)
        args: list[str] = []
        shown = []
        for key in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
            if key in values:
                args += values[key][0].split()
                shown.append(f'{values[key][1]}: {key}="{values[key][0]}"')
        missing, forbidden, has_crash = judge_cmdline(args, tool)
        crash = crash or has_crash
        rootdelays += forbidden
        what = "the grub defaults" if len(files) > 1 else "/etc/default/grub"
        if missing:
            problems.append(f"{what} lack{'s' if len(files) == 1 else ''} "
                            f"{' '.join(missing)} ({'; '.join(shown)})")
        if forbidden:
            problems.append(f"{what} ha{'s' if len(files) == 1 else 've'} "
                            f"{' '.join(forbidden)} ({'; '.join(shown)})")
        if not missing and not forbidden:
            notes.append("; ".join(shown))
    if not facts.kernel_lines:
        problems.append("no boot loader configuration with kernel lines (looked for grub.cfg "
                        "under /boot/grub, /boot/grub2, /boot/efi/EFI/*, grub.conf, menu.lst "
                        "and /boot/loader/entries)")
    judged = skipped = 0
    for kl in facts.kernel_lines:
        missing, forbidden, has_crash = judge_cmdline(kl.args, tool)
        crash = crash or has_crash
        rootdelays += forbidden
        if forbidden:
            problems.append(f"{kl.evidence()}: has {' '.join(forbidden)}")
        if kl.recovery:
            skipped += 1
            continue
        judged += 1
        if missing:
            problems.append(f"{kl.evidence()}: kernel line lacks {' '.join(missing)}")
    cost = rootdelay_cost(rootdelays, tool_evidence)
    if cost:
        problems.insert(0, cost)
    if problems:
        return _result("R07", "fail", "; ".join(problems))
    configs = sorted({kl.path for kl in facts.kernel_lines})
    wanted = " ".join(required_args(tool))
    summary = (f"{judged} kernel line(s) in {', '.join(configs)} have "
               f"{wanted}, no {'/'.join(FORBIDDEN_ARGS)}")
    if tool == "initramfs-tools":
        summary += " and no rootdelay (initramfs-tools sleeps it on every boot)"
    if skipped:
        summary += f" ({skipped} recovery entr{'y' if skipped == 1 else 'ies'} not judged)"
    if crash:
        return _result("R07", "warn", f"{CRASHKERNEL_AUTO} is set (reserves 128 MB+ of RAM); "
                       + "; ".join([summary, *notes]))
    return _result("R07", "pass", "; ".join([summary, *notes]))


def _service_state(
    guest: _Guest, facts: _Facts, units: Sequence[str], sysv: Sequence[str]
) -> tuple[bool, str]:
    has_unit = any(u in guest.ls(d) for d in UNIT_DIRS for u in units)
    enabled, evidence = unit_enabled(units, facts.links)
    if enabled:
        return True, evidence
    if enabled is False:
        return False, evidence
    if not has_unit:
        rc = sysv_enabled(sysv, facts.rc_entries)
        if rc:
            return True, f"SysV start link {rc}"
        return False, f"no systemd unit {'/'.join(units)} and no SysV start link"
    return False, f"{'/'.join(units)} not enabled ({evidence})"


def _check_service(
    rid: str, guest: _Guest, facts: _Facts, packages: Sequence[str], units: Sequence[str],
    sysv: Sequence[str], binaries: Sequence[str],
) -> CheckResult:
    what = "Azure Linux agent" if rid == "R08" else "SSH server"
    pkgs = [f"{p} {facts.packages[p]}".strip() for p in packages if p in facts.packages]
    bins = [b for b in binaries if _listed(guest, b)]
    problems = []
    if pkgs:
        installed = f"package {', '.join(pkgs)} ({facts.package_source})"
    elif bins:
        installed = f"no package, but {', '.join(bins)} present"
    else:
        problems.append(f"{what} not installed (no package {'/'.join(packages)} in "
                        f"{facts.package_source or 'the package database'}, no "
                        f"{'/'.join(binaries)})")
        installed = ""
    enabled, evidence = _service_state(guest, facts, units, sysv)
    if not enabled:
        problems.append(f"{what} not enabled at boot: {evidence}" if installed or "masked"
                        in evidence else f"not enabled: {evidence}")
    if rid == "R08" and installed and not any(
        _listed(guest, p) for p in ("/usr/bin/python3", "/usr/bin/python", "/usr/bin/python2")
    ):
        problems.append("no Python interpreter for the agent")
    if problems:
        return _result(rid, "fail", "; ".join(problems))
    status: Status = "pass" if pkgs else "warn"
    return _result(rid, status, f"{installed}; enabled: {evidence}")


def _cloud_init_state(guest: _Guest, facts: _Facts) -> CloudInitState:
    installed = "cloud-init" in facts.packages or _listed(guest, "/usr/bin/cloud-init")
    datasources: list[str] | None = None
    ds_evidence = ""
    regenerates = True
    configs = ["/etc/cloud/cloud.cfg"] + [
        f"/etc/cloud/cloud.cfg.d/{n}" for n in guest.ls("/etc/cloud/cloud.cfg.d")
        if n.endswith(".cfg")
    ]
    for path in configs:
        text = guest.read_text(path)
        if text is None:
            continue
        found = cloud_datasources(text)
        if found is not None:
            datasources, ds_evidence = found, f"{path}: datasource_list: [{', '.join(found)}]"
        if re.search(r"^\s*ssh_genkeytypes\s*:\s*\[\s*\]", text, re.M):
            regenerates = False
    if not installed:
        return CloudInitState(False, False, "not installed", datasources, ds_evidence, regenerates)
    if _listed(guest, "/etc/cloud/cloud-init.disabled"):
        return CloudInitState(True, False, "disabled by /etc/cloud/cloud-init.disabled",
                              datasources, ds_evidence, regenerates)
    if "cloud-init=disabled" in facts.kernel_args_any:
        return CloudInitState(True, False, "disabled by cloud-init=disabled on the kernel line",
                              datasources, ds_evidence, regenerates)
    enabled, evidence = unit_enabled(CLOUD_INIT_UNITS, facts.links)
    if enabled:
        return CloudInitState(True, True, f"enabled ({evidence})", datasources, ds_evidence,
                              regenerates)
    return CloudInitState(True, False, f"installed but not enabled ({evidence})", datasources,
                          ds_evidence, regenerates)


def _check_waagent_conf(guest: _Guest, facts: _Facts) -> CheckResult:
    text = guest.read_text(WAAGENT_CONF)
    if text is None:
        return _result("R10", "fail", f"no {WAAGENT_CONF}")
    status, evidence = judge_waagent_conf(parse_key_values(text), _cloud_init_state(guest, facts))
    return _result("R10", status, evidence)


def _check_sudoers(guest: _Guest) -> CheckResult:
    files = ["/etc/sudoers"]
    files += [
        f"/etc/sudoers.d/{n}" for n in guest.ls("/etc/sudoers.d")
        if "." not in n and not n.endswith("~")  # what sudo's #includedir reads
    ]
    findings: list[str] = []
    read = []
    for path in files:
        text = guest.read_text(path)
        if text is None:
            continue
        read.append(path)
        findings += sudoers_findings(text, path)
    if findings:
        return _result("R11", "fail", "; ".join(findings))
    if not read:
        return _result("R11", "pass", "no /etc/sudoers (sudo not installed)")
    return _result("R11", "pass", f"no targetpw, no ALL ALL=(ALL) ALL in {', '.join(read)}")


def _listed(guest: _Guest, path: str) -> bool:
    """Whether `path` exists (even as a dangling symlink), from its directory's cached
    listing: most checks look at a few names in the same directories."""
    parent = PurePosixPath(path).parent
    return PurePosixPath(path).name in guest.ls(str(parent))


def _check_generalised(guest: _Guest) -> CheckResult:
    found: list[str] = []
    keys_dir, _, keys_glob = SSH_HOST_KEYS.rpartition("/")
    keys = [n for n in guest.ls(keys_dir) if fnmatch.fnmatchcase(n, keys_glob)]
    if keys:
        found.append("SSH host keys " + ", ".join(f"{keys_dir}/{k}" for k in keys))
    shadow = guest.read_text("/etc/shadow")
    if shadow is None:
        found.append("no /etc/shadow")
    else:
        pw = shadow_password_field(shadow, "root")
        if pw is None:
            found.append("no root entry in /etc/shadow")
        elif not password_locked(pw):
            found.append("root's password is not locked in /etc/shadow ("
                         + ("empty: no password at all" if not pw else "a usable hash") + ")")
        users = users_with_passwords(guest.read_text("/etc/passwd") or "", shadow)
        if users:
            found.append(f"users with a usable password: {', '.join(users)}")
    leases = [p for d in LEASE_DIRS for p in guest.nonempty_files(d)
              if fnmatch.fnmatch(p, LEASE_DIRS[d])]
    if leases:
        found.append("DHCP leases " + ", ".join(leases))
    state = guest.ls(AGENT_STATE)
    if state:
        found.append(f"agent state in {AGENT_STATE}: " + ", ".join(state[:5])
                     + (" ..." if len(state) > 5 else ""))
    homes = ["/root", *(f"/home/{h}" for h in guest.ls("/home"))]
    for home in homes:
        found += [f"shell history {p}"
                  for p in guest.nonempty_files(home, HISTORY_FILES.checked)]
        if ".ssh" in guest.ls(home):
            found += [f"authorized keys {p}" for p in guest.nonempty_files(
                f"{home}/.ssh", AUTHORIZED_KEYS)]
    current, every = CLOUD_INIT_INSTANCE.checked  # a link to the current one, and all
    instance = [current] if _listed(guest, current) else []
    instance += [f"{every}/{n}" for n in guest.ls(every)]
    if instance:
        found.append("cloud-init instance data " + ", ".join(instance))
    leftovers = [p for p in INSTALLER_LEFTOVERS.checked if _listed(guest, p)]
    if leftovers:
        found.append("installer leftovers " + ", ".join(leftovers))
    if found:
        return _result("R12", "fail", "; ".join(found))
    return _result("R12", "pass", "no host keys, root locked, no leases, no agent state, no "
                   "histories, no authorized_keys, no cloud-init instance data, no installer "
                   "leftovers")


def _check_clean(g: Any, filesystems: Mapping[str, str]) -> CheckResult:
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
        return _result("R13", "fail", "; ".join(problems))
    if not facts:
        return _result("R13", "skip", "no ext2/3/4, xfs or btrfs filesystem to judge")
    return _result("R13", "pass", "; ".join(facts))


def _esp_mountpoint(g: Any, guest: _Guest, facts: _Facts, device: str) -> str | None:
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


def _check_fallback_loader(g: Any, guest: _Guest, facts: _Facts) -> CheckResult:
    esps = [f"{d.device}{p.number}" for d in facts.disks for p in d.partitions
            if p.type == ESP_GPT_TYPE or p.type in ESP_MBR_TYPES]
    if not esps:
        return _result("R14", "skip", R14_BIOS_SKIP)
    device = esps[0]
    mountpoint = _esp_mountpoint(g, guest, facts, device)
    if mountpoint is None:
        return _result("R14", "fail", f"EFI system partition {device} cannot be mounted")
    esp = f"ESP {device} (at {mountpoint})"
    efi = next((n for n in guest.ls(mountpoint) if n.lower() == "efi"), None)
    files: dict[str, int] = {}
    if efi:
        for sub in guest.ls(f"{mountpoint}/{efi}"):
            directory = f"{mountpoint}/{efi}/{sub}"
            for name, (mode, size) in guest.stat(directory, guest.ls(directory)).items():
                if _is_reg(mode):
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
                is_shim = SHIM_MARK in data
            if b"/boot/grub" in data and prefix_in is None:
                prefix_in = path
    status, evidence = judge_fallback_loader(esp, files, is_shim, prefix_in)
    return _result("R14", status, evidence)
