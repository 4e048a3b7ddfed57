"""Ubuntu (Subiquity autoinstall)."""

from __future__ import annotations

from distros import Distro, register


@register
class Ubuntu(Distro):
    name = "ubuntu"
    pretty_name = "Ubuntu"
    family = "ubuntu"
    versions = ("20.04", "22.04", "24.04")
    installer_kernel = "casper/vmlinuz"
    installer_initrd = "casper/initrd"
    answer_files = ("user-data", "meta-data")
    answer_volume_label = "CIDATA"
    agent_package = "walinuxagent"
    agent_service = "walinuxagent"
    ssh_service = "ssh"
    grub_cmdline_key = "GRUB_CMDLINE_LINUX_DEFAULT"
    grub_config = "/boot/grub/grub.cfg"
    initrd_tool = "initramfs-tools"
    package_manager = "apt"
    # Azure preparation facts (distros/azure_prep.py).
    package_query = "dpkg"
    grub_mkconfig = "grub-mkconfig"
    initrd_image = "/boot/initrd.img-{kernel}"
    initrd_lister = "lsinitramfs"
    network_style = "netplan"
