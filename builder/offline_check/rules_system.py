"""The rules about the installed system: R08 the agent, R09 sshd, R10 waagent.conf and
cloud-init, R11 sudoers, R12 generalised (the leak list), R15 host keys on the first boot."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Sequence

from builder.offline_check.adapter import Guest, listed
from builder.offline_check.facts import Facts
from builder.offline_check.judge import (
    CloudInitState,
    judge_host_keys,
    judge_waagent_conf,
    password_locked,
    sudoers_findings,
    sysv_enabled,
    unit_enabled,
    users_with_passwords,
)
from builder.offline_check.parsers import cloud_datasources, parse_key_values, shadow_password_field
from builder.offline_check.units import UNIT_DIRS, UnitSet
from builder.report.check_report import CheckResult, Status
from builder.requirements import (
    AGENT_STATE,
    AUTHORIZED_KEYS,
    CLOUD_INIT_INSTANCE,
    HISTORY_FILES,
    INSTALLER_LEFTOVERS,
    LEASE_DIRS,
    SSH_HOST_KEYS,
    SSH_HOST_PRIVATE_KEYS,
    WAAGENT_CONF,
)

AGENT_PACKAGES = ("waagent", "walinuxagent", "WALinuxAgent", "python-azure-agent",
                  "python3-azure-agent")
AGENT_UNITS = ("walinuxagent.service", "waagent.service")
AGENT_SYSV = ("walinuxagent", "waagent")
AGENT_BINARIES = ("/usr/sbin/waagent", "/usr/bin/waagent", "/usr/local/sbin/waagent")
SSH_PACKAGES = ("openssh-server", "openssh")
SSH_UNITS = ("ssh.service", "sshd.service", "ssh.socket", "sshd.socket")
SSH_SYSV = ("ssh", "sshd", "openssh-server")
SSH_BINARIES = ("/usr/sbin/sshd",)
CLOUD_INIT_UNITS = ("cloud-init.service", "cloud-init-local.service", "cloud-init-main.service")
# cloud-init's network stage, where its ssh module makes the host keys (24.3 renamed it).
CLOUD_INIT_NETWORK_UNITS = ("cloud-init-network.service", "cloud-init.service")
SSH_SERVER_UNITS = ("ssh.service", "sshd.service")  # Debian's and Ubuntu's, then the others'
SSH_INIT_SCRIPTS = ("/etc/rc.d/init.d/sshd", "/etc/init.d/sshd", "/etc/init.d/ssh")


def _service_state(
    guest: Guest, facts: Facts, units: Sequence[str], sysv: Sequence[str]
) -> tuple[bool, str]:
    has_unit = any(u in guest.ls(d) for d in UNIT_DIRS for u in units)
    enabled, evidence = unit_enabled(units, facts.links)
    if enabled:
        return True, evidence
    if enabled is False:
        return False, evidence
    if not has_unit:
        rc = sysv_enabled(sysv, facts.rc_entries)
        if rc:
            return True, f"SysV start link {rc}"
        return False, f"no systemd unit {'/'.join(units)} and no SysV start link"
    return False, f"{'/'.join(units)} not enabled ({evidence})"


def check_service(
    rid: str, guest: Guest, facts: Facts, packages: Sequence[str], units: Sequence[str],
    sysv: Sequence[str], binaries: Sequence[str],
) -> CheckResult:
    what = "Azure Linux agent" if rid == "R08" else "SSH server"
    pkgs = [f"{p} {facts.packages[p]}".strip() for p in packages if p in facts.packages]
    bins = [b for b in binaries if listed(guest, b)]
    problems = []
    if pkgs:
        installed = f"package {', '.join(pkgs)} ({facts.package_source})"
    elif bins:
        installed = f"no package, but {', '.join(bins)} present"
    else:
        problems.append(f"{what} not installed (no package {'/'.join(packages)} in "
                        f"{facts.package_source or 'the package database'}, no "
                        f"{'/'.join(binaries)})")
        installed = ""
    enabled, evidence = _service_state(guest, facts, units, sysv)
    if not enabled:
        problems.append(f"{what} not enabled at boot: {evidence}" if installed or "masked"
                        in evidence else f"not enabled: {evidence}")
    if rid == "R08" and installed and not any(
        listed(guest, p) for p in ("/usr/bin/python3", "/usr/bin/python", "/usr/bin/python2")
    ):
        problems.append("no Python interpreter for the agent")
    if problems:
        return CheckResult(rid, "fail", "; ".join(problems))
    status: Status = "pass" if pkgs else "warn"
    return CheckResult(rid, status, f"{installed}; enabled: {evidence}")


def check_agent(guest: Guest, facts: Facts) -> CheckResult:
    return check_service("R08", guest, facts, AGENT_PACKAGES, AGENT_UNITS, AGENT_SYSV,
                         AGENT_BINARIES)


def check_ssh(guest: Guest, facts: Facts) -> CheckResult:
    return check_service("R09", guest, facts, SSH_PACKAGES, SSH_UNITS, SSH_SYSV, SSH_BINARIES)


def cloud_init_state(guest: Guest, facts: Facts) -> CloudInitState:
    """Whether cloud-init runs on the first boot, what it looks for and makes (R10, R15)."""
    installed = "cloud-init" in facts.packages or listed(guest, "/usr/bin/cloud-init")
    datasources: list[str] | None = None
    ds_evidence = ""
    regenerates = True
    configs = ["/etc/cloud/cloud.cfg"] + [
        f"/etc/cloud/cloud.cfg.d/{n}" for n in guest.ls("/etc/cloud/cloud.cfg.d")
        if n.endswith(".cfg")
    ]
    for path in configs:
        text = guest.read_text(path)
        if text is None:
            continue
        found = cloud_datasources(text)
        if found is not None:
            datasources, ds_evidence = found, f"{path}: datasource_list: [{', '.join(found)}]"
        if re.search(r"^\s*ssh_genkeytypes\s*:\s*\[\s*\]", text, re.M):
            regenerates = False
    if not installed:
        return CloudInitState(False, False, "not installed", datasources, ds_evidence, regenerates)
    local, link = unit_enabled(("cloud-init-local.service",), facts.links)
    return dataclasses.replace(
        _cloud_init_enablement(guest, facts, datasources, ds_evidence, regenerates),
        local_unit_link=link if local else None)


def _cloud_init_enablement(guest: Guest, facts: Facts, datasources: list[str] | None,
                           ds_evidence: str, regenerates: bool) -> CloudInitState:
    """An installed cloud-init: whether it runs on the first boot, and why."""
    if listed(guest, "/etc/cloud/cloud-init.disabled"):
        return CloudInitState(True, False, "disabled by /etc/cloud/cloud-init.disabled",
                              datasources, ds_evidence, regenerates)
    if "cloud-init=disabled" in facts.kernel_args_any:
        return CloudInitState(True, False, "disabled by cloud-init=disabled on the kernel line",
                              datasources, ds_evidence, regenerates)
    enabled, evidence = unit_enabled(CLOUD_INIT_UNITS, facts.links)
    if enabled:
        return CloudInitState(True, True, f"enabled ({evidence})", datasources, ds_evidence,
                              regenerates)
    return CloudInitState(True, False, f"installed but not enabled ({evidence})", datasources,
                          ds_evidence, regenerates)


def check_waagent_conf(guest: Guest, cloud_init: CloudInitState) -> CheckResult:
    text = guest.read_text(WAAGENT_CONF)
    if text is None:
        return CheckResult("R10", "fail", f"no {WAAGENT_CONF}")
    status, evidence = judge_waagent_conf(parse_key_values(text), cloud_init)
    return CheckResult("R10", status, evidence)


def check_sudoers(guest: Guest) -> CheckResult:
    files = ["/etc/sudoers"]
    files += [
        f"/etc/sudoers.d/{n}" for n in guest.ls("/etc/sudoers.d")
        if "." not in n and not n.endswith("~")  # what sudo's #includedir reads
    ]
    findings: list[str] = []
    read = []
    for path in files:
        text = guest.read_text(path)
        if text is None:
            continue
        read.append(path)
        findings += sudoers_findings(text, path)
    if findings:
        return CheckResult("R11", "fail", "; ".join(findings))
    if not read:
        return CheckResult("R11", "pass", "no /etc/sudoers (sudo not installed)")
    return CheckResult("R11", "pass", f"no targetpw, no ALL ALL=(ALL) ALL in {', '.join(read)}")


def check_generalised(guest: Guest) -> CheckResult:
    found: list[str] = []
    keys_dir, _, keys_glob = SSH_HOST_KEYS.rpartition("/")
    keys = [n for n in guest.ls(keys_dir) if fnmatch.fnmatchcase(n, keys_glob)]
    if keys:
        found.append("SSH host keys " + ", ".join(f"{keys_dir}/{k}" for k in keys))
    shadow = guest.read_text("/etc/shadow")
    if shadow is None:
        found.append("no /etc/shadow")
    else:
        pw = shadow_password_field(shadow, "root")
        if pw is None:
            found.append("no root entry in /etc/shadow")
        elif not password_locked(pw):
            found.append("root's password is not locked in /etc/shadow ("
                         + ("empty: no password at all" if not pw else "a usable hash") + ")")
        users = users_with_passwords(guest.read_text("/etc/passwd") or "", shadow)
        if users:
            found.append(f"users with a usable password: {', '.join(users)}")
    leases = [p for d in LEASE_DIRS for p in guest.nonempty_files(d)
              if fnmatch.fnmatch(p, LEASE_DIRS[d])]
    if leases:
        found.append("DHCP leases " + ", ".join(leases))
    state = guest.ls(AGENT_STATE)
    if state:
        found.append(f"agent state in {AGENT_STATE}: " + ", ".join(state[:5])
                     + (" ..." if len(state) > 5 else ""))
    homes = ["/root", *(f"/home/{h}" for h in guest.ls("/home"))]
    for home in homes:
        found += [f"shell history {p}"
                  for p in guest.nonempty_files(home, HISTORY_FILES.checked)]
        if ".ssh" in guest.ls(home):
            found += [f"authorized keys {p}" for p in guest.nonempty_files(
                f"{home}/.ssh", AUTHORIZED_KEYS)]
    current, every = CLOUD_INIT_INSTANCE.checked  # a link to the current one, and all
    instance = [current] if listed(guest, current) else []
    instance += [f"{every}/{n}" for n in guest.ls(every)]
    if instance:
        found.append("cloud-init instance data " + ", ".join(instance))
    leftovers = [p for p in INSTALLER_LEFTOVERS.checked if listed(guest, p)]
    if leftovers:
        found.append("installer leftovers " + ", ".join(leftovers))
    if found:
        return CheckResult("R12", "fail", "; ".join(found))
    return CheckResult("R12", "pass", "no host keys, root locked, no leases, no agent state, no "
                   "histories, no authorized_keys, no cloud-init instance data, no installer "
                   "leftovers")


def check_host_keys(guest: Guest, facts: Facts, cloud_init: CloudInitState) -> CheckResult:
    keys_dir, _, keys_glob = SSH_HOST_PRIVATE_KEYS.rpartition("/")
    keys = [f"{keys_dir}/{n}" for n in guest.ls(keys_dir) if fnmatch.fnmatchcase(n, keys_glob)]
    units = UnitSet(facts.unit_files, facts.links)
    ssh_unit = next((units.canonical(n) for n in SSH_SERVER_UNITS if units.unit(n)), None)
    sysv_script = None
    if ssh_unit is None and not keys:
        sysv_script = next(((p, t) for p in SSH_INIT_SCRIPTS
                            if (t := guest.read_text(p)) is not None), None)
    status, evidence = judge_host_keys(keys, units, ssh_unit, sysv_script, cloud_init,
                                       CLOUD_INIT_NETWORK_UNITS)
    return CheckResult("R15", status, evidence)
