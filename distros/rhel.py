"""RHEL and its rebuilds: CentOS, Rocky, AlmaLinux, Oracle Linux."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from distros import Distro, register

if TYPE_CHECKING:
    from distros.azure_prep import PrepFacts


class RhelLike(Distro):
    family = "rhel"
    installer_kernel = "images/pxeboot/vmlinuz"
    installer_initrd = "images/pxeboot/initrd.img"
    answer_files = ("ks.cfg",)
    answer_volume_label = "OEMDRV"
    agent_package = "WALinuxAgent"
    agent_service = "waagent"
    package_manager = "dnf"
    # Kickstart command syntax version understood by pykickstart, per major version.
    kickstart_versions: ClassVar[dict[int, str]] = {6: "RHEL6", 7: "RHEL7", 8: "RHEL8", 9: "RHEL9"}

    @property
    def kickstart_version(self) -> str:
        return self.kickstart_versions[self.major]

    # Azure preparation facts (distros/azure_prep.py); versions adjust them below.
    package_query: ClassVar[str] = "rpm"
    grub_mkconfig: ClassVar[str] = "grub2-mkconfig"
    efi_vendor: ClassVar[str] = "redhat"  # /boot/efi/EFI/<vendor>/
    initrd_image: ClassVar[str] = "/boot/initramfs-{kernel}.img"
    initrd_lister: ClassVar[str] = "lsinitrd"
    network_style: ClassVar[str] = "keyfile"  # NetworkManager keyfile for eth0
    # The DVD's AppStream (8 and later) carries WALinuxAgent and cloud-init.
    agent_in_appstream: ClassVar[bool] = True
    # cloud-init mode: Microsoft's guide leaves the NIC to NetworkManager.
    cloud_init_network: ClassVar[bool] = False

    @property
    def agent_at_install(self) -> bool:
        return self.major >= 8 and self.agent_in_appstream

    def adjust_azure_prep(self, facts: PrepFacts) -> PrepFacts:
        """6: legacy GRUB, mkinitrd, SysV, no NetworkManager; 7: ifcfg files; 8: grubby
        and NetworkManager reading ifcfg; 9: grubby, keyfiles, one grub.cfg for BIOS and UEFI."""
        efi = f"/boot/efi/EFI/{self.efi_vendor}"
        # Microsoft's RHEL guides: sshd keep-alives; the Hyper-V daemons (KVP, VSS, file
        # copy) from 7 on; NetworkManager ignoring the Accelerated Networking VFs on 8+
        # and on Oracle Linux.
        facts = replace(facts, sshd_client_alive=True,
                        nm_unmanaged_sriov=self.major >= 8 or self.name == "oracle",
                        recommended_packages=("hyperv-daemons",) if self.major >= 7 else ())
        if self.major <= 6:
            return replace(
                facts, package_manager="yum", service_manager="sysv", bootloader="grub-legacy",
                grub_config_bios="/boot/grub/grub.conf", grub_config_uefi=f"{efi}/grub.conf",
                initrd_tool="mkinitrd", agent_extra_packages=("python-pyasn1",),
                network="ifcfg", ifcfg_nm_controlled=False, network_service="network",
                remove_network_manager=True, lis_check=True, cloud_init_supported=False,
            )
        if self.major == 7:
            return replace(
                facts, package_manager="yum", grub_config_uefi=f"{efi}/grub.cfg",
                agent_extra_packages=("python-pyasn1",), network="ifcfg",
                ifcfg_nm_controlled=False, network_service="network",
            )
        if self.major == 8:
            return replace(facts, grub_config_uefi=f"{efi}/grub.cfg", grubby=True,
                           network="ifcfg")
        return replace(facts, grubby=True)


@register
class Rhel(RhelLike):
    name = "rhel"
    pretty_name = "Red Hat Enterprise Linux"
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
    # Oracle ships WALinuxAgent in its online add-on repositories, not on the DVD; an
    # installed Oracle Linux has those public repositories, where the preparation finds it.
    agent_in_appstream = False
