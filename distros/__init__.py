"""Distro plugins: facts as class attributes, behaviour as a few methods.

A plugin describes one distribution; it never runs anything. The registry maps
the template's `distro.name` to its class, and each class knows the versions
azbuild supports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class DistroVersion:
    """A supported version: `major` is the key in `versions`, `minor` an optional point release."""

    major: str
    minor: int | None = None

    def __str__(self) -> str:
        return self.major if self.minor is None else f"{self.major}.{self.minor}"


class Distro:
    """Base class of every distro plugin."""

    name: ClassVar[str]
    pretty_name: ClassVar[str]
    family: ClassVar[str]  # "rhel", "ubuntu", "debian" or "suse"
    versions: ClassVar[tuple[str, ...]]
    aliases: ClassVar[tuple[str, ...]] = ()

    # Installer media (paths inside the ISO) and the answer file.
    installer_kernel: ClassVar[str]
    installer_initrd: ClassVar[str]
    answer_files: ClassVar[tuple[str, ...]]
    answer_volume_label: ClassVar[str | None] = None  # OEMDRV, CIDATA, or None (initrd injection)

    # Azure preparation facts (AZURE-REQUIREMENTS.md per-family table).
    agent_package: ClassVar[str]
    agent_service: ClassVar[str]
    ssh_package: ClassVar[str] = "openssh-server"
    ssh_service: ClassVar[str] = "sshd"
    grub_cmdline_key: ClassVar[str] = "GRUB_CMDLINE_LINUX"
    grub_config: ClassVar[str] = "/boot/grub2/grub.cfg"
    initrd_tool: ClassVar[str] = "dracut"  # dracut | mkinitrd | initramfs-tools
    package_manager: ClassVar[str]

    def __init__(self, version: DistroVersion) -> None:
        self.version = version

    @property
    def major(self) -> int:
        """The numeric major version (stream9 -> 9, 24.04 -> 24)."""
        digits = re.search(r"\d+", self.version.major)
        return int(digits.group()) if digits else 0

    @property
    def agent_at_install(self) -> bool:
        """Whether the unattended install itself puts in the agent (and cloud-init) from the
        installer's repositories, so that the preparation only checks them (R08, R10)."""
        return False

    @property
    def label(self) -> str:
        return f"{self.pretty_name} {self.version}"

    @classmethod
    def parse_version(cls, text: str) -> DistroVersion:
        """Accept a supported version, optionally with a point release ('9.4', '6.3', '24.04.1')."""
        text = str(text).strip().lower()
        if text in cls.versions:
            return DistroVersion(text)
        for major in sorted(cls.versions, key=len, reverse=True):
            rest = text[len(major):]
            if text.startswith(major) and re.fullmatch(r"[.-](sp)?\d+", rest):
                return DistroVersion(major, int(re.sub(r"\D", "", rest)))
        raise ValueError(
            f"unsupported {cls.pretty_name} version {text!r}; supported: "
            + ", ".join(cls.versions)
        )


_REGISTRY: dict[str, type[Distro]] = {}


def register(cls: type[Distro]) -> type[Distro]:
    for key in (cls.name, *cls.aliases):
        _REGISTRY[key] = cls
    return cls


def all_distros() -> list[type[Distro]]:
    _load_plugins()
    seen: dict[str, type[Distro]] = {}
    for cls in _REGISTRY.values():
        seen.setdefault(cls.name, cls)
    return list(seen.values())


def lookup(name: str) -> type[Distro]:
    _load_plugins()
    try:
        return _REGISTRY[name.strip().lower()]
    except KeyError:
        names = ", ".join(cls.name for cls in all_distros())
        raise ValueError(f"unknown distro {name!r}; supported: {names}") from None


def resolve(name: str, version: str) -> Distro:
    cls = lookup(name)
    return cls(cls.parse_version(version))


def _load_plugins() -> None:
    # Importing the family modules registers their classes.
    from distros import debian, rhel, suse, ubuntu  # noqa: F401
