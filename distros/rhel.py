"""RHEL and its rebuilds: CentOS, Rocky, AlmaLinux, Oracle Linux."""

from __future__ import annotations

from typing import ClassVar

from distros import Distro, register


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


@register
class Rocky(RhelLike):
    name = "rocky"
    pretty_name = "Rocky Linux"
    versions = ("8", "9")


@register
class Alma(RhelLike):
    name = "almalinux"
    aliases = ("alma",)
    pretty_name = "AlmaLinux"
    versions = ("8", "9")


@register
class Oracle(RhelLike):
    name = "oracle"
    aliases = ("oraclelinux", "ol")
    pretty_name = "Oracle Linux"
    versions = ("7", "8", "9")
