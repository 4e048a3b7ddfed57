"""SSH to the build's guest with paramiko: readiness by banner, a pinned host key, run, upload.

Readiness. Through QEMU's user-mode port forward a TCP connect succeeds as soon
as QEMU runs, whether or not anything listens in the guest, so an open port
means nothing: the guest is ready when an `SSH-` banner has been read. The wait
keeps up to MAX_PROBES probe connections open, starting a new one every
PROBE_INTERVAL while fewer are open; a probe ends on refusal, on EOF/reset, or
after PROBE_BANNER_WAIT of silence. One probe, the oldest connected one, is
patient (PATIENT_BANNER_WAIT): a starved TCG guest's sshd may need longer than
the others get to send its banner, while the short-lived ones keep offering
fresh connections (QEMU retries a lost SYN to the guest only with growing
backoff). The banner is only *peeked* at, so the very connection that saw it
is handed to paramiko for the handshake (no second connection, no second sshd
fork in a slow guest).

Host key. Only the given public host key is accepted; paramiko is told to
negotiate that key's algorithm alone, and a guest presenting another key (or
none of that type) fails at once, naming the expected and presented keys.

Liveness. While a command runs, a quiet connection is checked with an SSH
global request that the server must answer; no answer within `dead_after`
seconds means the guest is gone, and `run` raises instead of hanging.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import secrets
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import paramiko

from builder.errors import BuildError, UsageError, indent
from builder.quoting import shell_join, shell_quote
from builder.vm.keys import fingerprint_blob, parse_public_line
from builder.waits import FIRST_REPORT, WaitReporter

log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.1
"""A new probe connection is started at least this often while fewer than MAX_PROBES are open."""
PROBE_CONNECT_TIMEOUT = 1.0
PROBE_BANNER_WAIT = 3.0
"""A connected probe that stays silent this long is closed (a slow guest sshd gets this long)."""
PATIENT_BANNER_WAIT = 30.0
"""How long the oldest connected probe waits for a banner."""
MAX_PROBES = 3
"""Well below sshd's default MaxStartups (10); each connection costs the guest an sshd fork."""
HANDSHAKE_TIMEOUT = 10.0
AUTH_TIMEOUT = 10.0
AUTH_RETRY_DELAY = 1.0
"""Pause after a refused login (cloud-init may not have installed the key yet)."""
TAIL_LINES = 40
_ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _always_alive() -> bool:
    return True


def _no_context() -> str:
    return ""


def _host_key_algorithms(key_type: str) -> list[str]:
    if key_type == "ssh-rsa":
        return ["rsa-sha2-512", "rsa-sha2-256"]
    return [key_type]


def _short(command: str, limit: int = 80) -> str:
    first = command.strip().splitlines()[0] if command.strip() else ""
    more = first != command.strip()
    if len(first) > limit:
        first, more = first[: limit - 3], True
    return first + ("..." if more else "")



def wrap_command(
    command: str, *, root: bool, sudo: bool = False, env: Mapping[str, str] | None = None
) -> str:
    """The exact remote command line: `[sudo -n] [env K=V ...] /bin/sh -c COMMAND`.

    sudo is dropped for root (it may not even be installed). Variables are set
    with `env` after sudo, so they survive sudo's env_reset without `-E`, and
    the command always runs under /bin/sh whatever the user's login shell is.
    """
    argv: list[str] = []
    if sudo and not root:
        argv += ["sudo", "-n"]
    if env:
        for name in env:
            if not name or name[0].isdigit() or not set(name) <= _ENV_NAME_CHARS:
                raise UsageError(f"invalid environment variable name: {name!r}")
        argv += ["env", *(f"{name}={value}" for name, value in env.items())]
    argv += ["/bin/sh", "-c", command]
    return shell_join(argv)


# --------------------------------------------------------------------------------------------
# waiting for the guest


@dataclass
class _Probe:
    sock: socket.socket
    started: float
    connected_at: float | None = None


