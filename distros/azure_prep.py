"""Azure preparation as generated shell scripts (requirements R03-R14).

`prep_scripts()` turns a distro plugin and the template's `[azure]` settings
into three bash scripts that the pipeline uploads and runs in the guest:

* `azure-prep.sh`: idempotent fixes, run as root after the user's provisioners;
* `azure-check.sh`: read-only verification, one line per requirement;
* `deprovision.sh`: the final detached root script that generalises the guest
  and powers it off.

Distro differences are data: `PrepFacts` collects the facts the scripts need
from the distro plugin's class attributes, and a family module may adjust them
per version with a small `adjust_azure_prep(facts) -> facts` method (RHEL 6 uses
legacy GRUB and SysV services, RHEL 8+ grubby, and so on). The scripts are
rendered from the Jinja2 templates in `distros/prep/`; nothing here runs
anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import jinja2

from builder.errors import UsageError
from distros import Distro
from distros.quoting import shell_quote

if TYPE_CHECKING:
    from builder.models import Azure

SCRIPT_NAMES = ("azure-prep.sh", "azure-check.sh", "deprovision.sh")
# The drop-in the engine may add to reach the guest; deprovision.sh removes it (R12).
BUILD_SSHD_DROPIN = "/etc/ssh/sshd_config.d/90-azbuild.conf"
# cloud-init configuration written in cloud-init mode (R10); sorts after distro files.
CLOUD_INIT_DROPIN = "/etc/cloud/cloud.cfg.d/91-azbuild-azure.cfg"

Firmware = Literal["bios", "uefi"]

# The template's models check the same patterns at load time (builder.models); these
# checks stay as the scripts' own guard.
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Kernel arguments go inside a double-quoted /etc/default/grub value and into sed-free
# bash arrays: plain printable words only.
KARG_RE = re.compile(r"^[A-Za-z0-9_.,:=+/@-]+$")
MODULE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]*$")
# initramfs-tools' init runs `sleep "$ROOTDELAY"` before it looks for the root device: on
# those families every rootdelay is removed (R07); "rootdelay=*" is matched as a pattern.
ROOTDELAY_PATTERN = "rootdelay=*"


@dataclass(frozen=True)
class PrepFacts:
    """Everything the preparation scripts need to know about one distro version."""

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
    cloud_init_network: bool = True
    # NetworkManager must ignore Accelerated Networking's Mellanox VFs (RHEL 8/9, Oracle).
    nm_unmanaged_sriov: bool = False
    sshd_client_alive: bool = False  # ClientAliveInterval 180 (Microsoft's RHEL guides)
    recommended_packages: tuple[str, ...] = ()  # e.g. hyperv-daemons on the RHEL family


def _fact(distro: Distro, name: str, default: Any = None) -> Any:
    value = getattr(distro, name, default)
    if value is None and default is None:
        raise TypeError(f"{type(distro).__name__} lacks the Azure preparation fact {name!r}")
    return value


def prep_facts(distro: Distro) -> PrepFacts:
    """The facts of `distro`: its class attributes, then its version adjustments."""
    facts = PrepFacts(
        family=distro.family,
        label=distro.label,
        package_manager=distro.package_manager,
        package_query=str(_fact(distro, "package_query")),
        agent_package=distro.agent_package,
        agent_service=distro.agent_service,
        agent_extra_packages=tuple(_fact(distro, "agent_extra_packages", ())),
        ssh_package=distro.ssh_package,
        ssh_service=distro.ssh_service,
        service_manager=str(_fact(distro, "service_manager", "systemd")),
        bootloader=str(_fact(distro, "bootloader", "grub2")),
        grub_cmdline_key=distro.grub_cmdline_key,
        grub_mkconfig=str(_fact(distro, "grub_mkconfig")),
        grub_config_bios=distro.grub_config,
        grub_config_uefi=str(_fact(distro, "efi_grub_config", distro.grub_config)),
        grubby=bool(_fact(distro, "grubby", False)),
        initrd_tool=distro.initrd_tool,
        initrd_image=str(_fact(distro, "initrd_image")),
        initrd_lister=str(_fact(distro, "initrd_lister")),
        network=str(_fact(distro, "network_style")),
        ifcfg_nm_controlled=bool(_fact(distro, "ifcfg_nm_controlled", True)),
        network_service=_fact(distro, "network_service", "") or None,
        remove_network_manager=bool(_fact(distro, "remove_network_manager", False)),
        lis_check=False,
        cloud_init_supported=True,
        efi_vendor=str(_fact(distro, "efi_vendor", distro.name)),
        cloud_init_network=bool(_fact(distro, "cloud_init_network", True)),
    )
    adjust = getattr(distro, "adjust_azure_prep", None)
    if callable(adjust):
        facts = adjust(facts)
        if not isinstance(facts, PrepFacts):
            raise TypeError(f"{type(distro).__name__}.adjust_azure_prep must return PrepFacts")
    return facts


def _yn(value: bool) -> str:
    return "y" if value else "n"


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("distros", "prep"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # shell scripts, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # `${#array[@]}` is common bash; keep Jinja comments out of its way.
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["shquote"] = shell_quote
    return env


def _validate(distro: Distro, azure: Azure, facts: PrepFacts, firmware: str,
              build_user: str) -> None:
    problems: list[str] = []
    if firmware not in ("bios", "uefi"):
        problems.append(f"firmware must be 'bios' or 'uefi', found {firmware!r}")
    if not USER_RE.match(build_user) or build_user == "root":
        problems.append(f"build user {build_user!r} is not a removable login name")
    for arg in (*azure.kernel_args_add, *azure.kernel_args_remove):
        if not KARG_RE.match(arg):
            problems.append(f"kernel argument {arg!r} has characters azbuild cannot quote safely")
    for module in azure.hyperv_modules:
        if not MODULE_RE.match(module):
            problems.append(f"module name {module!r} is not a kernel module name")
    mount = azure.agent.resource_disk_mount_point
    if not PATH_RE.match(mount):
        problems.append(f"resource disk mount point {mount!r} must be a plain absolute path")
    if azure.agent.swap_size % (1024 * 1024):
        problems.append("azure.agent.swap_size must be a whole number of MiB")
    if azure.provisioning == "cloud-init" and not facts.cloud_init_supported:
        problems.append(f"cloud-init provisioning is not supported on {distro.label}; "
                        "use provisioning = \"waagent\"")
    if problems:
        raise UsageError("cannot prepare this image for Azure:\n"
                         + "\n".join(f"  - {p}" for p in problems))


def _waagent_conf(azure: Azure) -> list[tuple[str, str]]:
    """The `/etc/waagent.conf` keys for the chosen provisioning mode, all explicit (R10)."""
    if azure.provisioning == "cloud-init":
        return [
            ("Provisioning.Agent", "cloud-init"),
            # cloud-init's ssh module regenerates the host keys instead.
            ("Provisioning.RegenerateSshHostKeyPair", "n"),
            ("ResourceDisk.Format", "n"),
            ("ResourceDisk.EnableSwap", "n"),
        ]
    agent = azure.agent
    return [
        ("Provisioning.Agent", "waagent"),
        ("Provisioning.RegenerateSshHostKeyPair", "y"),
        ("ResourceDisk.Format", _yn(agent.resource_disk_format)),
        ("ResourceDisk.Filesystem", agent.resource_disk_filesystem),
        ("ResourceDisk.MountPoint", agent.resource_disk_mount_point),
        ("ResourceDisk.EnableSwap", _yn(agent.enable_swap)),
        ("ResourceDisk.SwapSizeMB", str(agent.swap_size // (1024 * 1024))),
    ]


def kernel_args(facts: PrepFacts, azure: Azure) -> tuple[list[str], list[str]]:
    """(arguments to add, arguments to remove) for R07, each listed once. rootdelay is kept
    where dracut treats it as an upper bound and removed where initramfs-tools sleeps it."""
    add = list(dict.fromkeys(azure.kernel_args_add))
    remove = list(dict.fromkeys(azure.kernel_args_remove))
    if facts.initrd_tool == "initramfs-tools":
        add = [arg for arg in add if not arg.startswith("rootdelay=")]
        remove = [arg for arg in remove if not arg.startswith("rootdelay=")]
        remove.append(ROOTDELAY_PATTERN)
    return add, remove


def _packages(facts: PrepFacts, azure: Azure) -> list[tuple[str, str]]:
    """(requirement ID, package) the preparation installs when missing, in one transaction."""
    wanted = [("R08", p) for p in (*facts.agent_extra_packages, facts.agent_package)]
    wanted.append(("R09", facts.ssh_package))
    if azure.provisioning == "cloud-init":
        wanted.append(("R10", "cloud-init"))
    wanted += [("Hyper-V", p) for p in facts.recommended_packages]  # a recommendation
    return [(rid, package) for rid, package in wanted if rid not in azure.skip]


def prep_context(distro: Distro, azure: Azure, *, firmware: str,
                 build_user: str) -> dict[str, Any]:
    """The values the script templates see (also handy for tests and `render`)."""
    facts = prep_facts(distro)
    _validate(distro, azure, facts, firmware, build_user)
    grub_config = facts.grub_config_uefi if firmware == "uefi" else facts.grub_config_bios
    args_add, args_remove = kernel_args(facts, azure)
    return {
        "f": facts,
        "distro": distro,
        "label": facts.label,
        "firmware": firmware,
        "mode": azure.provisioning,
        "args_add": args_add,
        "args_remove": args_remove,
        "packages": _packages(facts, azure),
        "grub_install": facts.grub_mkconfig.replace("mkconfig", "install"),
        "modules": list(azure.hyperv_modules),
        "waagent_conf": _waagent_conf(azure),
        "skip": dict(sorted(azure.skip.items())),
        "grub_config": grub_config,
        "build_user": build_user,
        "sshd_dropin": BUILD_SSHD_DROPIN,
        "cloud_init_dropin": CLOUD_INIT_DROPIN,
    }


def prep_scripts(distro: Distro, azure: Azure, *, firmware: str,
                 build_user: str) -> dict[str, str]:
    """The three preparation scripts by file name: azure-prep.sh, azure-check.sh,
    deprovision.sh. Raises UsageError when the settings cannot be turned into a
    safe script (bad firmware, user name, kernel argument, unsupported mode)."""
    context = prep_context(distro, azure, firmware=firmware, build_user=build_user)
    env = _environment()
    return {name: env.get_template(name + ".j2").render(context) for name in SCRIPT_NAMES}
