"""Debian."""

from __future__ import annotations

from distros import Distro, register


@register
class Debian(Distro):
    name = "debian"
    pretty_name = "Debian"
    family = "debian"
    versions = ("11", "12")
    installer_kernel = "install.amd/vmlinuz"
    installer_initrd = "install.amd/initrd.gz"
    answer_files = ("preseed.cfg",)
    answer_volume_label = None  # preseed.cfg is appended to the initrd as a cpio archive
    agent_package = "waagent"
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
    network_style = "ifupdown"
