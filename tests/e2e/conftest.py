"""Shared fixtures for end-to-end tests: real libvirt, real QEMU, real images."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azurite import ACCOUNT, KEY
from userenv import user_env

from builder.run import run
from builder.vm.libvirt import connection_uri, open_connection

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """The libvirt URI the engine would use by default (qemu:///system as root)."""
    return connection_uri(None)


@pytest.fixture(scope="session")
def libvirt_conn(libvirt_uri: str) -> Iterator[Any]:
    """An open libvirt connection (the event loop running), closed after the session."""
    conn = open_connection(libvirt_uri)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def cloud_image() -> Path:
    """The cached Debian 12 cloud image (scripts/make-cloud-image.sh; builds it when
    cold, several minutes under TCG). Use only from tests marked e2e."""
    started = time.monotonic()
    proc = run(["bash", REPO / "scripts" / "make-cloud-image.sh"], timeout=3600)
    path = Path(proc.stdout.strip().splitlines()[-1])
    log.info("cloud image %s ready in %.1fs", path, time.monotonic() - started)
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def test_installer_iso() -> Path:
    """The cached test installer ISO (scripts/make-test-installer-iso.sh; builds it when
    cold from the cached root, seconds). Use only from tests marked e2e."""
    proc = run(["bash", REPO / "scripts" / "make-test-installer-iso.sh"], timeout=3600)
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file(), path
    return path


# --- the shared builds: the cloud image and the demo, built by one `--jobs 2` run ------------


@pytest.fixture(scope="session")
def demo_sas(azurite: Any) -> str:
    """A SAS for the container the shared demo build publishes into (Azurite)."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    azurite.service().create_container("built")
    return str(generate_container_sas(
        ACCOUNT, "built", account_key=KEY,
        permission=ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                           delete=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=3)))


@pytest.fixture(scope="session")
def hostile_base(cloud_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the cloud image that breaks every requirement the build can fix:
    `quiet` and no `console=ttyS0` on the kernel line, a swap file in fstab,
    `Defaults targetpw` and `ALL ALL=(ALL) ALL` in sudoers, no agent, no Hyper-V
    modules in the initrd, a root password set, SSH host keys present."""
    from test_build import ROOT_HASH, open_guest, strip_hyperv_modules

    tmp = tmp_path_factory.mktemp("hostile")
    image = tmp / "hostile.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", cloud_image, image])
    g = open_guest(image, "qcow2", readonly=False)
    try:
        grub = g.cat("/etc/default/grub")
        grub = "\n".join(
            line for line in grub.splitlines()
            if not line.startswith(("GRUB_CMDLINE_LINUX=", "GRUB_CMDLINE_LINUX_DEFAULT="))
        ) + ('\nGRUB_CMDLINE_LINUX_DEFAULT="quiet rootdelay=300 net.ifnames=0"\n'
             'GRUB_CMDLINE_LINUX="net.ifnames=0 console=ttyS0"\n')
        # rootdelay is an unconditional sleep on Debian (R07), net.ifnames=0 is in both keys
        # and console=ttyS0 must not be added to the _DEFAULT key a second time.
        g.write("/etc/default/grub", grub)
        cfg = g.cat("/boot/grub/grub.cfg")
        lines = []
        for line in cfg.splitlines():
            if line.lstrip().startswith("linux"):
                words = [w for w in line.split() if not w.startswith(
                    ("console=", "earlyprintk=", "rootdelay="))]
                # What boots sleeps 1 s, not 300 (the defaults above hold 300): the
                # build's first boot would wait out the sleep, five minutes of CI each run.
                line = " ".join(words) + " quiet rootdelay=1"
            lines.append(line)
        g.write("/boot/grub/grub.cfg", "\n".join(lines) + "\n")
        g.fallocate64("/swapfile", 64 * 1024**2)
        g.chmod(0o600, "/swapfile")
        g.mkswap_file("/swapfile")
        g.write_append("/etc/fstab", "/swapfile none swap sw 0 0\n")
        # Before the include of sudoers.d, as a distro would ship them, so the build
        # user's NOPASSWD rule from cloud-init still comes last and wins.
        sudoers = g.cat("/etc/sudoers").splitlines()
        at = next(i for i, line in enumerate(sudoers) if "includedir" in line)
        sudoers[at:at] = ["Defaults targetpw", "ALL ALL=(ALL) ALL"]
        g.write("/etc/sudoers", "\n".join(sudoers) + "\n")
        shadow = g.cat("/etc/shadow").splitlines()
        shadow = [f"root:{ROOT_HASH}:" + line.split(":", 2)[2] if line.startswith("root:")
                  else line for line in shadow]
        g.write("/etc/shadow", "\n".join(shadow) + "\n")
        g.write("/etc/ssh/ssh_host_ed25519_key", "not a real key\n")
        g.write("/etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA base-image-key\n")
        initrds = [f for f in g.ls("/boot") if f.startswith("initrd.img-")]
        assert initrds
        for name in initrds:
            local = tmp / name
            g.download(f"/boot/{name}", str(local))
            strip_hyperv_modules(local, tmp / f"unpack-{name}")
            g.upload(str(local), f"/boot/{name}")
        assert not g.exists("/usr/sbin/waagent"), "the base already has the agent"
        g.umount_all()
        g.shutdown()
    finally:
        g.close()
    return image



@dataclass
class PairBuilt:
    """One `azbuild build e2e.toml demo.toml --jobs 2` run: what it printed and left,
    seen from each build's side (Outcome) and whole (summary.json)."""

    cloud: Any  # test_build.Outcome of the cloud-image build, in <out>/e2e-debian
    demo: Any  # the demo's, in <out>/demo
    returncode: int
    output_dir: Path
    cache_dir: Path  # the stage cache the pair filled (the rebuild reuses it)
    templates: dict[str, Path]
    seconds: float


@pytest.fixture(scope="session")
def pair_built(hostile_base: Path, test_installer_iso: Path, azurite: Any, demo_sas: str,
               tmp_path_factory: pytest.TempPathFactory) -> PairBuilt:
    """The two shared builds in one command, two at once, as a nightly job runs them;
    their own stage cache, so the demo's install runs here whatever the machine's cache
    holds, and the rebuild test starts from what it stored."""
    from test_build import AZBUILD, Outcome, write_e2e_template
    from test_iso_install import demo_iso, iso_vars, write_demo_template

    tmp = tmp_path_factory.mktemp("pair")
    templates = {"e2e-debian": write_e2e_template(tmp), "demo": write_demo_template(tmp)}
    output_dir, work_root, cache = tmp / "out", tmp / "work", tmp / "cache"
    work_root.mkdir()
    started = time.monotonic()
    proc = subprocess.run(
        [*AZBUILD, "build", *map(str, templates.values()), "--jobs", "2",
         "--output-dir", str(output_dir), "--var", f"image={hostile_base}",
         *iso_vars(demo_iso(test_installer_iso)),
         "--var", f"container_url={azurite.account_url}/built?{demo_sas}"],
        capture_output=True, text=True, cwd=REPO, timeout=5400,
        env=user_env(AZBUILD_WORK_DIR=str(work_root), AZBUILD_CACHE_DIR=str(cache)),
    )
    seconds = time.monotonic() - started
    log.info("the pair built in %.1fs, exit %d", seconds, proc.returncode)

    def side(name: str) -> Any:
        return Outcome(proc.returncode, proc.stdout, proc.stderr, output_dir / name,
                       work_root, seconds)

    return PairBuilt(side("e2e-debian"), side("demo"), proc.returncode, output_dir, cache,
                     templates, seconds)
