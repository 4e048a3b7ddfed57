"""The libguestfs appliance, started on the accelerator azbuild chose.

libguestfs's own choice is to try KVM whenever /dev/kvm exists and fall back to TCG
only when that fails. On a host whose KVM runs firmware but hangs in the kernel, that
"fails" after about twenty minutes. So the appliance never decides for itself: it
runs on the answer of azbuild's KVM probe (builder/vm/accel.py, cached per host boot),
its launch is bounded, and a long launch says what it waits for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from builder.errors import AzbuildError

log = logging.getLogger(__name__)

LAUNCH_TIMEOUT = 300.0  # a TCG launch takes about 15 s on an idle 2-core machine
SETTINGS_ENV = "LIBGUESTFS_BACKEND_SETTINGS"


@dataclass(frozen=True)
class Drive:
    path: Path
    format: str
    readonly: bool = True


def backend_settings(accelerator: Literal["kvm", "tcg"]) -> list[str]:
    """The direct backend's settings for `accelerator`, or the user's own when set."""
    user = os.environ.get(SETTINGS_ENV)
    if user is not None:
        return [s for s in user.split(":") if s]
    return ["force_tcg"] if accelerator == "tcg" else []


def appliance_accelerator(uri: str | None = None) -> Literal["kvm", "tcg"]:
    """The accelerator a standalone command's appliance uses: the KVM probe's answer."""
    from builder.vm.accel import choose_accelerator
    from builder.vm.libvirt import connection_uri

    return choose_accelerator("auto", connection_uri(uri)).accelerator


def launch(
    drives: Sequence[Drive],
    accelerator: Literal["kvm", "tcg"] | None = None,
    timeout: float = LAUNCH_TIMEOUT,
) -> Any:
    """A launched guestfs handle with `drives` added; the caller closes it."""
    import guestfs  # the system binding (python3-guestfs); see docs/check.md

    from builder.waits import reported_wait

    chosen = accelerator or appliance_accelerator()
    settings = backend_settings(chosen)
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_backend("direct")
        g.set_backend_settings(settings)
        for drive in drives:
            g.add_drive_opts(str(drive.path), readonly=drive.readonly, format=drive.format)
        where = "from " + SETTINGS_ENV if SETTINGS_ENV in os.environ else f"for {chosen}"
        log.info("starting the libguestfs appliance (direct backend, settings %s %s)",
                 settings or "none", where)
        started = time.monotonic()
        with reported_wait("the libguestfs appliance to start", timeout), \
                _LaunchWatchdog(timeout) as watchdog:
            try:
                g.launch()
            except RuntimeError as exc:
                if watchdog.fired:
                    raise AzbuildError(
                        f"the libguestfs appliance did not start within {timeout:.0f}s "
                        f"(accelerator {chosen}); it was stopped",
                        hint="`libguestfs-test-tool` diagnoses the appliance; a loaded "
                        "machine may just be slow under TCG",
                    ) from None
                raise AzbuildError(
                    f"the libguestfs appliance did not start (accelerator {chosen}): {exc}",
                    hint="`libguestfs-test-tool` diagnoses the appliance",
                ) from None
        log.debug("appliance up in %.1f s", time.monotonic() - started)
    except BaseException:
        g.close()
        raise
    return g


class _LaunchWatchdog:
    """Kills the appliance's QEMU when the launch outlives its bound.

    libguestfs serialises calls on a handle, so another thread cannot ask the handle to
    stop; ending the QEMU child makes the launch itself fail promptly."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="appliance-watchdog",
                                        daemon=True)

    def __enter__(self) -> _LaunchWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        if self._done.wait(self.timeout):
            return
        self.fired = True
        for pid in _qemu_children(os.getpid()):
            log.warning("the libguestfs appliance outlived %.0fs; stopping QEMU (pid %d)",
                        self.timeout, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _qemu_children(parent: int) -> list[int]:
    """PIDs of QEMU processes whose parent is `parent` (the appliance's, with the direct
    backend)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2:].split()
        if comm.startswith("qemu-system") and fields and int(fields[1]) == parent:
            found.append(int(entry.name))
    return found
