"""builder.vm.ssh against a real OpenSSH server on 127.0.0.1 (tests/sshd.py)."""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import SshServer, free_port, sshd_available

from builder.errors import BuildError, UsageError
from builder.vm.keys import KeyPair
from builder.vm.ssh import CommandTimeout, ConnectionLost, SSHSession, wait_for_ssh, wrap_command

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))


@pytest.fixture(scope="module")
def server() -> Iterator[SshServer]:
    with SshServer() as srv:
        yield srv


@pytest.fixture()
def own_server() -> Iterator[SshServer]:
    """A server a test may stop, freeze or restart."""
    with SshServer() as srv:
        yield srv


def connect(srv: SshServer, **kwargs: object) -> SSHSession:
    args: dict[str, object] = {
        "username": "root",
        "host_key": srv.host_key.public_line,
        "pkey": srv.client_key.to_paramiko(),
        "timeout": 10.0,
    }
    args.update(kwargs)
    return wait_for_ssh("127.0.0.1", srv.port, **args)  # type: ignore[arg-type]


@pytest.fixture()
def session(server: SshServer) -> Iterator[SSHSession]:
    with connect(server) as sess:
        yield sess


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """Accepts TCP connections (the kernel completes them) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


# ---------------------------------------------------------------- readiness


def test_ready_by_banner(server: SshServer) -> None:
    with connect(server) as sess:
        assert sess.first_banner_at is not None and sess.ready_at is not None
        assert sess.ready_at >= sess.first_banner_at
        assert sess.is_active() and sess.is_alive()
        assert sess.check_output("id -un") == "root"


def test_waits_for_a_server_that_starts_later() -> None:
    srv = SshServer()
    try:
        timer = threading.Timer(0.7, srv.start, kwargs={"wait": False})
        started = time.monotonic()
        timer.start()
        with connect(srv, timeout=15.0) as sess:
            assert time.monotonic() - started >= 0.7
            assert sess.check_output("echo up") == "up"
    finally:
        timer.join()
        srv.close()


def test_silent_port_times_out_with_no_banner(silent_port: int) -> None:
    key = KeyPair.generate()
    started = time.monotonic()
    with pytest.raises(BuildError) as err:
        wait_for_ssh("127.0.0.1", silent_port, username="root", host_key=key.public_line,
                     pkey=key.to_paramiko(), timeout=1.0,
                     failure_context=lambda: "serial: kernel panic")
    assert time.monotonic() - started < 2.0
    message = str(err.value)
    assert f"SSH on 127.0.0.1:{silent_port} not ready after 1s" in message
    assert "last seen: connected but no banner" in message
    assert message.endswith("serial: kernel panic")


def test_waiting_on_a_silent_port_does_not_spin(silent_port: int) -> None:
    """QEMU's user networking accepts every connection at once and the guest's sshd
    answers only when it is up: azbuild waits without a busy loop, leaving the
    host's cores to the guests (it once burned one whole core for the whole wait)."""
    key = KeyPair.generate()
    cpu = time.thread_time()  # this thread: other tests leave threads running
    with pytest.raises(BuildError):
        wait_for_ssh("127.0.0.1", silent_port, username="root", host_key=key.public_line,
                     pkey=key.to_paramiko(), timeout=2.0)
    assert time.thread_time() - cpu < 0.5


