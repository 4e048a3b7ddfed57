"""Value types the distro plugins fill in: the Azure preparation's facts and AutoYaST add-ons.

They live here, beside the plugins and apart from the renderers, so that a plugin module
needs nothing from the engine to say what it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrepFacts:
    """Everything the preparation scripts need to know about one distro version
    (`Distro.prep_facts()`; every field is given explicitly by the plugin)."""

    family: str
    label: str
    package_manager: str  # apt | dnf | yum | zypper
    package_query: str  # dpkg | rpm
    agent_package: str
    agent_service: str
    agent_extra_packages: tuple[str, ...]  # e.g. pyasn1 for old agents
    ssh_package: str
    ssh_service: str
    service_manager: str  # systemd | sysv
    bootloader: str  # grub2 | grub-legacy
    grub_cmdline_key: str
    grub_mkconfig: str  # grub2-mkconfig | grub-mkconfig
    grub_config_bios: str
    grub_config_uefi: str
    grubby: bool  # BLS entries: kernel arguments also through grubby (RHEL 8+)
    initrd_tool: str  # dracut | mkinitrd | initramfs-tools
    initrd_image: str  # path of a kernel's initrd, "{kernel}" stands for the version
    initrd_lister: str  # lsinitrd | lsinitramfs
    network: str  # ifcfg | keyfile | ifupdown | netplan | wicked
    ifcfg_nm_controlled: bool  # ifcfg-eth0 NM_CONTROLLED= (network style ifcfg)
    network_service: str | None  # a service to enable for the network (RHEL 6/7: network)
    remove_network_manager: bool  # the distro's guidance says NetworkManager must go
    lis_check: bool  # RHEL 6.0-6.3 need the LIS drivers (R06)
    cloud_init_supported: bool
    efi_vendor: str  # the ESP's EFI/<vendor> directory of the distro's boot loader (R14)
    # cloud-init mode: let cloud-init write the NIC's configuration from Azure's metadata
    # (Ubuntu, Debian) or leave it to NetworkManager/wicked (RHEL family, SUSE).
    cloud_init_network: bool
    # NetworkManager must ignore Accelerated Networking's Mellanox VFs (RHEL 8/9, Oracle).
    nm_unmanaged_sriov: bool
    sshd_client_alive: bool  # ClientAliveInterval 180 (Microsoft's RHEL guides)
    # R15: the file that makes missing SSH host keys when sshd starts (RHEL's sshd-keygen
    # units, SUSE's sshd-gen-keys-start), None where sshd starts without keys and fails
    # (Debian, Ubuntu): the preparation then installs a unit that makes them first.
    ssh_host_keygen: str | None
    recommended_packages: tuple[str, ...]  # e.g. hyperv-daemons on the RHEL family
    # R08: a yum/dnf repository the installed system leaves disabled that carries the agent
    # (Oracle's ol<N>_addons): the preparation enables it, as the distro's Azure guide does.
    agent_repository: str | None = None


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
