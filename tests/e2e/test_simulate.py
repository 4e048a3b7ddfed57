"""The simulated Azure first boot on real images (docs/simulate.md).

- The shared builds (conftest.py's pair_built) ran their own `simulate` step: both
  images reported Ready and let the ovf-env's user in on the first boot, and the
  simulation left the artifact as it was.
- `azbuild simulate` killed with SIGKILL leaves no process, and `azbuild gc` removes
  its work directory.
- The corpus: images that pass the offline check, each with one known defect that
  only a first boot shows, made from the demo's image as qcow2 overlays. The
  simulation fails each and names the cause; the one R15 sees statically also fails
  `azbuild check`. The four simulations and the Gen2 image's run at once: two wait
  out a bound on Ready while the others boot.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_build import AZBUILD
from userenv import user_env

from builder.run import run
from builder.vm.appliance import Drive, launch

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
REQUIRED = ("ready", "ssh", "user", "sudo", "hostname", "password-auth", "custom-data",
            "agent-errors", "no-failure-after-ready", "provisioning-agent")


def manifest_of(side: Any) -> dict[str, Any]:
    return json.loads((side.output_dir / "manifest.json").read_text())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("name", ["e2e-debian", "demo"])
def test_shared_builds_provision_as_azure_provisions_them(pair_built: Any, name: str) -> None:
    side = pair_built.cloud if name == "e2e-debian" else pair_built.demo
    manifest = manifest_of(side)
    simulation = manifest["simulation"]
    assert simulation["status"] == "passed", json.dumps(simulation, indent=1)
    verdicts = {a["id"]: a["status"] for a in simulation["assertions"]}
    assert all(verdicts[i] == "pass" for i in REQUIRED), verdicts
    assert verdicts["goal-state:walinuxagent"] == "pass"
    assert any(a.startswith("WALinuxAgent/") for a in simulation["agents"])
    assert 0 < simulation["seconds_to_ready"] <= simulation["seconds_to_ssh"]
    assert manifest["ready"] is True
    assert manifest["steps"]["simulate"] > 0
    steps = list(manifest["steps"])
    assert steps.index("simulate") == steps.index("check") + 1, steps
    # The step table shows it.
    assert re.search(rf"\[{name}\].*\bsimulate\s+\d+\.\d$", side.stderr, re.MULTILINE), \
        "no simulate row in the step table"
    # Its console and the fabric's log are kept only when it fails.
    assert not list(side.output_dir.glob("*simulate-*"))
    # The simulation booted an overlay: the VHD is the one the manifest describes.
    vhd = next(a for a in manifest["artifacts"] if a["format"] == "vhd-fixed")
    assert sha256(side.output_dir / vhd["file"]) == vhd["sha256"]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_kill_9_leaves_nothing_that_gc_does_not_remove(pair_built: Any, tmp_path: Path) -> None:
    image = pair_built.demo.output_dir / "demo.vhd"
    work = tmp_path / "work"
    work.mkdir()
    env = user_env(AZBUILD_WORK_DIR=str(work))
    proc = subprocess.Popen([*AZBUILD, "simulate", str(image)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "starting the simulated VM" in line:
            break
    else:
        pytest.fail("the simulation never started its VM:\n" + "".join(seen))
    time.sleep(3)  # QEMU running, the fabric serving
    assert _processes_mentioning(str(work)), "no process of the simulation was seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while _processes_mentioning(str(work)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(str(work)) == [], "a process outlived azbuild's kill -9"
    assert [p.name for p in work.iterdir()], "the work directory should be left for gc"
    gc = subprocess.run([*AZBUILD, "gc", "--yes"], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=300)
    assert gc.returncode == 0, gc.stderr
    assert list(work.iterdir()) == []


def test_a_gen2_image_boots_from_the_removable_path_and_cloud_init_provisions_it(
        corpus_outcomes: dict[str, tuple[dict[str, Any], str]]) -> None:
    """The offline check's UEFI image (cloud-init mode; Debian's signed shim and GRUB on
    EFI/BOOT): OVMF starts with empty variables, as an Azure Gen2 VM does, so only the
    removable path can boot it (R14, proven by booting). Simulated beside the corpus."""
    outcome, _ = corpus_outcomes[GEN2]
    verdicts = {a["id"]: a["status"] for a in outcome["assertions"]}
    assert outcome["firmware"] == "uefi"
    assert verdicts["cloud-init"] == "pass" and verdicts["goal-state:cloud-init"] == "pass"
    assert all(verdicts[i] == "pass" for i in REQUIRED), verdicts
    assert any(a.startswith("Cloud-Init/") for a in outcome["agents"])
    # In cloud-init mode both agents report Ready: cloud-init first, then waagent.
    assert any(a.startswith("WALinuxAgent/") for a in outcome["agents"])


def _gen2_image(directory: Path) -> Path:
    from corpus import ensure_corpus

    # The corpus root generates no locale: cloud-init's locale module would fail on its
    # default (en_US.UTF-8), a fault of the fixture, not of what is tested here.
    return overlay_with(ensure_corpus() / "uefi.raw", "raw", directory / "gen2.qcow2",
                        lambda g: g.write("/etc/cloud/cloud.cfg.d/99-no-locale.cfg",
                                          "locale: false\n"))


def overlay_with(base: Path, base_format: str, image: Path, change: Callable[[Any], None]
                 ) -> Path:
    """A qcow2 overlay `image` on `base`, with `change` applied to its root filesystem."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base),
         str(image)])
    g = launch([Drive(image, "qcow2", readonly=False)])
    try:
        g.mount(g.inspect_os()[0], "/")
        change(g)
        g.umount_all()
        g.shutdown()
    finally:
        g.close()
    return image


