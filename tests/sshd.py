"""A real OpenSSH server on 127.0.0.1 for tests: its own config, host key and authorized key.

    with SshServer() as server:          # starts /usr/sbin/sshd -D on a free port
        server.host_key.public_line      # pin this
        server.client_key.to_paramiko()  # authorised for root

`stop()` kills the listener and every session process under it (like a guest
going down); `start()` brings it back on the same port. Nothing else on the
machine is touched except that sshd's privilege-separation directory
(/run/sshd) is created if it is missing. Runs as root only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from builder.vm.keys import KeyPair

SSHD = Path("/usr/sbin/sshd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sshd_available() -> str | None:
    """None when tests can run a real sshd here, else why not (for pytest.skip)."""
    if not SSHD.exists():
        return f"{SSHD} not installed"
    if os.geteuid() != 0:
        return "a real sshd for tests needs root"
    return None


def _children(pid: int) -> list[int]:
    """All descendants of pid, found through /proc (deepest last)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class SshServer:
    def __init__(self, *, port: int | None = None, password_auth: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="azbuild-sshd-"))
        self.port = port or free_port()
        self.host_key = KeyPair.generate("test-host")
        self.client_key = KeyPair.generate("test-client")
        self.host_key.write_private(self.dir / "host_ed25519")
        (self.dir / "authorized_keys").write_text(self.client_key.public_line + "\n")
        (self.dir / "home").mkdir()
        self.log_path = self.dir / "sshd.log"
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {self.dir / 'host_ed25519'}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    f"PasswordAuthentication {'yes' if password_auth else 'no'}",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "UseDNS no",
                    "PrintMotd no",
                    "Subsystem sftp internal-sftp",
                    # The host's root may have a heavy ~/.bashrc (bash reads it even for
                    # `ssh host command`); a private HOME keeps sessions fast and isolated.
                    f"SetEnv HOME={self.dir / 'home'}",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self, *, wait: bool = True) -> None:
        """Start the listener (in the foreground, -D); with wait, return once it sends a banner."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_banner()

    def wait_banner(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"sshd did not answer on port {self.port}: {self.log_path.read_text()}")

    def stop(self) -> None:
        """Kill the listener and all its sessions at once (SIGKILL), like a machine going away."""
        with self._lock:
            proc, self.proc = self.proc, None
            if proc is None:
                return
            victims = [*_children(proc.pid), proc.pid]
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def session_pids(self) -> list[int]:
        return _children(self.proc.pid) if self.proc is not None else []

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SshServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
