"""Runs the template's provisioners in order over SSH: shell, file, reboot.

Every line a provisioner prints is logged live with its position, e.g.
`[provision 2/3 shell] ...`; a failure names the provisioner (index, type, the
command or script) and shows the end of its output.
"""

from __future__ import annotations

import collections
import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from builder.errors import BuildError, UsageError, indent
from builder.models import FileProvisioner, RebootProvisioner, ShellProvisioner
from builder.quoting import shell_quote
from builder.vm.ssh import SSHSession

log = logging.getLogger(__name__)

TAIL_LINES = 30
GUEST_TMP = "/tmp"
REBOOT_COMMAND = "sleep 1; systemctl reboot || reboot || shutdown -r now"
"""Run detached as root; the pause lets the launching SSH command return first."""
BOOT_ID_COMMAND = "cat /proc/sys/kernel/random/boot_id"
"""A fresh random value on every boot: proves a reboot really happened."""

AnyProvisioner = ShellProvisioner | FileProvisioner | RebootProvisioner


def describe(provisioner: AnyProvisioner) -> str:
    """`shell: apt-get update ...`, `shell: setup.sh`, `file: a -> /etc/a`, `reboot`; with
    the provisioner's name first when it has one: `agent (shell: setup.sh)`."""
    text = _what(provisioner)
    return f"{provisioner.name} ({text})" if provisioner.name else text


def _what(provisioner: AnyProvisioner) -> str:
    if isinstance(provisioner, ShellProvisioner):
        if provisioner.script is not None:
            return f"shell: {provisioner.script.name}"
        first = next((c.strip() for c in provisioner.inline or [] if c.strip()), "")
        if len(first) > 60:
            first = first[:57] + "..."
        many = len([c for c in provisioner.inline or [] if c.strip()]) > 1
        return f"shell: {first}" + (" ..." if many and not first.endswith("...") else "")
    if isinstance(provisioner, FileProvisioner):
        return f"file: {provisioner.source.name} -> {provisioner.destination}"
    return "reboot"


def inline_script(commands: Sequence[str]) -> str:
    """One script from the inline commands: stops at the first failing command."""
    return "set -e\n" + "\n".join(commands) + "\n"


def run_provisioners(
    provisioners: Sequence[AnyProvisioner],
    *,
    session: SSHSession,
    reconnect: Callable[[float], SSHSession],
    reboot_command: str = REBOOT_COMMAND,
    boot_id_command: str = BOOT_ID_COMMAND,
    first: int = 1,
    total: int | None = None,
    scripts: Mapping[int, str] | None = None,
) -> SSHSession:
    """Run each provisioner in order; return the session that is live at the end.
    `first` and `total` number them when they are a part of the template's list.
    `scripts` are the build plan's shell scripts by 0-based index in the template's list
    (the provisioner numbered n is index n - 1): what runs, whatever the script file
    holds by then. Without one, a shell provisioner runs its own inline commands or file.

    `reconnect(timeout)` must return a new authenticated session within
    timeout seconds (or raise BuildError); it is called after a reboot. The
    caller owns every session (the old one is closed here after a reboot).
    """
    total = len(provisioners) if total is None else total
    for number, provisioner in enumerate(provisioners, start=first):
        label = f"provision {number}/{total} {provisioner.type}"
        name = f"provisioner {number}/{total} ({describe(provisioner)})"
        log.info("[%s] %s", label, describe(provisioner))
        started = time.monotonic()
        try:
            if isinstance(provisioner, ShellProvisioner):
                _shell(session, provisioner, label, name, (scripts or {}).get(number - 1))
            elif isinstance(provisioner, FileProvisioner):
                session.upload(
                    provisioner.source,
                    provisioner.destination,
                    mode=int(provisioner.mode, 8) if provisioner.mode else None,
                    owner=provisioner.owner,
                )
            else:
                session = _reboot(session, provisioner, reconnect, label,
                                  reboot_command=reboot_command, boot_id_command=boot_id_command)
        except BuildError as exc:
            if exc.message.startswith(name):
                raise
            raise BuildError(f"{name} failed: {exc.message}", exc.hint) from exc
        except UsageError as exc:
            raise UsageError(f"{name}: {exc.message}", exc.hint) from exc
        log.info("[%s] done in %.1fs", label, time.monotonic() - started)
    return session