class _Progress:
    """What the wait has seen: the latest observation and the furthest stage reached."""

    STAGES = ("no TCP connection", "connected but no banner", "banner but handshake failed",
              "authentication refused")

    def __init__(self) -> None:
        self.last = "no TCP connection (nothing tried yet)"
        self.furthest = -1
        self.furthest_text = ""
        self.first_banner_at: float | None = None
        self.longest_silence = 0.0

    def saw(self, stage: int, detail: str) -> None:
        text = f"{self.STAGES[stage]} ({detail})" if detail else self.STAGES[stage]
        if text != self.last:
            log.debug("ssh wait: %s", text)
        self.last = text
        if stage >= self.furthest:
            self.furthest, self.furthest_text = stage, text

    def describe(self) -> str:
        text = f"last seen: {self.last}"
        if self.furthest_text and self.furthest_text != self.last:
            text += f"; furthest: {self.furthest_text}"
        return text


def _peek_banner(sock: socket.socket) -> tuple[str, bytes]:
    """Peek: ('banner', line), ('eof', b''), ('partial', data), ('other', line), ('error', why)."""
    try:
        data = sock.recv(4096, socket.MSG_PEEK)
    except BlockingIOError:
        return "partial", b""
    except OSError as exc:
        return "error", (exc.strerror or str(exc)).encode()
    if not data:
        return "eof", b""
    for line in data.split(b"\n")[:-1] if b"\n" in data else []:
        if line.startswith(b"SSH-"):
            return "banner", line.rstrip(b"\r")
    if data.startswith(b"SSH-"):
        return "banner", data.split(b"\n")[0].rstrip(b"\r")
    if (b"\n" in data and len(data.split(b"\n")) > 20) or len(data) >= 4096:
        return "other", data.split(b"\n")[0][:60]
    return "partial", data


def _wait_for_banner(
    host: str,
    port: int,
    deadline: float,
    progress: _Progress,
    alive: Callable[[], bool],
    on_tick: Callable[[], None],
) -> socket.socket | None:
    """Probe until a connection has a banner waiting: that socket (blocking); None at deadline."""
    sel = selectors.DefaultSelector()
    probes: dict[socket.socket, _Probe] = {}
    next_probe = time.monotonic()

    def drop(sock: socket.socket) -> None:
        sel.unregister(sock)
        del probes[sock]
        sock.close()

    checked_alive = 0.0
    try:
        while True:
            now = time.monotonic()
            if now - checked_alive >= PROBE_INTERVAL:  # alive() may be a libvirt call
                if not alive():
                    raise _NotAlive()
                checked_alive = now
            if now >= deadline:
                silent = [now - p.connected_at for p in probes.values() if p.connected_at]
                if silent:
                    longest = max(*silent, progress.longest_silence)
                    progress.saw(1, f"connections stayed silent for up to {longest:.1f}s")
                elif probes:
                    progress.saw(0, "connect pending")
                return None
            on_tick()
            if now >= next_probe and len(probes) < MAX_PROBES:
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                sock.setblocking(False)
                err = sock.connect_ex((host, port))
                if err in (0, errno.EINPROGRESS):
                    probes[sock] = _Probe(sock, now)
                    sel.register(sock, selectors.EVENT_WRITE)
                else:
                    sock.close()
                    progress.saw(0, errno.errorcode.get(err, str(err)).lower())
                next_probe = now + PROBE_INTERVAL
            # With every probe open, next_probe stays in the past: wake for a socket or to
            # expire a probe, not at once (a busy loop here took a core from the guests).
            wake = next_probe if len(probes) < MAX_PROBES else now + PROBE_INTERVAL
            wait = max(0.0, min(wake, deadline) - time.monotonic())
            for key, _events in sel.select(timeout=wait):
                sock = key.fileobj  # type: ignore[assignment]
                probe = probes[sock]
                if probe.connected_at is None:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        progress.saw(0, "connection " + (
                            "refused" if err == errno.ECONNREFUSED else errno.errorcode.get(
                                err, str(err)).lower()))
                        drop(sock)
                        continue
                    probe.connected_at = time.monotonic()
                    if not progress.last.startswith(_Progress.STAGES[1]):
                        progress.saw(1, "still waiting")  # keep a more telling stage-1 detail
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                kind, data = _peek_banner(sock)
                if kind == "banner":
                    if progress.first_banner_at is None:
                        progress.first_banner_at = time.monotonic()
                    log.debug("ssh banner on %s:%d: %s", host, port,
                              data.decode("ascii", "replace"))
                    drop_others = [s for s in probes if s is not sock]
                    for other in drop_others:
                        drop(other)
                    sel.unregister(sock)
                    del probes[sock]
                    sock.setblocking(True)
                    return sock
                if kind == "eof":
                    progress.saw(1, "connection closed by the peer")
                    drop(sock)
                elif kind == "error":
                    progress.saw(1, data.decode(errors="replace"))
                    drop(sock)
                elif kind == "other":
                    progress.saw(1, "not SSH: " + repr(data.decode("ascii", "replace")))
                    drop(sock)
                else:  # a partial first line: let more arrive
                    time.sleep(0.005)
            now = time.monotonic()
            connected = [p for p in probes.values() if p.connected_at is not None]
            patient = min(connected, key=lambda p: p.connected_at or now) if connected else None
            for sock, probe in list(probes.items()):
                if probe.connected_at is None:
                    if now - probe.started > PROBE_CONNECT_TIMEOUT:
                        progress.saw(0, "connect timed out")
                        drop(sock)
                    continue
                limit = PATIENT_BANNER_WAIT if probe is patient else PROBE_BANNER_WAIT
                if now - probe.connected_at > limit:
                    progress.longest_silence = max(progress.longest_silence, limit)
                    progress.saw(1, f"silent for {limit:.0f}s")
                    drop(sock)
    finally:
        for sock in list(probes):
            drop(sock)
        sel.close()


