"""Why a simulated first boot failed, read from the guest's disk after the VM stopped.

When no Ready report came, or SSH never answered, nothing can be asked inside the guest.
Its overlay still holds what its first boot wrote: the agents' logs, the journal, the
configuration they read. This reads them (libguestfs, read only, on the azbuild's own
accelerator decision) and names the cause where a known one shows, so that a failed
simulation says what to fix and not only what did not happen.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from builder.vm.appliance import Drive, launch

log = logging.getLogger("builder.simulate")

CLOUD_INIT_BINARIES = ("/usr/bin/cloud-init", "/usr/local/bin/cloud-init")
CLOUD_CFG_FILES = ("/etc/cloud/cloud.cfg",)
CLOUD_CFG_DIR = "/etc/cloud/cloud.cfg.d"
HOST_KEY_RE = re.compile(r"^ssh_host_\w+_key$")
_DATASOURCE_LIST = re.compile(r"^\s*datasource_list\s*:\s*\[([^\]]*)\]", re.MULTILINE)
JOURNAL_DIR = "/var/log/journal"


@dataclass(frozen=True)
class GuestState:
    """What the first boot left on the disk, as the diagnosis reads it."""

    waagent_conf: dict[str, str]
    cloud_init_installed: bool
    cloud_init_disabled: bool
    datasource_lists: list[tuple[str, list[str]]]  # (file, sources) where a list is set
    host_keys: list[str]
    waagent_log: str
    cloud_init_log: str
    journal: str  # the first boot's journal as text ("" when it could not be read)


def parse_conf(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def datasource_list(text: str) -> list[str] | None:
    match = _DATASOURCE_LIST.search(text)
    if match is None:
        return None
    return [s.strip().strip("'\"") for s in match.group(1).split(",") if s.strip()]


def causes(state: GuestState, failed: set[str]) -> list[str]:
    """The known causes that the state shows, for the failed assertion ids in `failed`."""
    found: list[str] = []
    agent = state.waagent_conf.get("Provisioning.Agent", "auto").lower()
    if "ready" in failed:
        if "cloud-init appears to be installed and enabled" in state.waagent_log:
            found.append("waagent refused to provision because cloud-init-local.service is "
                         "enabled (it checks the unit, not /etc/cloud/cloud-init.disabled): in "
                         "waagent mode disable cloud-init's units too (R10)")
        elif agent == "cloud-init" and not state.cloud_init_installed:
            found.append("/etc/waagent.conf says Provisioning.Agent=cloud-init, but cloud-init "
                         "is not installed: waagent waits for cloud-init to provision, and "
                         "nothing ever reports Ready")
        elif agent in ("cloud-init", "auto") and state.cloud_init_installed \
                and state.cloud_init_disabled:
            found.append(f"Provisioning.Agent={agent}, but cloud-init is disabled "
                         "(/etc/cloud/cloud-init.disabled): nothing provisions the VM")
        elif agent in ("cloud-init", "auto") and state.cloud_init_installed:
            lists = [(f, s) for f, s in state.datasource_lists if "Azure" not in s]
            if state.datasource_lists and state.datasource_lists[-1] in lists:
                name, sources = state.datasource_lists[-1]
                found.append(f"cloud-init's datasource_list in {name} is "
                             f"[{', '.join(sources)}], without Azure: cloud-init never reads "
                             "the ovf-env and never reports Ready")
    if "ssh" in failed:
        if "no hostkeys available" in state.journal:
            keys = ("the agent made host keys later, but ssh.service had given up"
                    if state.host_keys else "and nothing made any")
            found.append("sshd found no host keys when it started on the first boot "
                         f"(\"no hostkeys available\"), {keys}: R15, make the keys before "
                         "sshd starts")
        elif not state.host_keys:
            found.append("the disk holds no SSH host keys after the first boot: R15")
    if "sudo" in failed:
        found.append(_sudo_cause(state))
    return [c for c in found if c]


def _sudo_cause(state: GuestState) -> str:
    lines = [line for line in state.waagent_log.splitlines() if "sudoers" in line.lower()]
    if lines:
        return "the agent's sudoers step: " + lines[-1].strip()[:200]
    return ("the user the agent created has no sudo: check that /etc/sudoers includes "
            "/etc/sudoers.d (where both agents write the user's rule)")


def _read(g: Any, path: str, limit: int = 2_000_000) -> str:
    try:
        if not g.is_file(path):
            return ""
        size = g.filesize(path)
        data = g.pread(path, min(size, limit), max(0, size - limit))
        return bytes(data).decode(errors="replace")
    except RuntimeError:
        return ""


def _journal_text(g: Any) -> str:
    """The journal of the boot the simulation made, as text, through the host's
    journalctl (empty when either is missing)."""
    if shutil.which("journalctl") is None or not g.is_dir(JOURNAL_DIR):
        return ""
    with tempfile.TemporaryDirectory(prefix="azbuild-journal-") as tmp:
        try:
            g.copy_out(JOURNAL_DIR, tmp)
        except RuntimeError:
            return ""
        try:
            proc = subprocess.run(
                ["journalctl", "--directory", str(Path(tmp) / "journal"), "--boot", "--no-pager",
                 "-o", "short-monotonic"],
                capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return proc.stdout


def read_state(disk: Path, accelerator: Literal["kvm", "tcg"]) -> GuestState:
    g = launch([Drive(disk, "qcow2")], accelerator)
    try:
        roots = g.inspect_os()
        if not roots:
            raise RuntimeError("no operating system found on the disk")
        root = roots[0]
        for mountpoint, device in sorted(g.inspect_get_mountpoints(root).items(),
                                         key=lambda item: len(item[0])):
            with contextlib.suppress(RuntimeError):  # a mount that fails is read as absent
                g.mount_ro(device, mountpoint)
        lists: list[tuple[str, list[str]]] = []
        cfg_files = list(CLOUD_CFG_FILES)
        if g.is_dir(CLOUD_CFG_DIR):
            cfg_files += [f"{CLOUD_CFG_DIR}/{n}" for n in sorted(g.ls(CLOUD_CFG_DIR))
                          if n.endswith(".cfg")]
        for name in cfg_files:
            sources = datasource_list(_read(g, name))
            if sources is not None:
                lists.append((name, sources))
        return GuestState(
            waagent_conf=parse_conf(_read(g, "/etc/waagent.conf")),
            cloud_init_installed=any(g.is_file(p) for p in CLOUD_INIT_BINARIES),
            cloud_init_disabled=g.exists("/etc/cloud/cloud-init.disabled"),
            datasource_lists=lists,
            host_keys=[n for n in g.ls("/etc/ssh") if HOST_KEY_RE.match(n)]
            if g.is_dir("/etc/ssh") else [],
            waagent_log=_read(g, "/var/log/waagent.log"),
            cloud_init_log=_read(g, "/var/log/cloud-init.log"),
            journal=_journal_text(g),
        )
    finally:
        g.close()


def diagnose(disk: Path, accelerator: Literal["kvm", "tcg"], failed: set[str]) -> list[str]:
    """Known causes of the failed assertions, read from the stopped VM's disk; a reading
    that fails is said, never raised: the simulation's verdict stands either way."""
    log.info("reading the guest's disk to name the cause of: %s", ", ".join(sorted(failed)))
    try:
        state = read_state(disk, accelerator)
    except Exception as exc:  # the diagnosis is a courtesy on top of the verdict
        return [f"could not read the guest's disk to name the cause: {exc}"]
    found = causes(state, failed)
    return found or ["no known cause found on the disk; see the console and the fabric's "
                     "log (--keep-logs)"]


__all__ = ["GuestState", "causes", "datasource_list", "diagnose", "parse_conf", "read_state"]