# -- the corpus ---------------------------------------------------------------------------

Change = Callable[[Any], None]


def _no_keygen(g: Any) -> None:
    """Today's Debian defect: the unit that makes host keys before sshd is gone."""
    unit = "azbuild-ssh-host-keygen.service"
    g.rm_f(f"/etc/systemd/system/ssh.service.wants/{unit}")
    g.rm_f(f"/etc/systemd/system/{unit}")


def _agent_conf(g: Any, agent: str) -> None:
    lines = g.cat("/etc/waagent.conf").splitlines()
    kept = [line for line in lines if not line.startswith("Provisioning.Agent=")]
    g.write("/etc/waagent.conf", "\n".join([*kept, f"Provisioning.Agent={agent}"]) + "\n")


def _cloud_init_mode_without_cloud_init(g: Any) -> None:
    _agent_conf(g, "cloud-init")
    for path in ("/usr/bin/cloud-init", "/usr/local/bin/cloud-init"):
        g.rm_f(path)


CLOUD_INIT_UNITS = ("cloud-init-local", "cloud-init", "cloud-config", "cloud-final")


def _cloud_init_without_azure(g: Any) -> None:
    """cloud-init enabled as its mode's preparation leaves it, but for its datasources."""
    _agent_conf(g, "cloud-init")
    g.rm_f("/etc/cloud/cloud-init.disabled")
    wants = "/etc/systemd/system/cloud-init.target.wants"
    g.mkdir_p(wants)
    for unit in CLOUD_INIT_UNITS:
        g.ln_sf(f"/lib/systemd/system/{unit}.service", f"{wants}/{unit}.service")
    g.write("/etc/cloud/cloud.cfg.d/99-no-azure.cfg", "datasource_list: [ NoCloud, None ]\n")


def _sudoers_without_its_directory(g: Any) -> None:
    """Both agents give the user sudo in /etc/sudoers.d, which this sudoers never reads."""
    lines = g.cat("/etc/sudoers").splitlines()
    kept = [line for line in lines if "includedir" not in line]
    g.write("/etc/sudoers", "\n".join(kept) + "\n")