class _NotAlive(Exception):
    pass


class _HostKeyMismatch(Exception):
    pass


def wait_for_ssh(
    host: str,
    port: int,
    *,
    username: str,
    host_key: str | None,
    pkey: paramiko.PKey | None = None,
    password: str | None = None,
    timeout: float,
    alive: Callable[[], bool] = _always_alive,
    failure_context: Callable[[], str] = _no_context,
    progress_every: float = 30.0,
    keepalive: float = 15.0,
    dead_after: float = 60.0,
) -> SSHSession:
    """Wait until the guest's sshd answers with the pinned host key and accepts the login.

    `host_key` is an OpenSSH public key line, or None to take whatever key the guest
    offers (only `azbuild simulate`: a first boot makes new keys, as on Azure, inside a
    private network namespace). Raises BuildError at once on a
    host-key mismatch or when `alive()` turns False, and after `timeout`
    seconds otherwise, saying what was last seen plus `failure_context()`.
    """
    if pkey is None and password is None:
        raise UsageError("SSH needs a private key or a password")
    key_type: str | None = None
    expected_blob: bytes | None = None
    expected_fp = "any (made by the guest)"
    if host_key is not None:
        key_type, expected_blob = parse_public_line(host_key)
        expected_fp = fingerprint_blob(expected_blob)
    start = time.monotonic()
    deadline = start + timeout
    progress = _Progress()
    next_report = start + progress_every
    where = f"{host}:{port}"

    def tick() -> None:
        nonlocal next_report
        now = time.monotonic()
        if now >= next_report:
            log.info("waiting for SSH on %s (%ds): %s", where, now - start, progress.describe())
            next_report = now + progress_every

    def context() -> str:
        try:
            text = failure_context().rstrip()
        except Exception as exc:  # the context is a courtesy; never hide the real error
            text = f"(failure context unavailable: {exc})"
        return "\n" + text if text else ""

    log.info("waiting for SSH on %s (up to %ds), host key %s", where, timeout, expected_fp)
    try:
        while True:
            sock = _wait_for_banner(host, port, deadline, progress, alive, tick)
            if sock is None:
                raise BuildError(
                    f"SSH on {where} not ready after {timeout:.0f}s: {progress.describe()}"
                    + context(),
                    hint="see the serial console log; check that sshd and the network come up",
                )
            transport = _handshake(sock, key_type, expected_blob, expected_fp, where, deadline,
                                   progress)
            if transport is None:
                time.sleep(min(PROBE_INTERVAL, max(0.0, deadline - time.monotonic())))
                continue
            if _authenticate(transport, username, pkey, password, deadline, progress):
                ready = time.monotonic()
                banner_age = ready - (progress.first_banner_at or ready)
                log.info("SSH ready on %s as %s after %.1fs (%.2fs after the first banner)",
                         where, username, ready - start, banner_age)
                session = SSHSession(transport, host=host, port=port, username=username,
                                     keepalive=keepalive, dead_after=dead_after)
                session.first_banner_at = progress.first_banner_at
                session.ready_at = ready
                return session
            transport.close()
            pause = min(AUTH_RETRY_DELAY, max(0.0, deadline - time.monotonic()))
            end_pause = time.monotonic() + pause
            while time.monotonic() < end_pause:
                if not alive():
                    raise _NotAlive()
                time.sleep(min(PROBE_INTERVAL, max(0.0, end_pause - time.monotonic())))
    except _NotAlive:
        raise BuildError(
            f"the guest stopped while waiting for SSH on {where} "
            f"({time.monotonic() - start:.1f}s): {progress.describe()}" + context()
        ) from None
    except _HostKeyMismatch as exc:
        raise BuildError(
            str(exc),
            hint="the guest is not the machine this build created, or its host key was replaced",
        ) from None


