"""Where azbuild keeps its caches and work directories, and how to move them."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AZBUILD_CACHE_DIR"
WORK_ENV = "AZBUILD_WORK_DIR"

# Files in a build's work directory. The log is copied to the output directory; the
# consoles are kept there as <template name>.<file> when a build fails.
BUILD_LOG = "build.log"
INSTALL_CONSOLE = "install-serial.log"
BOOT_CONSOLE = "serial.log"
# The simulated first boot's console and the fabric's requests (docs/simulate.md).
SIMULATE_CONSOLE = "simulate-console.log"
SIMULATE_REQUESTS = "simulate-fabric.jsonl"
# What a failed build keeps of its work directory, in this order.
KEPT_ON_FAILURE = (INSTALL_CONSOLE, BOOT_CONSOLE, SIMULATE_CONSOLE, SIMULATE_REQUESTS)


def _is_root() -> bool:
    return os.geteuid() == 0


def cache_dir() -> Path:
    """Downloads and built fixtures: $AZBUILD_CACHE_DIR, /var/cache/azbuild as root,
    else $XDG_CACHE_HOME/azbuild (~/.cache/azbuild)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if _is_root():
        return Path("/var/cache/azbuild")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "azbuild"


def work_root() -> Path:
    """Per-build work directories: $AZBUILD_WORK_DIR, /var/lib/azbuild/work as root,
    else $XDG_STATE_HOME/azbuild/work (~/.local/state/azbuild/work)."""
    if os.environ.get(WORK_ENV):
        return Path(os.environ[WORK_ENV])
    if _is_root():
        return Path("/var/lib/azbuild/work")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "azbuild" / "work"
