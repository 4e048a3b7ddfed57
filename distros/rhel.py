"""RHEL and its rebuilds: CentOS, Rocky, AlmaLinux, Oracle Linux (Anaconda kickstart)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import ClassVar

from distros import STABLE_NIC_NAMES, Distro, register
from distros.facts import AddOn, PrepFacts


class RhelLike(Distro):
    """The RHEL family. The class attributes describe version 9; `prep_facts` adjusts
    them for 6, 7 and 8."""

    family = "rhel"
    installer_kernel = "images/pxeboot/vmlinuz"
    installer_initrd = "images/pxeboot/initrd.img"
    answer_files = ("ks.cfg",)
    answer_volume_label = "OEMDRV"
    installer_takes_iso_label = True  # inst.stage2=hd:LABEL=... (see installer_args)
    azure_kernel_choice = False
    registers_subscription = False  # RHEL itself only (below)
    failure_patterns = (
        r"Traceback \(most recent call last\)",
        r"[Aa]n unknown error has occurr?ed",
        r"(?i)kickstart (file )?(error|is missing required)",
        r"(?i)The following (error|problem) occurred on line \d+ of the kickstart file",
        r"anaconda.*(crashed|exception)",
        r"(?i)Error (populating|processing) transaction",
        r"(?i)Unable to read package metadata",
        r"dracut-initqueue.*(timeout|Could not boot)",
        r"dracut Warning: Could not boot",
    )
    base_packages = ("openssh-server", "sudo")
    keymaps = MappingProxyType({})  # Anaconda takes X layout names
    # Kickstart command syntax version understood by pykickstart, per major version.
    kickstart_versions: ClassVar[dict[int, str]] = {6: "RHEL6", 7: "RHEL7", 8: "RHEL8", 9: "RHEL9"}

    # Azure preparation facts of version 9 (Microsoft's RHEL guides).
    package_manager = "dnf"
    package_query = "rpm"
    agent_package = "WALinuxAgent"
    agent_service = "waagent"
    agent_extra_packages = ()
    ssh_package = "openssh-server"
    ssh_service = "sshd"
    service_manager = "systemd"
    bootloader = "grub2"
    grub_cmdline_key = "GRUB_CMDLINE_LINUX"
    grub_mkconfig = "grub2-mkconfig"
    grub_config = "/boot/grub2/grub.cfg"
    grub_config_uefi = "/boot/grub2/grub.cfg"  # 9: the EFI grub.cfg is a stub that reads it
    grubby = True  # BLS entries
    initrd_tool = "dracut"
    initrd_image = "/boot/initramfs-{kernel}.img"
    initrd_lister = "lsinitrd"
    network_style = "keyfile"  # NetworkManager keyfile for eth0
    ifcfg_nm_controlled = True
    network_service = None
    remove_network_manager = False
    efi_vendor = "redhat"  # /boot/efi/EFI/<vendor>/
    lis_check = False
    cloud_init_supported = True
    cloud_init_network = False  # cloud-init mode: Microsoft's guide leaves the NIC to NM
    nm_unmanaged_sriov = True
    sshd_client_alive = True
    # sshd.service wants sshd-keygen.target, which wants one of these per key type (8+).
    ssh_host_keygen = "/usr/lib/systemd/system/sshd-keygen@.service"
    recommended_packages = ("hyperv-daemons",)  # the Hyper-V daemons: KVP, VSS, file copy
    # The DVD's AppStream (8 and later) carries WALinuxAgent and cloud-init.
    agent_in_appstream: ClassVar[bool] = True

    @property
    def kickstart_version(self) -> str:
        return self.kickstart_versions[self.major]

    def installer_args(self, iso_label: str | None) -> tuple[str, ...]:
        if self.major <= 6:
            return ("ks=hd:LABEL=OEMDRV:/ks.cfg", "text", STABLE_NIC_NAMES)
        # Anaconda finds its stage 2 image on the ISO by label; dracut reads LABEL= values
        # with udev's escaping, where a space is \x20.
        stage2: tuple[str, ...] = ()
        if iso_label:
            stage2 = ("inst.stage2=hd:LABEL=" + iso_label.replace(" ", "\\x20"),)
        return ("inst.ks=hd:LABEL=OEMDRV:/ks.cfg", *stage2, "inst.text", STABLE_NIC_NAMES)

    @property
    def agent_at_install(self) -> bool:
        return self.major >= 8 and self.agent_in_appstream

    @property
    def install_products(self) -> tuple[str, ...]:
        return ()

    @property
    def install_addons(self) -> tuple[AddOn, ...]:
        return ()

    def prep_facts(self) -> PrepFacts:
        """6: legacy GRUB, mkinitrd, SysV, no NetworkManager; 7: ifcfg files; 8: grubby
        and NetworkManager reading ifcfg; 9: grubby, keyfiles, one grub.cfg for BIOS and UEFI."""
        facts = super().prep_facts()
        efi = f"/boot/efi/EFI/{self.efi_vendor}"
        if self.major <= 7:
            # Microsoft's guides: NetworkManager ignores the Accelerated Networking VFs
            # from 8 on (and on every Oracle Linux: its own prep_facts).
            facts = replace(facts, grubby=False, nm_unmanaged_sriov=False)
        if self.major <= 6:
            return replace(
                facts, package_manager="yum", service_manager="sysv", bootloader="grub-legacy",
                grub_config_bios="/boot/grub/grub.conf", grub_config_uefi=f"{efi}/grub.conf",
                initrd_tool="mkinitrd", agent_extra_packages=("python-pyasn1",),
                network="ifcfg", ifcfg_nm_controlled=False, network_service="network",
                remove_network_manager=True, lis_check=True, cloud_init_supported=False,
                recommended_packages=(),
                # The init script's start makes every missing key before sshd runs.
                ssh_host_keygen="/etc/rc.d/init.d/sshd",
            )
        if self.major == 7:
            return replace(
                facts, package_manager="yum", grub_config_uefi=f"{efi}/grub.cfg",
                agent_extra_packages=("python-pyasn1",), network="ifcfg",
                ifcfg_nm_controlled=False, network_service="network",
                ssh_host_keygen="/usr/lib/systemd/system/sshd-keygen.service",  # one unit
            )
        if self.major == 8:
            return replace(facts, grub_config_uefi=f"{efi}/grub.cfg", network="ifcfg")
        return facts


@register
class Rhel(RhelLike):
    name = "rhel"
    pretty_name = "Red Hat Enterprise Linux"
    registers_subscription = True  # install.rhel_activation_key: rhsm in the kickstart
    versions = ("6", "7", "8", "9")


@register
class CentOS(RhelLike):
    name = "centos"
    pretty_name = "CentOS"
    versions = ("6", "7", "stream8", "stream9")
    efi_vendor = "centos"


@register
class Rocky(RhelLike):
    name = "rocky"
    pretty_name = "Rocky Linux"
    versions = ("8", "9")
    efi_vendor = "rocky"


@register
class Alma(RhelLike):
    name = "almalinux"
    aliases = ("alma",)
    pretty_name = "AlmaLinux"
    versions = ("8", "9")
    efi_vendor = "almalinux"


@register
class Oracle(RhelLike):
    name = "oracle"
    aliases = ("oraclelinux", "ol")
    pretty_name = "Oracle Linux"
    versions = ("7", "8", "9")
    # Oracle ships WALinuxAgent in its online add-ons repository, not on the DVD; an
    # installed Oracle Linux lists that repository but leaves it disabled.
    agent_in_appstream = False

    def prep_facts(self) -> PrepFacts:
        # Microsoft's Oracle guide has NetworkManager ignore the Accelerated Networking VFs
        # on every release, 7 included.
        return replace(super().prep_facts(), nm_unmanaged_sriov=True,
                       agent_repository=f"ol{self.major}_addons")
