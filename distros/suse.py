"""SUSE Linux Enterprise Server and openSUSE Leap (AutoYaST)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from distros import STABLE_NIC_NAMES, Distro, register
from distros.facts import AddOn

__all__ = ["AUTOYAST_KEYMAPS", "AddOn", "OpenSuseLeap", "Sles", "SuseLike"]

# AutoYaST's keymap names for the common X layouts (others are passed through).
AUTOYAST_KEYMAPS: Mapping[str, str] = MappingProxyType({
    "us": "english-us", "gb": "english-uk", "de": "german", "fr": "french",
    "es": "spanish", "it": "italian", "jp": "japanese", "ch": "swiss",
})


class SuseLike(Distro):
    """SLES and openSUSE Leap: zypper, GRUB 2, dracut, wicked."""

    family = "suse"
    installer_kernel = "boot/x86_64/loader/linux"
    installer_initrd = "boot/x86_64/loader/initrd"
    answer_files = ("autoinst.xml",)
    answer_volume_label = "OEMDRV"
    installer_takes_iso_label = False
    azure_kernel_choice = False
    registers_subscription = False  # the AutoYaST profile installs from the medium, unregistered
    failure_patterns = (
        r"(?i)Error while fetching the (AutoYaST )?(profile|control file)",
        r"(?i)AutoYaST.*(error|failed)",
        r"(?i)Error: Could not (read|parse) (the )?(control file|profile)",
        r"(?i)linuxrc.*(failed|error)",
        r"(?i)Package installation failed",
        r"Internal error\. Please report a bug report with logs",
    )
    # Named, not left to patterns: install_recommended=false drops what patterns recommend.
    base_packages = ("wicked", "openssh", "sudo")
    keymaps = AUTOYAST_KEYMAPS
    # Azure preparation facts; UEFI reads /boot/grub2/grub.cfg too.
    package_manager = "zypper"
    package_query = "rpm"
    agent_package = "python-azure-agent"
    agent_service = "waagent"
    agent_extra_packages = ()
    ssh_package = "openssh-server"
    ssh_service = "sshd"
    service_manager = "systemd"
    bootloader = "grub2"
    grub_cmdline_key = "GRUB_CMDLINE_LINUX_DEFAULT"
    grub_mkconfig = "grub2-mkconfig"
    grub_config = "/boot/grub2/grub.cfg"
    grub_config_uefi = "/boot/grub2/grub.cfg"
    grubby = False
    initrd_tool = "dracut"
    initrd_image = "/boot/initrd-{kernel}"
    initrd_lister = "lsinitrd"
    network_style = "wicked"
    ifcfg_nm_controlled = True
    network_service = None
    remove_network_manager = False
    lis_check = False
    cloud_init_supported = True
    cloud_init_network = False  # cloud-init mode leaves the NIC to wicked
    nm_unmanaged_sriov = False
    sshd_client_alive = False
    ssh_host_keygen = "/usr/sbin/sshd-gen-keys-start"  # sshd.service's ExecStartPre
    recommended_packages = ()

    def installer_args(self, iso_label: str | None) -> tuple[str, ...]:
        return ("autoyast=device:///autoinst.xml", "textmode=1", STABLE_NIC_NAMES)

    @property
    def install_products(self) -> tuple[str, ...]:
        return ()

    @property
    def install_addons(self) -> tuple[AddOn, ...]:
        return ()


@register
class Sles(SuseLike):
    name = "sles"
    pretty_name = "SUSE Linux Enterprise Server"
    efi_vendor = "sles"
    versions = ("12", "15")

    # SLE 15's Full medium: every module is a directory of the medium; base, openssh and
    # wicked are in Basesystem, the agent and cloud-init in Public Cloud, which needs
    # Server Applications.
    _MODULES = (
        AddOn("Basesystem Module", "relurl://", "/Module-Basesystem", "sle-module-basesystem"),
        AddOn("Server Applications Module", "relurl://", "/Module-Server-Applications",
              "sle-module-server-applications"),
        AddOn("Public Cloud Module", "relurl://", "/Module-Public-Cloud",
              "sle-module-public-cloud"),
    )

    @property
    def install_products(self) -> tuple[str, ...]:
        return ("SLES",) if self.major >= 15 else ()

    @property
    def install_addons(self) -> tuple[AddOn, ...]:
        # SLES 12's DVD is the SLES product alone; its Public Cloud module is online only.
        return self._MODULES if self.major >= 15 else ()

    @property
    def agent_at_install(self) -> bool:
        return self.major >= 15


@register
class OpenSuseLeap(SuseLike):
    name = "opensuse-leap"
    aliases = ("opensuse",)
    pretty_name = "openSUSE Leap"
    efi_vendor = "opensuse"
    versions = ("15",)

    @property
    def install_addons(self) -> tuple[AddOn, ...]:
        # The DVD holds a subset of the OSS repository that is not promised to include the
        # agent: the OSS repository itself is added ($releasever is libzypp's repository
        # variable, the installed release, when the template names no point release).
        release = "$releasever" if self.version.minor is None else str(self.version)
        url = f"http://download.opensuse.org/distribution/leap/{release}/repo/oss/"
        return (AddOn("openSUSE Leap OSS", url),)

    @property
    def agent_at_install(self) -> bool:
        return True