def _handshake(
    sock: socket.socket,
    key_type: str | None,
    expected_blob: bytes | None,
    expected_fp: str,
    where: str,
    deadline: float,
    progress: _Progress,
) -> Any:
    """A paramiko Transport with the pinned host key verified, or None if the handshake failed."""
    remaining = max(0.1, deadline - time.monotonic())
    transport = paramiko.Transport(sock)
    transport.banner_timeout = min(HANDSHAKE_TIMEOUT, remaining)
    transport.handshake_timeout = min(HANDSHAKE_TIMEOUT, remaining)
    # Negotiate the pinned key's algorithm only, as OpenSSH does for a known host.
    wanted = [a for a in _host_key_algorithms(key_type) if a in transport.preferred_keys] \
        if key_type else []
    if wanted:
        transport.get_security_options().key_types = wanted
    try:
        transport.start_client(timeout=min(HANDSHAKE_TIMEOUT, remaining))
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        if "no acceptable host key" in str(exc):
            raise _HostKeyMismatch(
                f"host key mismatch on {where}: expected {key_type} {expected_fp}, "
                f"but the guest offers no {key_type} host key"
            ) from None
        progress.saw(2, str(exc) or type(exc).__name__)
        return None
    try:
        presented = transport.get_remote_server_key()
    except paramiko.SSHException as exc:  # the connection dropped right after the handshake
        transport.close()
        progress.saw(2, str(exc) or type(exc).__name__)
        return None
    if expected_blob is not None and presented.asbytes() != expected_blob:
        transport.close()
        raise _HostKeyMismatch(
            f"host key mismatch on {where}: expected {key_type} {expected_fp}, "
            f"presented {presented.get_name()} {fingerprint_blob(presented.asbytes())}"
        )
    return transport


def _authenticate(
    transport: Any,
    username: str,
    pkey: paramiko.PKey | None,
    password: str | None,
    deadline: float,
    progress: _Progress,
) -> bool:
    transport.auth_timeout = min(AUTH_TIMEOUT, max(0.1, deadline - time.monotonic()))
    problems: list[str] = []
    for method, secret in (("publickey", pkey), ("password", password)):
        if secret is None:
            continue
        try:
            if method == "publickey":
                transport.auth_publickey(username, secret)
            else:
                try:
                    transport.auth_password(username, secret)
                except paramiko.BadAuthenticationType as exc:
                    if "keyboard-interactive" not in exc.allowed_types:
                        raise
                    # PAM setups often offer the password only as keyboard-interactive.
                    transport.auth_interactive(
                        username,
                        lambda _title, _instructions, prompts, answer=secret: [answer]
                        * len(prompts),
                    )
        except paramiko.BadAuthenticationType as exc:
            problems.append(f"{method} not allowed; server allows {','.join(exc.allowed_types)}")
        except paramiko.AuthenticationException as exc:
            problems.append(f"{method}: {exc}")
        except (paramiko.SSHException, EOFError, OSError) as exc:
            progress.saw(2, f"during authentication: {exc or type(exc).__name__}")
            return False
        if transport.is_authenticated():
            return True
    progress.saw(3, f"user {username}: " + "; ".join(problems))
    return False


# --------------------------------------------------------------------------------------------
# the session


