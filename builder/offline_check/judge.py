"""The pure judgements of the offline check: parsed values in, a status and its evidence
(or the findings) out, by the rules of builder/requirements.py. No appliance needed."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from builder.offline_check.parsers import shadow_password_field, version_tuple, where
from builder.offline_check.units import UnitSet, masked_running, units_running
from builder.report.check_report import Status
from builder.requirements import (
    AGENT,
    CRASHKERNEL_AUTO,
    ENABLE_SWAP,
    FALLBACK_LOADER,
    HOST_KEYGEN_PROGRAMS,
    NUMA_OFF,
    NUMA_OFF_UP_TO,
    RECOMMENDED_KERNEL,
    REGENERATE_HOST_KEYS,
    RESOURCE_FILESYSTEM,
    RESOURCE_FORMAT,
    RESOURCE_MOUNT_POINT,
    SWAP_SIZE_MB,
    WAAGENT_CONF,
    arg_matches,
    kernel_args_for,
)


def _has_arg(args: Sequence[str], wanted: str) -> bool:
    key, _, value = wanted.partition("=")
    for arg in args:
        k, _, v = arg.partition("=")
        if k != key:
            continue
        if not value or v == value or v.startswith(value + ","):
            return True
        if key == "rootdelay" and v.isdigit() and int(v) >= int(value):
            return True
    return False


def required_args(initrd_tool: str) -> tuple[str, ...]:
    """R07's required arguments: rootdelay only where the initrd treats it as an upper bound
    (dracut, or a tool not recognised); initramfs-tools sleeps it on every boot."""
    return kernel_args_for(initrd_tool).required


def judge_cmdline(
    args: Sequence[str], initrd_tool: str = "dracut"
) -> tuple[list[str], list[str], bool]:
    """(missing required arguments, forbidden arguments present, has crashkernel=auto).
    On an initramfs-tools image every `rootdelay=` is forbidden."""
    rule = kernel_args_for(initrd_tool)
    missing = [w for w in rule.required if not _has_arg(args, w)]
    forbidden = [a for a in args if any(arg_matches(a, p) for p in rule.forbidden)]
    return missing, forbidden, CRASHKERNEL_AUTO in args


def rootdelay_cost(forbidden: Sequence[str], init_evidence: str) -> str:
    """What a rootdelay on an initramfs-tools image costs, in words (empty when none)."""
    delays = sorted({a.partition("=")[2] for a in forbidden if a.startswith("rootdelay=")})
    if not delays:
        return ""
    seconds = " or ".join(f"{d} s" for d in delays)
    return (f"rootdelay on an initramfs-tools image: its init sleeps that long unconditionally "
            f"({init_evidence}), so every boot on Azure waits {seconds} before it even looks "
            "for the root disk; remove rootdelay from the GRUB defaults and regenerate grub.cfg")


@dataclass(frozen=True)
class CloudInitState:
    installed: bool
    enabled: bool
    evidence: str  # why it is (not) enabled
    datasources: list[str] | None = None  # None: no datasource_list (default includes Azure)
    datasource_evidence: str = ""
    regenerates_host_keys: bool = True
    # waagent refuses to provision while cloud-init-local.service is enabled, whatever
    # /etc/cloud/cloud-init.disabled says: the enabling link, when there is one.
    local_unit_link: str | None = None


def judge_waagent_conf(
    conf: Mapping[str, tuple[str, int]], cloud_init: CloudInitState, path: str = WAAGENT_CONF
) -> tuple[Status, str]:
    """R10: judge waagent.conf by the provisioning mode it declares."""
    def val(key: str) -> str | None:
        return conf[key][0] if key in conf else None

    def show(key: str) -> str:
        return f"{key}={conf[key][0]} ({path}:{conf[key][1]})" if key in conf else f"{key} unset"

    problems: list[str] = []
    agent = val(AGENT)
    if agent is None:
        if (val("Provisioning.UseCloudInit") or "").lower() == "y":
            agent = "cloud-init"
        elif (val("Provisioning.Enabled") or "").lower() == "n":
            agent = "disabled"
        elif (val("Provisioning.Enabled") or "").lower() == "y":
            agent = "waagent"
        else:
            problems.append(f"{AGENT} is not set explicitly (the default is auto)")
            agent = "auto"
    agent = agent.lower()
    mode = agent
    if agent == "auto":
        mode = "cloud-init" if cloud_init.enabled else "waagent"
    facts = [show(AGENT) if AGENT in conf else f"mode {agent}"]
    if agent == "auto":
        facts.append(f"auto resolves to {mode}")
    fmt = (val(RESOURCE_FORMAT) or "").lower()
    swap = (val(ENABLE_SWAP) or "").lower()
    for key in (RESOURCE_FORMAT, ENABLE_SWAP):
        if key not in conf:
            problems.append(f"{key} is not set explicitly")
    if mode == "waagent":
        if fmt != "y":
            problems.append(
                f"waagent mode needs {RESOURCE_FORMAT}=y, found {show(RESOURCE_FORMAT)}"
            )
        for key in (RESOURCE_FILESYSTEM, RESOURCE_MOUNT_POINT):
            if not val(key):
                problems.append(f"{key} is not set")
        if swap == "y":
            size = val(SWAP_SIZE_MB) or ""
            if not size.isdigit() or int(size) <= 0:
                problems.append(
                    f"EnableSwap=y needs a positive {SWAP_SIZE_MB}, "
                    f"found {show(SWAP_SIZE_MB)}"
                )
            if fmt != "y":
                problems.append(f"EnableSwap=y needs {RESOURCE_FORMAT}=y")
        if (val(REGENERATE_HOST_KEYS) or "").lower() != "y":
            problems.append(
                f"waagent mode needs {REGENERATE_HOST_KEYS}=y (host keys are "
                f"removed by deprovisioning), found {show(REGENERATE_HOST_KEYS)}"
            )
        if cloud_init.enabled:
            problems.append(f"cloud-init is enabled ({cloud_init.evidence}) but waagent provisions")
        elif cloud_init.local_unit_link:
            problems.append(
                f"cloud-init-local.service is enabled ({cloud_init.local_unit_link}): waagent "
                "refuses to provision while it is ('cloud-init appears to be installed and "
                "enabled'), whatever cloud-init.disabled says")
        facts += [show(RESOURCE_FORMAT), show(ENABLE_SWAP),
                  f"cloud-init: {cloud_init.evidence}"]
    elif mode == "cloud-init":
        if fmt != "n":
            problems.append(
                f"cloud-init mode needs {RESOURCE_FORMAT}=n (cloud-init owns the resource disk), "
                f"found {show(RESOURCE_FORMAT)}"
            )
        if swap != "n":
            problems.append(
                f"cloud-init mode needs {ENABLE_SWAP}=n, "
                f"found {show(ENABLE_SWAP)}"
            )
        if not cloud_init.installed:
            problems.append("cloud-init mode but cloud-init is not installed")
        elif not cloud_init.enabled:
            problems.append(
                f"cloud-init mode but cloud-init is not enabled ({cloud_init.evidence})"
            )
        if cloud_init.datasources is not None and "Azure" not in cloud_init.datasources:
            problems.append(
                f"cloud-init's datasource_list has no Azure: {cloud_init.datasource_evidence}"
            )
        if not cloud_init.regenerates_host_keys:
            problems.append(
                "cloud-init is configured not to generate SSH host keys (ssh_genkeytypes: [])"
            )
        facts += [show(RESOURCE_FORMAT), show(ENABLE_SWAP),
                  f"cloud-init {cloud_init.evidence}",
                  cloud_init.datasource_evidence or "default datasource list (includes Azure)"]
    elif mode == "disabled":
        problems.append(
            "provisioning is disabled: nothing creates the admin user or regenerates SSH host keys"
        )
    else:
        problems.append(f"unknown provisioning agent {agent!r}")
    if problems:
        return "fail", "; ".join(problems)
    return "pass", f"{mode} mode: " + "; ".join(facts)


def sudoers_findings(text: str, path: str) -> list[str]:
    """R11: `Defaults targetpw` and `ALL ALL=(ALL) ALL` style lines in one sudoers file."""
    findings = []
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        logical.append((start, pending + (line.strip() if pending else line)))
        pending = ""
    if pending:
        logical.append((start, pending))
    for number, line in logical:
        body = line.strip()
        if body.startswith(("#include", "@include")) or not body:
            continue
        body = re.sub(r"(?<!\\)#(?!\d).*$", "", body).strip()  # "#123" is a uid, not a comment
        if not body:
            continue
        m = re.match(r"Defaults(?:[:@!>][^\s]+)?\s+(.*)$", body)
        if m:
            opts = [o.strip() for o in m.group(1).split(",")]
            if "targetpw" in opts:
                findings.append(where(path, number, line))
            continue
        norm = re.sub(r"\s+", " ", body)
        if re.fullmatch(
            r"ALL ALL ?= ?(\(ALL(?: ?: ?ALL)?\) ?)?(?:[A-Z_]+: ?)*ALL", norm
        ):
            findings.append(where(path, number, line))
    return findings


def password_locked(field_value: str) -> bool:
    """Locked: `!`/`*` prefix (`!`, `!!`, `*`, `!$6$...`). Empty means no password at all."""
    return field_value.startswith(("!", "*"))


def users_with_passwords(passwd: str, shadow: str) -> list[str]:
    """Login users (uid >= 1000, not nobody) whose password is usable: build leftovers."""
    users = []
    for line in passwd.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit() and 1000 <= int(parts[2]) < 60000:
            pw = shadow_password_field(shadow, parts[0])
            if pw is not None and pw and not password_locked(pw):
                users.append(parts[0])
    return users


def unit_enabled(
    units: Sequence[str], links: Mapping[str, str]
) -> tuple[bool | None, str]:
    """Is any of `units` enabled, judging from systemd's symlinks (`links`: link path ->
    target, from /etc/systemd/system and the vendor unit directories)? True with the
    enabling link, False when masked, None when nothing enables it."""
    names = set(units)
    for link, target in links.items():  # aliases: sshd.service -> ssh.service
        p = PurePosixPath(link)
        if p.parent.name.endswith((".wants", ".requires")):
            continue
        tname = PurePosixPath(target).name
        if p.name in names and target != "/dev/null":
            names.add(tname)
        elif tname in names and p.name.endswith((".service", ".socket")):
            names.add(p.name)
    for link, target in sorted(links.items()):
        p = PurePosixPath(link)
        if str(p.parent) == "/etc/systemd/system" and p.name in units and target == "/dev/null":
            return False, f"{link} -> /dev/null (masked)"
    for link, target in sorted(links.items()):
        p = PurePosixPath(link)
        if not p.parent.name.endswith((".wants", ".requires")):
            continue
        if p.name in names or PurePosixPath(target).name in names:
            return True, f"{link} -> {target}"
    return None, "no enablement link for " + "/".join(units)


def sysv_enabled(sysv_names: Sequence[str], rc_entries: Mapping[str, Sequence[str]]) -> str | None:
    """A SysV start link (`/etc/rc3.d/S20name`) for one of the names, or None."""
    for directory, names in sorted(rc_entries.items()):
        for name in names:
            m = re.match(r"S\d\d(.+)$", name)
            if m and m.group(1) in sysv_names:
                return f"{directory}/{name}"
    return None


def kernel_version_status(version: str, numa_off: bool) -> tuple[Status, str]:
    v = version_tuple(version)
    if not v:
        return "warn", f"{version}: version not understood"
    if v <= version_tuple(NUMA_OFF_UP_TO):
        if numa_off:
            return "warn", (f"{version} ({NUMA_OFF_UP_TO} or older, boots with {NUMA_OFF}; "
                            f"{RECOMMENDED_KERNEL}+ recommended)")
        return "fail", (f"{version} is {NUMA_OFF_UP_TO} or older and its kernel lines lack "
                        f"{NUMA_OFF}")
    if v < version_tuple(RECOMMENDED_KERNEL):
        return "warn", f"{version} is older than {RECOMMENDED_KERNEL} (recommended minimum)"
    return "pass", version




def judge_fallback_loader(
    esp: str, files: Mapping[str, int], loader_is_shim: bool, grub_prefix_in: str | None
) -> tuple[Status, str]:
    """R14 from the ESP's files (`EFI/<dir>/<name>` -> size, names as stored: FAT ignores
    case): the removable-path loader is there and reaches a GRUB configuration, through a
    grub.cfg beside it, shim's fallback (fbx64.efi) with a vendor's BOOTX64.CSV, a vendor's
    grub.cfg (a signed GRUB's prefix is its EFI/<vendor>), or `/boot/grub` built into the
    loader (`grub_prefix_in` names the file that has it)."""
    lower = {p.lower(): p for p in files}
    loader = lower.get(FALLBACK_LOADER.lower())
    vendors = sorted({p.split("/")[1] for p in files
                      if p.count("/") == 2 and p.split("/")[1].lower() != "boot"})
    if loader is None or files[loader] == 0:
        found = ", ".join(f"EFI/{v}" for v in vendors) or "no loader directory"
        return "fail", (
            f"{esp}: no {FALLBACK_LOADER} ({found} only): a VM created from this image starts "
            "with empty UEFI variables and tries only that path; install the boot loader with "
            "the distro's removable option (grub-install --removable) or copy EFI/<vendor> to "
            "EFI/BOOT with shim as BOOTX64.EFI")
    boot = {p.rsplit("/", 1)[1].lower(): p for p in files if p.lower().startswith("efi/boot/")}
    fallback = next((boot[n] for n in sorted(boot) if n.startswith("fb") and n.endswith(".efi")),
                    None)
    if loader_is_shim and fallback is None and not ({"grubx64.efi", "grub.efi"} & set(boot)):
        return "fail", (f"{esp}: {loader} is shim, but EFI/BOOT holds neither its second stage "
                        "(grubx64.efi) nor its fallback (fbx64.efi)")
    elsewhere = [p for p in sorted(files) if p.count("/") == 2 and p.split("/")[1] in vendors]
    csvs = [p for p in elsewhere if p.rsplit("/", 1)[1].lower() in ("bootx64.csv", "boot.csv")]
    cfgs = [p for p in elsewhere if p.rsplit("/", 1)[1].lower() == "grub.cfg"]
    if "grub.cfg" in boot:
        config = boot["grub.cfg"]
    elif fallback and csvs:
        config = f"shim's fallback {fallback} with {csvs[0]}"
    elif cfgs:
        config = f"{cfgs[0]} (the prefix of a signed GRUB)"
    elif grub_prefix_in:
        config = f"/boot/grub built into {grub_prefix_in}"
    else:
        return "fail", (f"{esp}: {loader} finds no grub.cfg: none in EFI/BOOT or "
                        f"{', '.join(f'EFI/{v}' for v in vendors) or 'a vendor directory'}, "
                        "and no /boot/grub built into the loader")
    kind = "shim" if loader_is_shim else "GRUB or another loader"
    return "pass", f"{esp}: {loader} ({kind}, {files[loader]} bytes) reaches {config}"


# A command line that makes SSH host keys: `ssh-keygen -A`, or a distro's own key maker.
HOST_KEYGEN_RE = re.compile(
    r"(?:^|[\s/'\";])(?:ssh-keygen\b[^;|&]*\s-A\b|(?:"
    + "|".join(map(re.escape, HOST_KEYGEN_PROGRAMS)) + r")\b)")


def judge_host_keys(
    keys: Sequence[str], units: UnitSet, ssh_unit: str | None,
    sysv_script: tuple[str, str] | None, cloud_init: CloudInitState,
    cloud_init_units: Sequence[str],
) -> tuple[Status, str]:
    """R15: sshd finds host keys on the first boot. The image holds some (whether it should
    is R12's question), or something makes them before the SSH server's unit `ssh_unit`
    starts: a unit running `ssh-keygen -A`, `sshd-keygen` or `sshd-gen-keys-start` that is
    ordered before it and started with it (or at boot), that unit's own ExecStartPre,
    cloud-init where it runs and makes keys (its network stage, `cloud_init_units`), or,
    without a unit, the SysV init script (`sysv_script`: path, text)."""
    if keys:
        return "pass", (f"host keys in the image ({', '.join(keys)}): sshd starts with them "
                        "(R12 judges whether they belong there)")
    if ssh_unit is None:
        if sysv_script is None:
            return "fail", ("no host keys in /etc/ssh, and no SSH server unit (ssh.service, "
                            "sshd.service) or init script that could make them")
        path, text = sysv_script
        if "ssh-keygen" in text or any(p in text for p in HOST_KEYGEN_PROGRAMS):
            return "pass", f"no host keys in /etc/ssh; {path} makes them before it starts sshd"
        return "fail", (f"no host keys in /etc/ssh, and {path} starts sshd without making any: "
                        "sshd does not start on the first boot")
    makers: list[str] = []
    misses: list[str] = [f"{name} would make them but is masked ({link} -> /dev/null)"
                         for name, link in masked_running(units, HOST_KEYGEN_RE)]
    instances: dict[str, list[str]] = {}  # a template's path -> the instances that made keys
    for unit, line in units_running(units, HOST_KEYGEN_RE, extra=(ssh_unit,)):
        where_ = unit.dropins[-1] if unit.dropins else unit.path
        if unit.name == ssh_unit:  # its own ExecStartPre (SUSE), or a drop-in's
            makers.append(f"{unit.name} itself ({where_}: {line})")
            continue
        before = units.runs_before(unit.name, ssh_unit)
        started = units.pulled_by(unit.name, ssh_unit) or units.enabled(unit.name)
        if before and started:
            if unit.path in instances:  # another instance of the same template, said once
                instances[unit.path].append(unit.name)
                continue
            instances[unit.path] = []
            makers.append(f"{unit.name} ({where_}: {line}; {before}; started by {started})")
            continue
        gaps = [gap for gap, ok in ((f"not ordered before {ssh_unit}", before),
                                    (f"neither enabled nor pulled in by {ssh_unit}", started))
                if not ok]
        misses.append(f"{unit.name} ({where_}: {line}) is {' and '.join(gaps)}")
    makers += [f"likewise {', '.join(names)}" for names in instances.values() if names]
    if cloud_init.installed:
        network = next((n for n in cloud_init_units if units.unit(n)), None)
        before = units.runs_before(network, ssh_unit) if network else None
        if not cloud_init.enabled:
            misses.append(f"cloud-init {cloud_init.evidence}")
        elif not cloud_init.regenerates_host_keys:
            misses.append("cloud-init is told to make no host keys (ssh_genkeytypes: [])")
        elif cloud_init.datasources is not None and "Azure" not in cloud_init.datasources:
            misses.append(f"cloud-init has no Azure datasource ({cloud_init.datasource_evidence})")
        elif before is None:
            misses.append(f"cloud-init is enabled, but none of {', '.join(cloud_init_units)} "
                          f"is ordered before {ssh_unit}")
        else:
            makers.append(f"cloud-init's ssh module ({cloud_init.evidence}; {before})")
    if makers:
        return "pass", f"no host keys in /etc/ssh; made before {ssh_unit} starts by " + (
            "; ".join(makers))
    seen = "; ".join(misses) or "no unit runs ssh-keygen -A, sshd-keygen or sshd-gen-keys-start"
    return "fail", (
        f"no host keys in /etc/ssh and nothing makes them before {ssh_unit} starts ({seen}): "
        "sshd fails on the first boot ('no hostkeys available') and nobody can log in; a "
        f"oneshot unit running ssh-keygen -A, wanted by and ordered before {ssh_unit}, fixes it")
