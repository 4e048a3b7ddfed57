"""Distro plugins: facts as class attributes, behaviour as a few methods.

A plugin describes one distribution; it never runs anything. The registry maps
the template's `distro.name` to its class, and each class knows the versions
azbuild supports. The families' bases are `DebianLike` (distros/debian.py),
`RhelLike` (distros/rhel.py) and `SuseLike` (distros/suse.py); adding a distro is
one module here plus its answer-file templates in distros/answers/.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from distros.facts import AddOn, PrepFacts


@dataclass(frozen=True)
class DistroVersion:
    """A supported version: `major` is the key in `versions`, `minor` an optional point release."""

    major: str
    minor: int | None = None

    def __str__(self) -> str:
        return self.major if self.minor is None else f"{self.major}.{self.minor}"


class Distro(ABC):
    """Base class of every distro plugin: each fact below is declared here without a value
    and set by every family (tests/test_distro_plugins.py checks that none is left unset).

    Class attributes hold what is fixed for a class; a family whose versions differ adjusts
    them in its methods (the RHEL family's `prep_facts`). Nothing here runs anything.
    """

    # Identity.
    name: ClassVar[str]
    pretty_name: ClassVar[str]
    family: ClassVar[str]  # "rhel", "ubuntu", "debian" or "suse"
    versions: ClassVar[tuple[str, ...]]
    aliases: ClassVar[tuple[str, ...]] = ()

    # The installer: kernel and initrd paths inside the ISO, the answer files (each rendered
    # from distros/answers/<name>.j2, the first one replaceable by install.answer_file), and
    # how they reach it: on a volume with this label, or None to append them to the initrd.
    installer_kernel: ClassVar[str]
    installer_initrd: ClassVar[str]
    answer_files: ClassVar[tuple[str, ...]]
    answer_volume_label: ClassVar[str | None]
    # Whether the installer is told the ISO's volume label (Anaconda finds its stage 2 image
    # by it): the build then reads the label to pass it to `installer_args`.
    installer_takes_iso_label: ClassVar[bool]
    # Whether install.ubuntu_kernel applies: the installer can put in the Azure-tuned kernel.
    azure_kernel_choice: ClassVar[bool]
    # Whether install.rhel_activation_key/rhel_organization apply: the kickstart registers
    # the system with Red Hat Subscription Management.
    registers_subscription: ClassVar[bool]
    # Serial-console lines (regular expressions) that mean the install failed and waits.
    failure_patterns: ClassVar[tuple[str, ...]]
    # What every install needs for the build to reach and drive the guest over SSH.
    base_packages: ClassVar[tuple[str, ...]]
    # The installer's keymap names for X layouts; a layout not listed is passed as it is.
    keymaps: ClassVar[Mapping[str, str]]

    # Azure preparation facts (AZURE-REQUIREMENTS.md per-family table), copied into
    # PrepFacts by `prep_facts` (see distros/facts.py for each one's meaning).
    package_manager: ClassVar[str]
    package_query: ClassVar[str]
    agent_package: ClassVar[str]
    agent_service: ClassVar[str]
    agent_extra_packages: ClassVar[tuple[str, ...]]
    ssh_package: ClassVar[str]
    ssh_service: ClassVar[str]
    service_manager: ClassVar[str]
    bootloader: ClassVar[str]
    grub_cmdline_key: ClassVar[str]
    grub_mkconfig: ClassVar[str]
    grub_config: ClassVar[str]  # read by BIOS boots
    grub_config_uefi: ClassVar[str]  # read by UEFI boots
    grubby: ClassVar[bool]
    initrd_tool: ClassVar[str]
    initrd_image: ClassVar[str]
    initrd_lister: ClassVar[str]
    network_style: ClassVar[str]
    ifcfg_nm_controlled: ClassVar[bool]
    network_service: ClassVar[str | None]
    remove_network_manager: ClassVar[bool]
    efi_vendor: ClassVar[str]
    # Requirement parameters: how R06 and R10 apply, and what the distro's Azure guide adds.
    lis_check: ClassVar[bool]  # R06: the LIS drivers must be installed
    cloud_init_supported: ClassVar[bool]  # R10: cloud-init provisioning is possible
    cloud_init_network: ClassVar[bool]  # R10: cloud-init writes the NIC's configuration
    nm_unmanaged_sriov: ClassVar[bool]  # NetworkManager ignores Accelerated Networking's VFs
    sshd_client_alive: ClassVar[bool]  # sshd keep-alives (ClientAliveInterval 180)
    # R15: the distro's own file that makes missing SSH host keys when sshd starts, or
    # None where nothing does (then the preparation installs a unit that does).
    ssh_host_keygen: ClassVar[str | None]
    recommended_packages: ClassVar[tuple[str, ...]]  # installed by the install and the prep

    def __init__(self, version: DistroVersion) -> None:
        self.version = version

    @property
    def major(self) -> int:
        """The numeric major version (stream9 -> 9, 24.04 -> 24)."""
        digits = re.search(r"\d+", self.version.major)
        return int(digits.group()) if digits else 0

    @property
    def label(self) -> str:
        return f"{self.pretty_name} {self.version}"

    @abstractmethod
    def installer_args(self, iso_label: str | None) -> tuple[str, ...]:
        """The installer's own kernel arguments for an unattended install (the serial console
        and the template's arguments follow them). `iso_label` is the installer ISO's volume
        label when it is known."""

    @property
    @abstractmethod
    def agent_at_install(self) -> bool:
        """Whether the unattended install itself puts in the agent (and cloud-init) from the
        installer's repositories, so that the preparation only checks them (R08, R10)."""

    @property
    @abstractmethod
    def install_products(self) -> tuple[str, ...]:
        """The products the installer selects on a medium that carries several."""

    @property
    @abstractmethod
    def install_addons(self) -> tuple[AddOn, ...]:
        """The repositories added during the install (modules, the agent's repository)."""

    def prep_facts(self) -> PrepFacts:
        """The facts the Azure preparation scripts are written from."""
        return PrepFacts(
            family=self.family,
            label=self.label,
            package_manager=self.package_manager,
            package_query=self.package_query,
            agent_package=self.agent_package,
            agent_service=self.agent_service,
            agent_extra_packages=self.agent_extra_packages,
            ssh_package=self.ssh_package,
            ssh_service=self.ssh_service,
            service_manager=self.service_manager,
            bootloader=self.bootloader,
            grub_cmdline_key=self.grub_cmdline_key,
            grub_mkconfig=self.grub_mkconfig,
            grub_config_bios=self.grub_config,
            grub_config_uefi=self.grub_config_uefi,
            grubby=self.grubby,
            initrd_tool=self.initrd_tool,
            initrd_image=self.initrd_image,
            initrd_lister=self.initrd_lister,
            network=self.network_style,
            ifcfg_nm_controlled=self.ifcfg_nm_controlled,
            network_service=self.network_service,
            remove_network_manager=self.remove_network_manager,
            lis_check=self.lis_check,
            cloud_init_supported=self.cloud_init_supported,
            efi_vendor=self.efi_vendor,
            cloud_init_network=self.cloud_init_network,
            nm_unmanaged_sriov=self.nm_unmanaged_sriov,
            sshd_client_alive=self.sshd_client_alive,
            ssh_host_keygen=self.ssh_host_keygen,
            recommended_packages=self.recommended_packages,
        )

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


# Interface names as the installed system will see them (R07 adds it to the bootloader):
# the installer must name the NIC the same way, or its network setup names a NIC that
# the installed system does not have (d-i's allow-hotplug ens16, Anaconda's profile).
# Anaconda also carries it into the installed bootloader; AutoYaST's keep_install_network
# copies the installer's ifcfg file.
STABLE_NIC_NAMES = "net.ifnames=0"


_REGISTRY: dict[str, type[Distro]] = {}


def unset_facts(cls: type[Distro]) -> list[str]:
    """The facts declared on `Distro` that `cls` leaves without a value, then the abstract
    methods it leaves unimplemented: what a new plugin still has to say."""
    defined = {name for klass in cls.__mro__ for name in vars(klass)}
    missing = [name for name in Distro.__annotations__ if name not in defined]
    return missing + sorted(f"{name}()" for name in cls.__abstractmethods__)


def register(cls: type[Distro]) -> type[Distro]:
    """Class decorator: make `cls` a template's `distro.name` (and its aliases). A class
    that leaves a fact unset is refused here, when its module is imported."""
    if missing := unset_facts(cls):
        raise TypeError(f"distro plugin {cls.__name__} does not set: {', '.join(missing)}")
    for key in (cls.name, *cls.aliases):
        _REGISTRY[key] = cls
    return cls


def all_distros() -> list[type[Distro]]:
    """Every registered class once: by module name, then in the order the module defines
    them (whichever module was imported first)."""
    _load_plugins()
    seen: dict[str, type[Distro]] = {}
    for cls in _REGISTRY.values():
        seen.setdefault(cls.name, cls)
    return sorted(seen.values(), key=lambda cls: cls.__module__)


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


# The module of this package that holds no plugin: the shared value types.
_NOT_PLUGINS = frozenset({"facts"})


def _load_plugins() -> None:
    # Importing a plugin module registers its classes: every module of this package but
    # the one above is one, in name order (the order `azbuild distros` lists them in).
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_PLUGINS:
            importlib.import_module(f"{__name__}.{module.name}")
