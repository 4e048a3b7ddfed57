"""Azure preparation as generated shell scripts (requirements R03-R15).

`prep_scripts()` turns a distro plugin and the template's `[azure]` settings
into three bash scripts that the pipeline uploads and runs in the guest:

* `azure-prep.sh`: idempotent fixes, run as root after the user's provisioners;
* `azure-check.sh`: read-only verification, one line per requirement;
* `deprovision.sh`: the final detached root script that generalises the guest
  and powers it off.

Distro differences are data: `PrepFacts` (distros/facts.py) collects the facts
the scripts need, from the distro plugin's class attributes through its
`prep_facts()` method, which a family overrides to adjust them per version (RHEL 6
uses legacy GRUB and SysV services, RHEL 8+ grubby, and so on). The scripts are
rendered from the Jinja2 templates in `distros/prep/`; nothing here runs
anything.
"""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import jinja2

from builder import requirements as req
from builder.errors import UsageError
from builder.quoting import shell_quote
from distros import Distro
from distros.facts import PrepFacts

if TYPE_CHECKING:
    from builder.models import Azure

SCRIPT_NAMES = ("azure-prep.sh", "azure-check.sh", "deprovision.sh")
# The drop-in the engine may add to reach the guest; deprovision.sh removes it (R12).
BUILD_SSHD_DROPIN = "/etc/ssh/sshd_config.d/90-azbuild.conf"
# cloud-init configuration written in cloud-init mode (R10); sorts after distro files.
CLOUD_INIT_DROPIN = "/etc/cloud/cloud.cfg.d/91-azbuild-azure.cfg"
# cloud-init's systemd units across versions (cloud-init-main/-network since 24.3):
# enabled in cloud-init mode, disabled in waagent mode.
CLOUD_INIT_UNITS = ("cloud-init-local", "cloud-init-main", "cloud-init-network", "cloud-init",
                    "cloud-config", "cloud-final")

Firmware = Literal["bios", "uefi"]

# The template's models check the same patterns at load time (builder.models); these
# checks stay as the scripts' own guard.
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Kernel arguments go inside a double-quoted /etc/default/grub value and into sed-free
# bash arrays: plain printable words only.
KARG_RE = re.compile(r"^[A-Za-z0-9_.,:=+/@-]+$")
MODULE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]*$")
# The leak list's paths go into the scripts unquoted, so that their globs expand.
GLOB_RE = re.compile(r"^/[A-Za-z0-9_./*-]+$")
HOMES = ("/root", "/home/*")  # where histories and authorized_keys are looked for


def prep_facts(distro: Distro) -> PrepFacts:
    """The facts of `distro` the scripts are written from (its `prep_facts()`)."""
    return distro.prep_facts()


def _yn(value: bool) -> str:
    return "y" if value else "n"


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        # The script templates belong to the distro plugins (distros/prep/).
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
    env.filters["paths"] = _paths
    return env


def _paths(paths: tuple[str, ...]) -> str:
    """Paths or globs as shell words, unquoted (globs expand), wrapped with backslashes."""
    lines: list[list[str]] = [[]]
    for path in paths:
        if not GLOB_RE.match(path):
            raise ValueError(f"{path!r} is not a plain absolute path or glob")
        if lines[-1] and len(" ".join([*lines[-1], path])) > 76:
            lines.append([])
        lines[-1].append(path)
    return " \\\n    ".join(" ".join(line) for line in lines)