class _Heartbeat:
    """Proves the peer is alive with a global request it must answer (wanted reply)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._thread: threading.Thread | None = None
        self._sent_at = 0.0
        self.answered_at = 0.0

    def _ask(self) -> None:
        # A dead transport is noticed by the caller.
        with contextlib.suppress(Exception):
            self._transport.global_request("keepalive@openssh.com", wait=True)
            if self._transport.is_active():
                self.answered_at = time.monotonic()

    def pending_for(self) -> float:
        """Seconds the current request has gone unanswered (0 if none is pending)."""
        if self._thread is not None and self._thread.is_alive():
            return time.monotonic() - self._sent_at
        return 0.0

    def send(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._sent_at = time.monotonic()
        self._thread = threading.Thread(target=self._ask, name="ssh-heartbeat", daemon=True)
        self._thread.start()

    def answered_within(self, timeout: float) -> bool:
        self.send()
        assert self._thread is not None
        self._thread.join(timeout)
        return not self._thread.is_alive() and bool(self._transport.is_active())


class CommandTimeout(BuildError):
    """A remote command outlived its timeout."""


class ConnectionLost(BuildError):
    """The SSH connection to the guest dropped or stopped answering."""


class SSHSession:
    """An authenticated connection to the guest. Use as a context manager or call close()."""

    def __init__(
        self,
        transport: Any,
        *,
        host: str,
        port: int,
        username: str,
        keepalive: float = 15.0,
        dead_after: float = 60.0,
    ) -> None:
        self._transport = transport
        self.host = host
        self.port = port
        self.username = username
        self.keepalive = keepalive
        self.dead_after = dead_after
        self.first_banner_at: float | None = None
        self.ready_at: float | None = None
        self._heartbeat = _Heartbeat(transport)
        # Called while a command runs; each raises to abort it (for instance when the
        # connection to the hypervisor behind the guest is lost).
        self.watchdogs: list[Callable[[], None]] = []

    @property
    def root(self) -> bool:
        return self.username == "root"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def is_active(self) -> bool:
        return bool(self._transport.is_active())

    def host_key_fingerprint(self) -> str:
        """`SHA256:...` of the host key the guest presented."""
        return fingerprint_blob(self._transport.get_remote_server_key().asbytes())

    def auth_methods(self, username: str) -> list[str]:
        """The authentication methods sshd offers `username` on a fresh connection (an
        SSH `none` request), as a client that has not logged in yet sees them."""
        transport = paramiko.Transport((self.host, self.port))
        try:
            transport.start_client(timeout=HANDSHAKE_TIMEOUT)
            try:
                transport.auth_none(username)
            except paramiko.BadAuthenticationType as exc:
                return list(exc.allowed_types)
            return ["none"]
        finally:
            transport.close()

    def is_alive(self, timeout: float = 2.0) -> bool:
        """True if the guest's sshd answers a request within timeout seconds."""
        return self.is_active() and self._heartbeat.answered_within(timeout)

    def run(
        self,
        command: str,
        *,
        sudo: bool = False,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
        tail: collections.deque[str] | None = None,
        on_stderr: Callable[[str], None] | None = None,
    ) -> int:
        """Run a shell command; stream its output (stdout and stderr merged) line by line.

        Returns the exit status (-1 if the command died without one, e.g. by a
        signal). Each line goes to `on_line` (default: this module's debug log)
        and, when given, into the `tail` deque. With `on_stderr`, stderr is kept
        apart and its lines go there instead (still into the tail). Raises CommandTimeout after
        `timeout` seconds and ConnectionLost when the connection drops or stops
        answering; both carry the output's tail.
        """
        line_sink = on_line or (lambda text: log.debug("[ssh] %s", text))
        kept = tail if tail is not None else collections.deque(maxlen=TAIL_LINES)
        remote = wrap_command(command, root=self.root, sudo=sudo, env=env)
        log.debug("ssh %s: %s", self.where, remote)
        try:
            channel = self._transport.open_session(timeout=HANDSHAKE_TIMEOUT)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(
                f"cannot open an SSH channel to {self.where}: {exc or type(exc).__name__}"
            ) from None
        try:
            channel.set_combine_stderr(on_stderr is None)
            channel.settimeout(0.2)
            channel.exec_command(remote)
            pending = b""
            err_pending = b""
            start = last_heard = last_check = time.monotonic()
            reporter = WaitReporter(f"`{_short(command, 60)}` on {self.where}", timeout)

            def emit(raw: bytes, sink: Callable[[str], None] = line_sink) -> None:
                text = raw.decode("utf-8", "replace").rstrip("\r")
                kept.append(text)
                sink(text)

            def drain_stderr(final: bool = False) -> None:
                nonlocal err_pending
                if on_stderr is None:
                    return
                while channel.recv_stderr_ready():
                    err_pending += channel.recv_stderr(32768)
                *err_lines, err_pending = err_pending.split(b"\n")
                for line in err_lines:
                    emit(line, on_stderr)
                if final and err_pending:
                    emit(err_pending, on_stderr)
                    err_pending = b""

            def check(state: str) -> None:
                for watchdog in self.watchdogs:
                    watchdog()
                now = time.monotonic()
                if timeout is not None and now - start > timeout:
                    raise CommandTimeout(
                        f"command timed out after {timeout:.0f}s on {self.where}: "
                        f"{_short(command)}\n{indent(kept)}".rstrip()
                    )
                if not self._transport.is_active():
                    raise self._lost(command, kept, "the connection closed")
                if now - max(last_heard, self._heartbeat.answered_at) >= self.keepalive:
                    self._heartbeat.send()
                if self._heartbeat.pending_for() > self.dead_after:
                    self._transport.close()
                    raise self._lost(
                        command, kept, f"no answer for {self.dead_after:.0f}s while {state}"
                    )

            while True:
                drain_stderr()
                try:
                    data = channel.recv(32768)
                except TimeoutError:
                    check("waiting for output")
                    if time.monotonic() - last_heard >= FIRST_REPORT:  # a silent command
                        reporter.tick()
                    continue
                last_heard = time.monotonic()
                if not data:
                    break
                if last_heard - last_check >= 0.2:  # a chatty command still has a timeout
                    last_check = last_heard
                    check("reading output")
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    emit(line)
                while len(pending) > 8192:
                    emit(pending[:8192])
                    pending = pending[8192:]
            if pending:
                emit(pending)
            while not channel.exit_status_ready():
                drain_stderr()
                if channel.closed and not self._transport.is_active():
                    raise self._lost(command, kept, "the connection closed")
                check("waiting for the exit status")
                if channel.closed:
                    break
                time.sleep(0.05)
            drain_stderr(final=True)
            status = int(channel.exit_status)
            if status == -1 and not self._transport.is_active():
                raise self._lost(command, kept, "the connection closed")
            log.debug("ssh %s: exit status %d", self.where, status)
            return status
        finally:
            channel.close()

    def _lost(self, command: str, kept: collections.deque[str], why: str) -> ConnectionLost:
        return ConnectionLost(
            f"connection to {self.where} lost ({why}) while running: {_short(command)}"
            + ("\n" + indent(kept) if kept else "")
        )

    def check_output(
        self,
        command: str,
        *,
        sudo: bool = False,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> str:
        """Run a command and return its stdout (stderr is only logged, at debug level, e.g.
        sudo's warnings); BuildError with the output's tail (both streams) if it fails."""
        lines: list[str] = []
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        status = self.run(command, sudo=sudo, env=env, timeout=timeout, on_line=lines.append,
                          tail=tail,
                          on_stderr=lambda line: log.debug("[ssh stderr] %s", line))
        if status != 0:
            raise BuildError(
                f"command failed with exit status {status} on {self.where}: {_short(command)}"
                + ("\n" + indent(tail) if tail else "")
            )
        return "\n".join(lines)

    def run_detached(self, command: str, *, sudo: bool = False) -> None:
        """Start a command that outlives this session (e.g. a final script that powers off).

        Uses a transient systemd unit when the guest runs systemd (so logind
        never kills it with the session), else `nohup setsid`. Returns once the
        command was started; its output is discarded.
        """
        inner = shell_join(["/bin/sh", "-c", command])
        unit = f"azbuild-detached-{secrets.token_hex(4)}"
        launcher = (
            "if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then "
            f"exec systemd-run --quiet --no-block --collect --unit={unit} {inner}; "
            f"else nohup setsid {inner} </dev/null >/dev/null 2>&1 & fi"
        )
        lines: list[str] = []
        status = self.run(launcher, sudo=sudo, timeout=60, on_line=lines.append)
        if status != 0:
            raise BuildError(
                f"could not start a detached command on {self.where}: {_short(command)}"
                + ("\n" + indent(lines[-TAIL_LINES:]) if lines else "")
            )
        log.debug("ssh %s: started detached: %s", self.where, _short(command))

    def upload(
        self, local: Path, remote: str, *, mode: int | None = None, owner: str | None = None
    ) -> None:
        """Copy a file or a directory tree to the guest over SFTP, preserving permission bits.

        A file lands at `remote` (inside it when `remote` ends with "/" or is a
        directory). A directory's contents are copied into the directory
        `remote`, created if missing. `mode` overrides the file's mode, or the
        top directory's; `owner` ("user" or "user:group") is applied to
        everything uploaded. The final copy runs as root (sudo -n for other
        users), so without `owner` the result belongs to root.
        """
        if not local.exists() and not local.is_symlink():
            raise UsageError(f"upload source not found: {local}")
        is_dir = local.is_dir() and not local.is_symlink()
        staging = self.check_output("mktemp -d /tmp/azbuild-upload.XXXXXX").strip()
        try:
            count = self._stage_and_install(local, staging, remote, is_dir=is_dir, mode=mode,
                                            owner=owner)
        except BaseException:
            # The install script removes the staging directory itself; this covers failures
            # before it ran (SFTP, sudo refusing). Best effort, never hiding the real error.
            if self.is_active():
                with contextlib.suppress(Exception):
                    self.run(f"rm -rf -- {shell_quote(staging)}", timeout=30,
                             on_line=lambda line: log.debug("[upload cleanup] %s", line))
            raise
        log.debug("uploaded %s to %s:%s (%d entries)", local, self.where, remote, count)

    def _stage_and_install(
        self, local: Path, staging: str, remote: str, *, is_dir: bool, mode: int | None,
        owner: str | None,
    ) -> int:
        payload = f"{staging}/payload"
        try:
            sftp = self._transport.open_sftp_client()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(f"cannot open SFTP to {self.where}: {exc}") from None
        try:
            count = _put_tree(sftp, local, payload) if is_dir else _put_one(sftp, local, payload)
            if mode is not None:
                sftp.chmod(payload, mode)
        except OSError as exc:
            raise BuildError(f"upload of {local} to {self.where} failed: {exc}") from None
        finally:
            sftp.close()
        script = install_script(payload, staging, remote, is_dir=is_dir, name=local.name,
                                owner=owner)
        lines: list[str] = []
        status = self.run(script, sudo=True, on_line=lines.append)
        if status != 0:
            raise BuildError(
                f"upload of {local} to {remote} failed in the guest (exit status {status})"
                + ("\n" + indent(lines[-TAIL_LINES:]) if lines else "")
            )
        return count

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _put_one(sftp: Any, local: Path, remote: str) -> int:
    if local.is_symlink():
        sftp.symlink(str(local.readlink()), remote)
        return 1
    sftp.put(str(local), remote)
    sftp.chmod(remote, stat.S_IMODE(local.stat().st_mode))
    return 1


def _put_tree(sftp: Any, local: Path, remote: str) -> int:
    sftp.mkdir(remote)
    count = 1
    for entry in sorted(local.iterdir()):
        target = str(PurePosixPath(remote) / entry.name)
        if entry.is_dir() and not entry.is_symlink():
            count += _put_tree(sftp, entry, target)
        elif entry.is_file() or entry.is_symlink():
            count += _put_one(sftp, entry, target)
        else:
            log.warning("upload: skipping %s (not a file, directory or symlink)", entry)
    sftp.chmod(remote, stat.S_IMODE(local.stat().st_mode))
    return count


def install_script(
    payload: str, staging: str, remote: str, *, is_dir: bool, name: str, owner: str | None
) -> str:
    """The shell script that moves a staged upload to its destination (run as root)."""
    q = shell_quote
    lines = ["set -e", f"trap {q('rm -rf -- ' + q(staging))} EXIT", f"dest={q(remote)}"]
    preserve = "mode,timestamps"
    if owner is not None:
        lines.append(f"chown -R -h -- {q(owner)} {q(payload)}")
        preserve += ",ownership"
    if is_dir:
        lines += [
            'mkdir -p -- "$dest"',
            f'cp -R -P --preserve={preserve} -- {q(payload)}/. "$dest"/',
        ]
    else:
        lines += [
            f'case "$dest" in */) dest="$dest"{q(name)} ;; esac',
            'if [ -d "$dest" ]; then dest="$dest"/' + q(name) + "; fi",
            'mkdir -p -- "$(dirname -- "$dest")"',
            f'cp -P --preserve={preserve} -- {q(payload)} "$dest"',
        ]
    return "\n".join(lines) + "\n"