def _shell(session: SSHSession, provisioner: ShellProvisioner, label: str, name: str,
           planned: str | None = None) -> None:
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def on_line(line: str) -> None:
        log.info("[%s] %s", label, line)

    remote_script: str | None = None
    if provisioner.script is not None:
        remote_script = f"{GUEST_TMP}/azbuild-{secrets.token_hex(4)}-{provisioner.script.name}"
        # Owned by the login user, so it runs with or without sudo; the shebang decides the
        # interpreter (a script without one runs under /bin/sh).
        _upload_script(session, provisioner.script, planned, remote_script)
        command = shell_quote(remote_script)
    else:
        command = planned if planned is not None else inline_script(provisioner.inline or [])
    try:
        status = session.run(command, sudo=provisioner.sudo, env=dict(provisioner.env),
                             timeout=provisioner.timeout, on_line=on_line, tail=tail)
    finally:
        if remote_script is not None and session.is_active():
            # Best effort: a failure here must never hide the provisioner's own error.
            try:
                session.run(f"rm -f -- {shell_quote(remote_script)}", sudo=True, timeout=60,
                            on_line=lambda line: log.debug("[%s] cleanup: %s", label, line))
            except BuildError as exc:
                log.debug("[%s] could not remove %s: %s", label, remote_script, exc)
    if status != 0:
        raise BuildError(
            f"{name} failed with exit status {status}"
            + (":\n" + indent(tail) if tail else " (no output)")
        )


def _upload_script(session: SSHSession, script: Path, planned: str | None,
                   remote: str) -> None:
    """The planned text of `script` (the file itself without a plan) as `remote`."""
    if planned is None:
        session.upload(script, remote, mode=0o700, owner=session.username)
        return
    with tempfile.TemporaryDirectory(prefix="azbuild-script-") as tmp:
        local = Path(tmp) / script.name
        local.write_bytes(planned.encode(errors="surrogateescape"))  # the file's own bytes
        session.upload(local, remote, mode=0o700, owner=session.username)


def _reboot(
    session: SSHSession,
    provisioner: RebootProvisioner,
    reconnect: Callable[[float], SSHSession],
    label: str,
    *,
    reboot_command: str,
    boot_id_command: str,
) -> SSHSession:
    old_boot = session.check_output(boot_id_command, timeout=60).strip()
    deadline = time.monotonic() + provisioner.timeout
    log.info("[%s] rebooting the guest (boot id %s)", label, old_boot)
    session.run_detached(reboot_command, sudo=True)
    # The old connection must die: that is the guest going down, not just a command ending.
    while session.is_alive(timeout=2.0):
        if time.monotonic() >= deadline:
            session.close()
            raise BuildError(
                f"the guest did not go down within {provisioner.timeout:.0f}s of the reboot "
                f"command: {reboot_command}"
            )
        time.sleep(0.2)
    session.close()
    log.info("[%s] the guest went down; reconnecting", label)
    same_boot = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if same_boot:
                raise BuildError(
                    f"SSH came back but the guest never rebooted within "
                    f"{provisioner.timeout:.0f}s (boot id {old_boot} unchanged)"
                )
            raise BuildError(
                f"the guest did not come back from the reboot within {provisioner.timeout:.0f}s"
            )
        new = reconnect(remaining)
        new_boot = new.check_output(boot_id_command, timeout=60).strip()
        if new_boot != old_boot:
            log.info("[%s] back up (boot id %s)", label, new_boot)
            return new
        # The same boot: sshd restarted without the machine rebooting (or not yet).
        same_boot = True
        log.info("[%s] reconnected, but the boot id is unchanged; waiting for the reboot", label)
        new.close()
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
