"""builder.provision against a real OpenSSH server on 127.0.0.1 (tests/sshd.py)."""

from __future__ import annotations

import logging
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import SshServer, sshd_available

from builder.errors import BuildError, UsageError
from builder.models import FileProvisioner, RebootProvisioner, ShellProvisioner
from builder.provision import describe, inline_script, run_provisioners
from builder.vm.ssh import SSHSession, wait_for_ssh

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))


@pytest.fixture(scope="module")
def server() -> Iterator[SshServer]:
    with SshServer() as srv:
        yield srv


def connect(srv: SshServer, timeout: float = 10.0) -> SSHSession:
    return wait_for_ssh("127.0.0.1", srv.port, username="root",
                        host_key=srv.host_key.public_line, pkey=srv.client_key.to_paramiko(),
                        timeout=timeout)


@pytest.fixture()
def session(server: SshServer) -> Iterator[SSHSession]:
    with connect(server) as sess:
        yield sess


def no_reconnect(timeout: float) -> SSHSession:
    raise AssertionError("no reboot expected")


def shell(**kwargs: object) -> ShellProvisioner:
    return ShellProvisioner.model_validate({"type": "shell", **kwargs})


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "builder.provision"]


def test_inline_and_script_in_order(session: SSHSession, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="builder.provision")
    script = tmp_path / f"setup-{secrets.token_hex(4)}.sh"  # unique: other runs may share /tmp
    script.write_text('#!/bin/bash\nset -eu\necho "script sees $GREETING in ${BASH_VERSION%%.*}"\n'
                      f'cat {tmp_path}/first\n')
    out = tmp_path / "first"
    final = run_provisioners(
        [
            shell(inline=[f"echo one > {out}", "echo inline says $GREETING", "echo err >&2"],
                  env={"GREETING": "hello world"}),
            shell(script=script, env={"GREETING": "hi"}, sudo=True, timeout=30),
        ],
        session=session, reconnect=no_reconnect,
    )
    assert final is session
    logged = messages(caplog)
    assert "[provision 1/2 shell] inline says hello world" in logged
    assert "[provision 1/2 shell] err" in logged
    assert "[provision 2/2 shell] script sees hi in 5" in logged
    assert "[provision 2/2 shell] one" in logged
    assert not list(Path("/tmp").glob(f"azbuild-*-{script.name}"))


def test_failing_provisioner_names_itself_and_shows_tail(session: SSHSession) -> None:
    with pytest.raises(BuildError) as err:
        run_provisioners(
            [shell(inline=["true"]),
             shell(inline=["echo step a", "echo boom >&2", "false", "echo never"]),
             shell(inline=["echo not run"])],
            session=session, reconnect=no_reconnect,
        )
    message = str(err.value)
    assert message.startswith("provisioner 2/3 (shell: echo step a ...) failed with exit status 1:")
    assert "    step a\n    boom" in message
    assert "never" not in message


def test_failing_script_is_named(session: SSHSession, tmp_path: Path) -> None:
    script = tmp_path / "broken.sh"
    script.write_text("echo partial output\nexit 3\n")
    with pytest.raises(BuildError, match=r"provisioner 1/1 \(shell: broken\.sh\) failed with "
                                         r"exit status 3:\n    partial output"):
        run_provisioners([shell(script=script)], session=session, reconnect=no_reconnect)


def test_timeout_names_the_provisioner(session: SSHSession) -> None:
    with pytest.raises(BuildError, match=r"provisioner 1/1 \(shell: sleep 30\) failed: command "
                                         r"timed out after 1s"):
        run_provisioners([shell(inline=["sleep 30"], timeout=0.7)], session=session,
                         reconnect=no_reconnect)


def test_bad_env_name_names_the_provisioner(session: SSHSession) -> None:
    """The runner's own guard: a template refuses the name when it is loaded, so the
    provisioner here bypasses validation."""
    bad = ShellProvisioner.model_construct(type="shell", inline=["true"], env={"A-B": "1"})
    with pytest.raises(UsageError, match=r"provisioner 2/2 \(shell: true\): invalid environment"):
        run_provisioners([shell(inline=["true"]), bad], session=session, reconnect=no_reconnect)


def test_file_provisioner(session: SSHSession, tmp_path: Path) -> None:
    src = tmp_path / "motd"
    src.write_text("welcome\n")
    tree = tmp_path / "conf.d"
    tree.mkdir()
    (tree / "a.conf").write_text("a")
    dest = tmp_path / "guest"
    run_provisioners(
        [FileProvisioner(type="file", source=src, destination=f"{dest}/etc/motd", mode="0640",
                         owner="nobody"),
         FileProvisioner(type="file", source=tree, destination=f"{dest}/etc/conf.d")],
        session=session, reconnect=no_reconnect,
    )
    motd = dest / "etc" / "motd"
    assert motd.read_text() == "welcome\n"
    assert stat.S_IMODE(motd.stat().st_mode) == 0o640 and motd.stat().st_uid != 0
    assert (dest / "etc" / "conf.d" / "a.conf").read_text() == "a"


