"""SUSE Linux Enterprise Server and openSUSE Leap (AutoYaST)."""

from __future__ import annotations

from dataclasses import dataclass

from distros import Distro, register


@dataclass(frozen=True)
class AddOn:
    """An AutoYaST add-on repository (`<add-on><add_on_products>` entry).

    `media_url` "relurl://" means the installation medium itself; `product_dir` the
    repository's directory on it; `product` the product it carries (None: a plain
    repository)."""

    name: str
    media_url: str
    product_dir: str = "/"
    product: str | None = None


class SuseLike(Distro):
    family = "suse"
    installer_kernel = "boot/x86_64/loader/linux"
    installer_initrd = "boot/x86_64/loader/initrd"
    answer_files = ("autoinst.xml",)
    answer_volume_label = "OEMDRV"
    agent_package = "python-azure-agent"
    agent_service = "waagent"
    grub_cmdline_key = "GRUB_CMDLINE_LINUX_DEFAULT"
    package_manager = "zypper"
    # Azure preparation facts (distros/azure_prep.py); UEFI reads /boot/grub2/grub.cfg too.
    package_query = "rpm"
    grub_mkconfig = "grub2-mkconfig"
    initrd_image = "/boot/initrd-{kernel}"
    initrd_lister = "lsinitrd"
    network_style = "wicked"
    cloud_init_network = False  # cloud-init mode leaves the NIC to wicked

    @property
    def install_products(self) -> tuple[str, ...]:
        """The products AutoYaST selects on a medium that carries several."""
        return ()

    @property
    def install_addons(self) -> tuple[AddOn, ...]:
        """The repositories added during the install (modules, the agent's repository)."""
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