def test_nothing_listening_times_out_with_no_tcp() -> None:
    key = KeyPair.generate()
    port = free_port()
    started = time.monotonic()
    with pytest.raises(BuildError, match=r"last seen: no TCP connection \(connection refused\)"):
        wait_for_ssh("127.0.0.1", port, username="root", host_key=key.public_line,
                     pkey=key.to_paramiko(), timeout=0.6)
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("greeting", "expected"),
    [
        # QEMU's forward when the guest is up but nothing listens on 22: accept, then close.
        (b"", "last seen: connected but no banner (connection closed by the peer)"),
        (b"SSH-2.0-Broken_1.0\r\n", "last seen: banner but handshake failed"),
    ],
)
def test_accept_then_hang_up(greeting: bytes, expected: str) -> None:
    """A server that accepts, maybe greets, and hangs up is retried, then reported as such."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    port = int(listener.getsockname()[1])
    stop = threading.Event()
    served: list[int] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(greeting)
                served.append(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    key = KeyPair.generate()
    try:
        with pytest.raises(BuildError) as err:
            wait_for_ssh("127.0.0.1", port, username="root", host_key=key.public_line,
                         pkey=key.to_paramiko(), timeout=1.0)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert expected in str(err.value)
    assert len(served) >= 2  # retried, not given up after the first failure


def test_wrong_host_key_fails_at_once(server: SshServer) -> None:
    impostor = KeyPair.generate()
    started = time.monotonic()
    with pytest.raises(BuildError) as err:
        connect(server, host_key=impostor.public_line, timeout=30.0)
    assert time.monotonic() - started < 3.0
    message = str(err.value)
    assert "host key mismatch" in message
    assert f"expected ssh-ed25519 {impostor.fingerprint}" in message
    assert f"presented ssh-ed25519 {server.host_key.fingerprint}" in message


def test_host_key_of_another_type_fails_at_once(server: SshServer, tmp_path: Path) -> None:
    import paramiko

    rsa = paramiko.RSAKey.generate(2048)
    started = time.monotonic()
    with pytest.raises(BuildError, match="offers no ssh-rsa host key"):
        connect(server, host_key=f"ssh-rsa {rsa.get_base64()}", timeout=30.0)
    assert time.monotonic() - started < 3.0


def test_authentication_refused(server: SshServer) -> None:
    stranger = KeyPair.generate()
    with pytest.raises(BuildError) as err:
        connect(server, pkey=stranger.to_paramiko(), timeout=1.5)
    assert "last seen: authentication refused (user root: publickey:" in str(err.value)


def test_password_not_allowed_is_named(server: SshServer) -> None:
    with pytest.raises(BuildError, match="password not allowed; server allows publickey"):
        connect(server, pkey=None, password="secret", timeout=1.0)


def test_no_credentials_is_a_usage_error(server: SshServer) -> None:
    with pytest.raises(UsageError):
        connect(server, pkey=None)


def test_dead_domain_aborts_at_once(silent_port: int) -> None:
    key = KeyPair.generate()
    flips = time.monotonic() + 0.3
    started = time.monotonic()
    with pytest.raises(BuildError) as err:
        wait_for_ssh("127.0.0.1", silent_port, username="root", host_key=key.public_line,
                     pkey=key.to_paramiko(), timeout=60.0,
                     alive=lambda: time.monotonic() < flips,
                     failure_context=lambda: "last serial line")
    assert time.monotonic() - started < 1.0
    assert "the guest stopped while waiting for SSH" in str(err.value)
    assert str(err.value).endswith("last serial line")


def test_progress_lines(silent_port: int, caplog: pytest.LogCaptureFixture) -> None:
    key = KeyPair.generate()
    caplog.set_level(logging.INFO, logger="builder.vm.ssh")
    with pytest.raises(BuildError):
        wait_for_ssh("127.0.0.1", silent_port, username="root", host_key=key.public_line,
                     pkey=key.to_paramiko(), timeout=1.0, progress_every=0.3)
    progress = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith(f"waiting for SSH on 127.0.0.1:{silent_port} (")]
    assert len(progress) >= 2
    assert "last seen: connected but no banner" in progress[-1]


# ---------------------------------------------------------------- run


def test_run_streams_lines_live(session: SSHSession) -> None:
    seen: list[tuple[float, str]] = []
    status = session.run("echo first; echo to-stderr >&2; sleep 0.6; printf 'last'; exit 7",
                         on_line=lambda line: seen.append((time.monotonic(), line)))
    assert status == 7
    assert [line for _, line in seen] == ["first", "to-stderr", "last"]
    assert seen[2][0] - seen[0][0] >= 0.5  # the first line arrived before the command ended


def test_run_keeps_a_tail(session: SSHSession) -> None:
    tail: collections.deque[str] = collections.deque(maxlen=3)
    assert session.run("seq 1 100", tail=tail, on_line=lambda _: None) == 0
    assert list(tail) == ["98", "99", "100"]


def test_run_env_and_quoting(session: SSHSession) -> None:
    value = "a b 'quoted' \"double\" $HOME"
    out = session.check_output('printf "%s|%s" "$ONE" "$TWO"', env={"ONE": value, "TWO": "2"})
    assert out == f"{value}|2"
    with pytest.raises(UsageError, match="invalid environment variable name"):
        session.run("true", env={"BAD-NAME": "x"})


def test_sudo_is_nothing_for_root(session: SSHSession) -> None:
    assert session.check_output("id -u", sudo=True, env={"X": "1"}) == "0"


def test_wrap_command_exact() -> None:
    assert wrap_command("echo hi", root=True, sudo=True) == "/bin/sh -c 'echo hi'"
    assert wrap_command("echo $A", root=False, sudo=True, env={"A": "x y"}) == (
        "sudo -n env 'A=x y' /bin/sh -c 'echo $A'"
    )
    assert wrap_command("true", root=False, sudo=False, env={"A": "1"}) == (
        "env A=1 /bin/sh -c true"
    )


def test_check_output_is_stdout_only(session: SSHSession) -> None:
    assert session.check_output("echo warning >&2; echo 0; echo more >&2") == "0"
    err: list[str] = []
    out: list[str] = []
    big = "head -c 300000 /dev/zero | tr '\\0' e >&2; echo; echo done"
    assert session.run(big, on_line=out.append, on_stderr=err.append) == 0
    assert out == ["", "done"] and sum(len(line) for line in err) == 300000


def test_check_output_failure_shows_tail(session: SSHSession) -> None:
    with pytest.raises(BuildError) as err:
        session.check_output("echo why-it-failed; echo on-stderr >&2; exit 4")
    message = str(err.value)
    assert "exit status 4" in message and "why-it-failed" in message and "on-stderr" in message


def test_run_timeout(session: SSHSession) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"timed out after 1s.*\n    before"):
        session.run("echo before; sleep 20", timeout=0.8, on_line=lambda _: None)
    assert time.monotonic() - started < 3.0
    assert session.check_output("echo still usable") == "still usable"


def test_run_timeout_while_output_flows(session: SSHSession) -> None:
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        session.run("while :; do echo tick; sleep 0.01; done", timeout=0.6, on_line=lines.append)
    assert time.monotonic() - started < 2.5
    assert len(lines) > 5


def test_dropped_connection_raises(own_server: SshServer) -> None:
    sess = connect(own_server)
    timer = threading.Timer(0.5, own_server.stop)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionLost,
                           match=r"connection to 127\.0\.0\.1:\d+ lost.*\n    x"):
            sess.run("echo x; sleep 30", on_line=lambda _: None)
        assert time.monotonic() - started < 5.0
    finally:
        timer.join()
        sess.close()


def test_frozen_peer_detected_by_keepalive(own_server: SshServer) -> None:
    sess = connect(own_server, keepalive=0.3, dead_after=1.0)
    frozen: list[int] = []

    def freeze() -> None:
        for pid in own_server.session_pids():
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)

    timer = threading.Timer(0.3, freeze)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionLost, match="no answer for 1s"):
            sess.run("sleep 30")
        assert time.monotonic() - started < 5.0
        assert frozen
    finally:
        timer.join()
        sess.close()
        own_server.stop()


def test_run_detached_outlives_the_session(server: SshServer, tmp_path: Path) -> None:
    marker = tmp_path / "done"
    with connect(server) as sess:
        started = time.monotonic()
        sess.run_detached(f"sleep 0.5; echo finished > {marker}")
        assert time.monotonic() - started < 0.5 + 0.3
    assert not marker.exists()
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "finished\n"


# ---------------------------------------------------------------- upload


def test_upload_file_with_mode_and_owner(session: SSHSession, tmp_path: Path) -> None:
    before = set(Path("/tmp").glob("azbuild-upload.*"))
    src = tmp_path / "app.conf"
    src.write_text("key = value\n")
    src.chmod(0o640)
    dest = tmp_path / "guest" / "etc" / "app.conf"
    session.upload(src, str(dest))
    assert dest.read_text() == "key = value\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert dest.stat().st_uid == 0
    session.upload(src, str(dest), mode=0o600, owner="nobody:nogroup")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert dest.stat().st_uid != 0
    session.upload(src, str(tmp_path / "guest") + "/")
    assert (tmp_path / "guest" / "app.conf").read_text() == "key = value\n"
    assert_no_new_staging(before)


def test_upload_tree_preserves_modes(session: SSHSession, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (src / "bin" / "tool").chmod(0o755)
    (src / "secret").write_text("s")
    (src / "secret").chmod(0o600)
    (src / "link").symlink_to("bin/tool")
    (src / "empty").mkdir(mode=0o700)
    dest = tmp_path / "guest" / "opt"
    dest.mkdir(parents=True)
    (dest / "kept").write_text("already there")
    session.upload(src, str(dest), mode=0o750, owner="nobody")
    assert (dest / "kept").read_text() == "already there"
    assert stat.S_IMODE((dest / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "empty").stat().st_mode) == 0o700
    assert stat.S_IMODE(dest.stat().st_mode) == 0o750
    assert os.readlink(dest / "link") == "bin/tool"
    assert (dest / "secret").stat().st_uid != 0
    assert session.check_output(f"{dest}/link") == "tool"


def test_failed_upload_leaves_no_staging(session: SSHSession, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    before = set(Path("/tmp").glob("azbuild-upload.*"))
    with pytest.raises(BuildError, match=r"failed in the guest \(exit status 1\)"):
        session.upload(src, f"{blocker}/sub/f")
    assert_no_new_staging(before)


def assert_no_new_staging(before: set[Path]) -> None:
    """Other test runs on this machine may be uploading right now: theirs vanish soon."""
    deadline = time.monotonic() + 3
    while set(Path("/tmp").glob("azbuild-upload.*")) - before:
        assert time.monotonic() < deadline, "a staging directory was left behind"
        time.sleep(0.1)


def test_upload_missing_source(session: SSHSession, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="upload source not found"):
        session.upload(tmp_path / "nope", "/tmp/x")