def test_describe() -> None:
    assert describe(shell(inline=["", "apt-get update", "x"])) == "shell: apt-get update ..."
    assert describe(shell(script=Path("/x/setup.sh"))) == "shell: setup.sh"
    assert describe(RebootProvisioner(type="reboot")) == "reboot"
    assert describe(shell(inline=["install-agent"], name="agent")) == \
        "agent (shell: install-agent)"
    assert inline_script(["a", "b"]) == "set -e\na\nb\n"


class FakeMachine:
    """Plays the hardware of a reboot: when the guest asks, sshd and its sessions die, the
    boot id changes (unless told not to), and sshd comes back a moment later."""

    def __init__(self, server: SshServer, tmp: Path, *, really_reboot: bool = True) -> None:
        self.server = server
        self.boot_id = tmp / "boot_id"
        self.boot_id.write_text("boot-1\n")
        self.request = tmp / "reboot-requested"
        self.really_reboot = really_reboot
        self.rebooted = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 15
        while not self.request.exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        if self.really_reboot:
            self.boot_id.write_text("boot-2\n")
        self.server.stop()
        time.sleep(0.5)
        self.server.start(wait=False)
        self.rebooted.set()


def test_reboot_reconnects_to_a_new_boot(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="builder.provision")
    with SshServer() as srv:
        machine = FakeMachine(srv, tmp_path)
        first = connect(srv)
        reconnects: list[float] = []

        def reconnect(timeout: float) -> SSHSession:
            reconnects.append(timeout)
            return connect(srv, timeout=timeout)

        final = run_provisioners(
            [shell(inline=["echo before"]), RebootProvisioner(type="reboot", timeout=20),
             shell(inline=[f"echo after on $(cat {machine.boot_id})"])],
            session=first, reconnect=reconnect,
            reboot_command=f"sleep 0.2; touch {machine.request}",
            boot_id_command=f"cat {machine.boot_id}",
        )
        try:
            assert machine.rebooted.is_set()
            assert final is not first and final.is_active() and not first.is_active()
            assert len(reconnects) == 1 and 0 < reconnects[0] <= 20
            logged = messages(caplog)
            assert "[provision 2/3 reboot] rebooting the guest (boot id boot-1)" in logged
            assert "[provision 2/3 reboot] back up (boot id boot-2)" in logged
            assert "[provision 3/3 shell] after on boot-2" in logged
        finally:
            final.close()


def test_reboot_that_never_goes_down(session: SSHSession) -> None:
    started = time.monotonic()
    with pytest.raises(BuildError, match=r"provisioner 1/1 \(reboot\) failed: the guest did not "
                                         r"go down within 2s"):
        run_provisioners([RebootProvisioner(type="reboot", timeout=1.5)], session=session,
                         reconnect=no_reconnect, reboot_command="true")
    assert time.monotonic() - started < 6


def test_sshd_restart_is_not_a_reboot(tmp_path: Path) -> None:
    with SshServer() as srv:
        machine = FakeMachine(srv, tmp_path, really_reboot=False)
        # 10 s, not less: under a loaded CI machine sshd's restart and one reconnect alone
        # can take 3 s, and the build would rightly say it never came back instead.
        with pytest.raises(BuildError, match=r"never rebooted within 10s \(boot id boot-1 "
                                             r"unchanged\)"):
            run_provisioners(
                [RebootProvisioner(type="reboot", timeout=10)], session=connect(srv),
                reconnect=lambda timeout: connect(srv, timeout=timeout),
                reboot_command=f"touch {machine.request}",
                boot_id_command=f"cat {machine.boot_id}",
            )


def test_the_planned_scripts_run_not_what_the_files_hold_by_then(
    session: SSHSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The build runs the plan's text (what `render` showed), even if a script file changed
    after the plan was made; a provisioner without a planned script runs its own."""
    caplog.set_level(logging.INFO, logger="builder.provision")
    script = tmp_path / f"s-{secrets.token_hex(4)}.sh"
    script.write_text("#!/bin/sh\necho changed since\n")
    run_provisioners(
        [shell(script=script), shell(inline=["echo inline"]), shell(inline=["echo own"])],
        session=session, reconnect=no_reconnect,
        scripts={0: "#!/bin/sh\necho as planned\n", 1: "set -e\necho planned inline\n"},
    )
    lines = messages(caplog)
    assert "[provision 1/3 shell] as planned" in lines
    assert "[provision 2/3 shell] planned inline" in lines
    assert "[provision 3/3 shell] own" in lines
    assert not any("changed since" in line for line in lines)
