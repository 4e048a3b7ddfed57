"""The first-boot checks made over SSH, logged in as the user the ovf-env asked for, with
the simulation's key: what a user of the new VM relies on in its first minute."""

from __future__ import annotations

import base64
import logging
import re
import shlex
import time

from builder.errors import AzbuildError
from builder.simulate.config import SimulationConfig
from builder.simulate.outcome import SimulationOutcome
from builder.vm.ssh import SSHSession

log = logging.getLogger(__name__)

# Agent log lines that are no fault of the image in the simulation (docs/simulate.md):
# the resource disk and the VMBus devices do not exist outside Hyper-V.
ERROR_ALLOW_LIST = (
    re.compile(r"resource ?disk", re.IGNORECASE),
    re.compile(r"vmbus|hv_|storvsc", re.IGNORECASE),
    re.compile(r"/dev/disk/azure|/dev/disk/cloud", re.IGNORECASE),
)
# How long cloud-init may take, after SSH answers, to run the CustomData script
# (its final stage runs after the Ready report).
CUSTOM_DATA_WAIT = 120.0
CLOUD_INIT_WAIT = 300.0  # bound on `cloud-init status --wait` after SSH answered
WAAGENT_CUSTOM_DATA = "/var/lib/waagent/CustomData"


def _output(session: SSHSession, command: str, *, sudo: bool = False,
            timeout: float = 60.0) -> tuple[bool, str]:
    """(succeeded, stdout) of a guest command; a failure is a finding, not an error."""
    try:
        return True, session.check_output(command, sudo=sudo, timeout=timeout).strip()
    except AzbuildError as exc:
        return False, str(exc).strip()


def check_login(session: SSHSession, cfg: SimulationConfig, out: SimulationOutcome) -> None:
    ok, who = _output(session, "id -un; id -Gn")
    name = who.splitlines()[0] if ok and who else who
    out.add("user", "pass" if ok and name == cfg.user else "fail",
            "the ovf-env user exists and logs in with its key",
            f"logged in as {name!r}, groups: {' '.join(who.splitlines()[1:]) or '-'}")
    ok, text = _output(session, "sudo -n true && echo sudo-ok")
    out.add("sudo", "pass" if ok and text.endswith("sudo-ok") else "fail",
            "the user has sudo without a password (sudo -n true)",
            "sudo -n true succeeded" if ok else text.splitlines()[-1] if text else "failed")
    ok, name = _output(session, "hostname")
    out.add("hostname", "pass" if ok and name == cfg.hostname else "fail",
            "the host name is the one the ovf-env set",
            f"hostname {name!r}, expected {cfg.hostname!r}")


def check_password_auth(session: SSHSession, cfg: SimulationConfig,
                        out: SimulationOutcome) -> None:
    """DisableSshPasswordAuthentication=true: sshd must not offer a password prompt."""
    try:
        methods = session.auth_methods(cfg.user)
    except Exception as exc:  # a second connection failing is a finding of its own
        out.add("password-auth", "fail", "password authentication as the ovf-env asked",
                f"could not ask sshd for its methods: {exc}")
        return
    offered = [m for m in methods if m in ("password", "keyboard-interactive")]
    out.add("password-auth", "fail" if offered else "pass",
            "password authentication is off, as the ovf-env asked",
            f"sshd offers {', '.join(methods) or 'nothing'} to {cfg.user}")


def _agent_mode(session: SSHSession) -> str:
    ok, value = _output(session, "sed -n 's/^Provisioning\\.Agent=//p' /etc/waagent.conf")
    return value.strip().lower() if ok and value.strip() else "waagent"


