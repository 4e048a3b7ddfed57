"""Ubuntu (Subiquity autoinstall)."""

from __future__ import annotations

from distros import register
from distros.debian import DebianLike


@register
class Ubuntu(DebianLike):
    name = "ubuntu"
    pretty_name = "Ubuntu"
    family = "ubuntu"
    versions = ("20.04", "22.04", "24.04")
    installer_kernel = "casper/vmlinuz"
    installer_initrd = "casper/initrd"
    answer_files = ("user-data", "meta-data")
    answer_volume_label = "CIDATA"
    azure_kernel_choice = True  # install.ubuntu_kernel = "azure": linux-azure
    failure_patterns = (
        r"(?i)autoinstall config did not validate",
        r"(?i)Malformed autoinstall",
        r"(?i)finish: subiquity/\S+: FAIL",
        r"(?i)An error occurred\. Press enter to start a shell",
        r"(?i)subiquity.*Traceback",
        r"curtin command \w+.*(failed|error)",
        r"Traceback \(most recent call last\)",
    )
    agent_package = "walinuxagent"
    network_style = "netplan"
    efi_vendor = "ubuntu"

    def installer_args(self, iso_label: str | None) -> tuple[str, ...]:
        return ("autoinstall", "ds=nocloud")
