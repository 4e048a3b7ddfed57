"""The Debian family (`DebianLike`: apt, GRUB 2 with `update-grub` names, initramfs-tools)
and Debian itself (debian-installer preseed)."""

from __future__ import annotations

from types import MappingProxyType

from distros import STABLE_NIC_NAMES, Distro, register
from distros.facts import AddOn


class DebianLike(Distro):
    """What Debian and Ubuntu share: packages, boot loader, initrd and services."""

    installer_takes_iso_label = False
    azure_kernel_choice = False  # Ubuntu's linux-azure; Debian has no such choice
    registers_subscription = False
    base_packages = ("openssh-server", "sudo")
    keymaps = MappingProxyType({})  # the installers take X layout names
    # Azure preparation facts.
    package_manager = "apt"
    package_query = "dpkg"
    agent_service = "walinuxagent"
    agent_extra_packages = ()
    ssh_package = "openssh-server"
    ssh_service = "ssh"
    service_manager = "systemd"
    bootloader = "grub2"
    grub_cmdline_key = "GRUB_CMDLINE_LINUX_DEFAULT"
    grub_mkconfig = "grub-mkconfig"
    grub_config = "/boot/grub/grub.cfg"
    grub_config_uefi = "/boot/grub/grub.cfg"
    grubby = False
    initrd_tool = "initramfs-tools"
    initrd_image = "/boot/initrd.img-{kernel}"
    initrd_lister = "lsinitramfs"
    ifcfg_nm_controlled = True
    network_service = None
    remove_network_manager = False
    lis_check = False
    cloud_init_supported = True
    cloud_init_network = True  # cloud-init writes the NIC from Azure's metadata
    nm_unmanaged_sriov = False
    sshd_client_alive = False
    # openssh-server makes the host keys in its postinst only; ssh.service fails without.
    ssh_host_keygen = None
    recommended_packages = ()

    @property
    def agent_at_install(self) -> bool:
        return False

    @property
    def install_products(self) -> tuple[str, ...]:
        return ()

    @property
    def install_addons(self) -> tuple[AddOn, ...]:
        return ()


@register
class Debian(DebianLike):
    name = "debian"
    pretty_name = "Debian"
    family = "debian"
    versions = ("11", "12")
    installer_kernel = "install.amd/vmlinuz"
    installer_initrd = "install.amd/initrd.gz"
    answer_files = ("preseed.cfg",)
    answer_volume_label = None  # preseed.cfg is appended to the initrd as a cpio archive
    failure_patterns = (
        r"\[!!\]",
        r"(?i)Installation step failed",
        r"(?i)Failed to (load installer component|retrieve the preconfiguration file)",
        r"(?i)No (root file system|installable kernel) (is defined|was found)",
        r"(?i)Bad archive mirror",
        r"(?i)Downloading a file failed",
        r"(?i)Unable to install (GRUB|the selected kernel)",
    )
    agent_package = "waagent"
    network_style = "ifupdown"
    efi_vendor = "debian"

    def installer_args(self, iso_label: str | None) -> tuple[str, ...]:
        # d-i's initrd-preseed reads /preseed.cfg from the initrd root by itself.
        return ("auto=true", "priority=critical", STABLE_NIC_NAMES)