def check_custom_data(session: SSHSession, cfg: SimulationConfig, out: SimulationOutcome,
                      mode: str) -> None:
    """waagent keeps CustomData in /var/lib/waagent (base64 unless told to decode it);
    cloud-init runs it as user-data: the simulation's script writes a marker."""
    if mode in ("cloud-init", "auto"):
        expected = cfg.custom_data_marker.name
        marker = shlex.quote(str(cfg.custom_data_marker))
        deadline = time.monotonic() + CUSTOM_DATA_WAIT
        ok, text = False, ""
        while time.monotonic() < deadline:
            ok, text = _output(session, f"cat {marker}")
            if ok:
                break
            time.sleep(5)
        out.add("custom-data", "pass" if ok and expected in text else "fail",
                "CustomData reached the guest and cloud-init ran it",
                f"{cfg.custom_data_marker} holds {text!r}" if ok else
                f"{cfg.custom_data_marker} not written within {CUSTOM_DATA_WAIT:.0f}s "
                f"(Provisioning.Agent={mode})")
        return
    ok, text = _output(session, f"cat {WAAGENT_CUSTOM_DATA}", sudo=True)
    held = text.encode()
    try:
        decoded = base64.b64decode(held, validate=True) if ok else b""
    except ValueError:
        decoded = b""
    good = ok and (held.strip() == cfg.custom_data.strip() or decoded == cfg.custom_data)
    out.add("custom-data", "pass" if good else "fail",
            "CustomData reached the guest (waagent keeps it in /var/lib/waagent)",
            f"{WAAGENT_CUSTOM_DATA}: {len(held)} bytes, "
            + ("matches the ovf-env's CustomData" if good else
               "missing" if not ok else "differs from the ovf-env's CustomData"))


def allowed(line: str) -> bool:
    return any(p.search(line) for p in ERROR_ALLOW_LIST)


def check_agent_errors(session: SSHSession, out: SimulationOutcome) -> None:
    """ERROR lines in the agents' own logs, less the documented allow-list."""
    command = (
        "for f in /var/log/waagent.log /var/log/cloud-init.log; do "
        "[ -f \"$f\" ] && grep -hE ' ERROR |\\[(ERROR|CRITICAL)\\]' \"$f\"; done; true"
    )
    ok, text = _output(session, command, sudo=True)
    lines = [line for line in text.splitlines() if line.strip()] if ok else []
    bad = [line for line in lines if not allowed(line)]
    evidence = (f"{len(lines)} ERROR line(s), {len(lines) - len(bad)} on the allow-list"
                if ok else f"could not read the agents' logs: {text}")
    if bad:
        evidence += "; first: " + bad[0][:300]
    out.add("agent-errors", "fail" if bad or not ok else "pass",
            "no agent ERROR lines beyond the allow-list", evidence)


def note_resource_disk(session: SSHSession, out: SimulationOutcome) -> None:
    ok, mounts = _output(session, "findmnt -rn -o TARGET,SOURCE | grep -E '^/mnt' || true")
    out.add("resource-disk", "info", "the resource disk (needs VMBus: not simulated)",
            f"mounted: {mounts}" if ok and mounts else
            "no resource disk, as expected without VMBus; provisioning did not need it")


def wait_for_cloud_init(session: SSHSession, out: SimulationOutcome) -> None:
    """cloud-init's later stages (users' passwords and sshd's settings, CustomData) run
    after it reported Ready and after sshd answers: judge the boot once they are done."""
    command = f"timeout {CLOUD_INIT_WAIT:.0f} cloud-init status --wait --long"
    ok, text = _output(session, command, sudo=True, timeout=CLOUD_INIT_WAIT + 30)
    status = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                   if line.startswith("status:")), text.splitlines()[-1] if text else "")
    out.add("cloud-init", "pass" if ok and status == "done" else "fail",
            "cloud-init finished its stages without error",
            f"cloud-init status: {status or 'unknown'}")


def check_first_boot(session: SSHSession, cfg: SimulationConfig,
                     out: SimulationOutcome) -> None:
    """Everything checked over the first boot's SSH session, in a fixed order."""
    mode = _agent_mode(session)
    if mode in ("cloud-init", "auto") and _output(session, "command -v cloud-init")[0]:
        wait_for_cloud_init(session, out)
    check_login(session, cfg, out)
    check_password_auth(session, cfg, out)
    check_custom_data(session, cfg, out, mode)
    check_agent_errors(session, out)
    note_resource_disk(session, out)


__all__ = ["ERROR_ALLOW_LIST", "allowed", "check_first_boot"]
