"""SUSE Linux Enterprise Server and openSUSE Leap (AutoYaST)."""

from __future__ import annotations

from distros import Distro, register


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


@register
class Sles(SuseLike):
    name = "sles"
    pretty_name = "SUSE Linux Enterprise Server"
    efi_vendor = "sles"
    versions = ("12", "15")


@register
class OpenSuseLeap(SuseLike):
    name = "opensuse-leap"
    aliases = ("opensuse",)
    pretty_name = "openSUSE Leap"
    efi_vendor = "opensuse"
    versions = ("15",)
