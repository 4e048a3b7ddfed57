"""The Azure agents' own Python modules, from Debian's packages, for tests that hand them
the simulated fabric's answers (tests/agent_probe.py runs them).

`agent_modules()` downloads `waagent` and `cloud-init` with `apt-get download` and
unpacks them with `dpkg-deb -x`: nothing is installed, no daemon runs. With them comes
python3-configobj, which cloud-init imports and azbuild's environment lacks; everything
else they import (yaml, requests, jinja2, distro...) is there already. They are kept in
cache_dir()/fixtures/azure-agents-<versions>/, so a new package version is a new entry.
`AgentsUnavailable` says why they cannot be had (apt cannot reach the registry): the
tests skip on it and on nothing else.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from builder.errors import CommandError
from builder.paths import cache_dir
from builder.run import run

PACKAGES = ("waagent", "cloud-init", "python3-configobj")
PROBE = Path(__file__).resolve().parent / "agent_probe.py"
DIST_PACKAGES = "usr/lib/python3/dist-packages"
# apt's words for "the registry cannot be reached".
_OFFLINE = re.compile(r"Could not resolve|Temporary failure resolving|Failed to fetch|"
                      r"Unable to connect|Network is unreachable|Connection timed out")


class AgentsUnavailable(Exception):
    """apt cannot reach the package registry: the agents' modules cannot be had."""


def _candidates() -> dict[str, str]:
    """The version apt would download of each package ({} where it knows none)."""
    out = run(["apt-cache", "policy", *PACKAGES], check=False).stdout
    versions: dict[str, str] = {}
    package = None
    for line in out.splitlines():
        if not line.startswith(" "):
            package = line.rstrip(":")
        elif line.strip().startswith("Candidate:") and package is not None:
            version = line.split(":", 1)[1].strip()
            if version != "(none)":
                versions[package] = version
    return versions


def _apt(argv: list[str], cwd: Path | None = None) -> None:
    try:
        run(argv, cwd=cwd, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except CommandError as exc:
        if _OFFLINE.search(exc.stderr + exc.stdout):
            raise AgentsUnavailable(f"{' '.join(argv)} cannot reach the package registry:\n"
                                    f"{exc.stderr.strip()[-500:]}") from None
        raise


def _versions() -> dict[str, str]:
    versions = _candidates()
    if len(versions) < len(PACKAGES):  # no package lists yet, as on a fresh machine
        if os.geteuid() != 0:
            raise AgentsUnavailable(f"apt knows no candidate for {', '.join(PACKAGES)} and "
                                    "updating its lists needs root")
        _apt(["apt-get", "update", "-q"])
        versions = _candidates()
    missing = [p for p in PACKAGES if p not in versions]
    if missing:
        raise AssertionError(f"apt has no candidate for {', '.join(missing)} even after "
                             "apt-get update: is this Debian 12?")
    return versions


def agent_modules() -> Path:
    """The directory holding the `azurelinuxagent` and `cloudinit` packages."""
    versions = _versions()
    key = "-".join(f"{p}_{versions[p]}" for p in PACKAGES).replace("+", "_")
    base = cache_dir() / "fixtures"
    out = base / f"azure-agents-{key}"
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".azure-agents.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / ".complete").exists():
            return out / DIST_PACKAGES
        tmp = base / f".azure-agents-{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "debs").mkdir(parents=True)
        # apt-get download writes into the current directory.
        _apt(["apt-get", "download", "-q", *(f"{p}={versions[p]}" for p in PACKAGES)],
             cwd=tmp / "debs")
        for deb in sorted((tmp / "debs").glob("*.deb")):
            run(["dpkg-deb", "-x", deb, tmp])
        shutil.rmtree(tmp / "debs")
        (tmp / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
        (tmp / ".complete").touch()
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out / DIST_PACKAGES


def probe(modules: Path, command: str, *args: str) -> Any:
    """Run one command of tests/agent_probe.py with the agents' modules first on the path;
    its JSON answer."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    env.update(PYTHONPATH=str(modules), PYTHONDONTWRITEBYTECODE="1")
    proc = run([sys.executable, PROBE, command, *args], env=env, check=False, timeout=120)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"agent_probe.py {command} failed ({proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