def _leaks() -> dict[str, Any]:
    """The leak list (R12) as the paths deprovision.sh removes, by kind."""
    return {
        "access": (*(f"{home}/.ssh/{name}" for home in HOMES for name in req.AUTHORIZED_KEYS),
                   req.SSH_HOST_KEYS),
        "history": tuple(f"{home}/{name}" for home in HOMES for name in req.HISTORY_FILES.removed),
        "cloud_init": req.CLOUD_INIT_INSTANCE.removed,
        "leases": tuple(f"{d}/{pattern}" for d, pattern in req.LEASE_DIRS.items()),
        "agent_state": (f"{req.AGENT_STATE}/*",),
        "installer": req.INSTALLER_LEFTOVERS.removed,
        "machine_id": req.MACHINE_ID,
    }


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
    mode = req.AGENT_MODES[azure.provisioning]
    agent = azure.agent
    settings = {
        req.RESOURCE_FORMAT: _yn(agent.resource_disk_format),
        req.RESOURCE_FILESYSTEM: agent.resource_disk_filesystem,
        req.RESOURCE_MOUNT_POINT: agent.resource_disk_mount_point,
        req.ENABLE_SWAP: _yn(agent.enable_swap),
        req.SWAP_SIZE_MB: str(agent.swap_size // (1024 * 1024)),
    }
    return [*mode.fixed, *((key, settings[key]) for key in mode.from_settings)]


def kernel_args(facts: PrepFacts, azure: Azure) -> tuple[list[str], list[str]]:
    """(arguments to add, arguments to remove) for R07, each listed once: the template's,
    less what the distro's initrd forbids (rootdelay where initramfs-tools sleeps it), and
    the patterns of what it forbids added to the removals."""
    forbidden = list(req.kernel_args_for(facts.initrd_tool).always_removed)
    add = [arg for arg in dict.fromkeys(azure.kernel_args_add)
           if not any(req.arg_matches(arg, p) for p in forbidden)]
    remove = [arg for arg in dict.fromkeys(azure.kernel_args_remove)
              if not any(req.arg_matches(arg, p) for p in forbidden)]
    return add, remove + forbidden


def _packages(facts: PrepFacts, azure: Azure) -> list[tuple[str, str]]:
    """(requirement ID, package) the preparation installs when missing, in one transaction."""
    wanted = [("R08", p) for p in (*facts.agent_extra_packages, facts.agent_package)]
    wanted.append(("R09", facts.ssh_package))
    if azure.provisioning == "cloud-init":
        wanted.append(("R10", "cloud-init"))
    wanted += [("Hyper-V", p) for p in facts.recommended_packages]  # a recommendation
    return [(rid, package) for rid, package in wanted if rid not in azure.skip]


def _host_keygen(facts: PrepFacts) -> dict[str, Any]:
    """R15: the unit that makes missing SSH host keys before sshd starts, where the
    distro's sshd makes none (`text` None elsewhere)."""
    values: dict[str, Any] = {
        "unit": req.HOST_KEYGEN_UNIT,
        "path": f"{req.HOST_KEYGEN_UNIT_DIR}/{req.HOST_KEYGEN_UNIT}",
        "private_keys": req.SSH_HOST_PRIVATE_KEYS,
        "command": req.HOST_KEYGEN_COMMAND,
        "text": None,
    }
    if facts.ssh_host_keygen is None:
        template = _environment().get_template("ssh-host-keygen.service.j2")
        values["text"] = template.render(f=facts, r15=values)
    return values


def host_keygen_unit(distro: Distro) -> str | None:
    """The text of the R15 unit `azure-prep.sh` installs on `distro`, or None where its
    sshd makes missing host keys itself (the e2e corpus writes the same unit)."""
    text: str | None = _host_keygen(prep_facts(distro))["text"]
    return text


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
        "cloud_init_units": CLOUD_INIT_UNITS,
        "in_guest_ids": req.IN_GUEST_IDS,
        "r14_bios_skip": req.R14_BIOS_SKIP,
        "leaks": _leaks(),
        "kernel": {"numa_off": req.NUMA_OFF, "numa_off_up_to": req.NUMA_OFF_UP_TO,
                   "recommended": req.RECOMMENDED_KERNEL},
        "r14": {"loader": req.FALLBACK_LOADER, "shim_mark": req.SHIM_MARK},
        "r15": _host_keygen(facts),
        "agent": {"conf": req.WAAGENT_CONF, "key": req.AGENT,
                  "cloud_init_values": req.CLOUD_INIT_AGENT_VALUES},
    }


def prep_scripts(distro: Distro, azure: Azure, *, firmware: str,
                 build_user: str) -> dict[str, str]:
    """The three preparation scripts by file name: azure-prep.sh, azure-check.sh,
    deprovision.sh. Raises UsageError when the settings cannot be turned into a
    safe script (bad firmware, user name, kernel argument, unsupported mode)."""
    context = prep_context(distro, azure, firmware=firmware, build_user=build_user)
    env = _environment()
    return {name: env.get_template(name + ".j2").render(context) for name in SCRIPT_NAMES}
