"""Parsers of the guest's files (fstab, /etc/default/grub, grub.cfg, BLS entries,
waagent.conf, cloud.cfg, shadow, dpkg status, initrd and module names): text in, values
out, nothing judged. Unit-tested on real-world text (tests/test_guest_checks_parse.py)."""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from builder.image.initrd_list import module_name
from builder.requirements import INITRAMFS_TOOLS_INIT


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


def shadow_password_field(shadow: str, user: str) -> str | None:
    for line in shadow.splitlines():
        parts = line.split(":")
        if len(parts) >= 2 and parts[0] == user:
            return parts[1]
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