@dataclass(frozen=True)
class Defect:
    change: Change
    failed: str  # the assertion that must fail
    cause: str  # words the cause line must hold
    check_fails: str | None = None  # the requirement `azbuild check` fails, if it sees it
    base: str = "demo"  # the shared build it is made from: "demo", or "e2e-debian" (cloud-init)
    # The bound on Ready: a defect that keeps the agents from ever reporting Ready is
    # failed when it runs out, so it is as short as the cause allows; the others need
    # time to boot four guests at once on a small machine.
    ready_timeout: int = 420


CORPUS = {
    "ssh-no-keygen": Defect(_no_keygen, "ssh", "no hostkeys available", check_fails="R15"),
    # The demo's installed system has no cloud-init; the cloud image's has (disabled by the
    # waagent-mode preparation).
    "cloud-init-missing": Defect(_cloud_init_mode_without_cloud_init, "ready",
                                 "cloud-init is not installed", base="e2e-debian",
                                 ready_timeout=240),
    "cloud-init-no-azure": Defect(_cloud_init_without_azure, "ready", "without Azure",
                                  base="e2e-debian", ready_timeout=240),
    "sudoers-no-includedir": Defect(_sudoers_without_its_directory, "sudo", "sudoers.d"),
}


GEN2 = "gen2-cloud-init"  # not a defect: the Gen2 image that must pass, simulated beside


@pytest.fixture(scope="session")
def corpus_outcomes(pair_built: Any, tmp_path_factory: pytest.TempPathFactory
                    ) -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (the simulation's JSON outcome, its stderr). The corpus and the Gen2 image
    run at once: the guests whose agents never report Ready sit idle while the others
    boot, until their bound runs out."""
    bases = {"demo": pair_built.demo.output_dir / "demo.vhd",
             "e2e-debian": pair_built.cloud.output_dir / "e2e-debian.vhd"}
    tmp = tmp_path_factory.mktemp("sim-corpus")
    (tmp / "work").mkdir()
    commands = {}
    for name, defect in CORPUS.items():
        image = overlay_with(bases[defect.base], "vpc", tmp / f"{name}.qcow2", defect.change)
        commands[name] = [str(image), "--expect-agent", "waagent",
                          "--ready-timeout", str(defect.ready_timeout), "--ssh-timeout", "90"]
    commands[GEN2] = [str(_gen2_image(tmp)), "--firmware", "uefi",
                      "--expect-agent", "cloud-init"]
    procs = {
        name: subprocess.Popen(
            [*AZBUILD, "simulate", *args, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env=user_env(AZBUILD_WORK_DIR=str(tmp / "work")))
        for name, args in commands.items()}
    outcomes = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=1800)
        expected = 0 if name == GEN2 else 1
        assert proc.returncode == expected, f"{name}: exit {proc.returncode}\n{err[-4000:]}"
        outcomes[name] = (json.loads(out), err)
    return outcomes


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_corpus_fails_the_simulation_naming_the_cause(
        corpus_outcomes: dict[str, tuple[dict[str, Any], str]], name: str) -> None:
    outcome, stderr = corpus_outcomes[name]
    defect = CORPUS[name]
    verdicts = {a["id"]: a for a in outcome["assertions"]}
    assert outcome["passed"] is False
    assert verdicts[defect.failed]["status"] == "fail", json.dumps(outcome, indent=1)
    causes = [a["evidence"] for a in outcome["assertions"] if a["id"] == "cause"]
    assert any(defect.cause in c for c in causes), (causes, stderr[-3000:])
    assert "Traceback" not in stderr


@pytest.mark.parametrize("name", [n for n, d in CORPUS.items() if d.check_fails])
def test_the_corpus_defect_r15_sees_fails_the_offline_check(pair_built: Any, name: str,
                                                            tmp_path: Path) -> None:
    image = overlay_with(pair_built.demo.output_dir / "demo.vhd", "vpc",
                         tmp_path / f"{name}.qcow2", CORPUS[name].change)
    proc = subprocess.run([*AZBUILD, "check", str(image), "--json", "--skip", "R01",
                           "--skip", "R02"], capture_output=True, text=True, cwd=REPO,
                          env=user_env(), timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    failed = [c["id"] for c in report["checks"] if c["status"] == "fail"]
    assert failed == [CORPUS[name].check_fails], report
