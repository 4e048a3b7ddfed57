"""End-to-end builds through the real CLI: libvirt, QEMU under TCG, SSH, qemu-img, libguestfs.

One successful build is shared by the tests that inspect it; the failure cases use
short timeouts. Every case checks the promise made to users: the right message and
exit code, no domain left behind, no work directory left, and in the output directory
exactly what a failed build keeps (build.log, its consoles, a failed manifest.json
that validates against the shipped schema) and no image.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from expect import assert_waagent_mode
from spdx_tools.spdx.parser.json.json_parser import parse_from_file as parse_spdx_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
from userenv import user_env

from builder.manifest import manifest_json_schema
from builder.run import run
from builder.vm.appliance import Drive, launch
from builder.vm.libvirt import (
    Disk,
    DomainMetadata,
    DomainSpec,
    default_dac_label,
    domain_name,
    running_domain,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
AZBUILD = [sys.executable, "-m", "builder"]
EXAMPLE = REPO / "examples" / "cloud-image.toml"
SECRET = "e2e-Sentinel-7f3a9c"  # a sensitive variable's value: must appear in no output


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    output_dir: Path
    work_root: Path
    seconds: float


def lines_of(stderr: str, name: str) -> str:
    """The tail of what `build T1 T2 --jobs N` printed that concerns build `name`: its own
    prefixed lines and the run's unprefixed ones, so a failing build's cause shows even
    when the other build went on printing after it."""
    own = f"[{name}]"
    kept = [line for line in stderr.splitlines()
            if own in line or not re.match(r"\s*(\d\d:\d\d:\d\d \w+\s+)?\[", line)]
    return "\n".join(kept)[-6000:]


def azbuild_build(
    template: Path, image: Path, tmp: Path, *extra: str, env: dict[str, str] | None = None
) -> Outcome:
    """`azbuild build` of a disk-image template with `--var image=IMAGE`."""
    return run_azbuild_build(template, tmp, "--var", f"image={image}", *extra, env=env)


def build_dir(out: Path) -> Path:
    """The build's own directory under `--output-dir OUT`: OUT/<name>/, as OUT/summary.json
    names it; OUT itself when the build stopped before it made one."""
    summary = out / "summary.json"
    if summary.is_file():
        return Path(json.loads(summary.read_text())["builds"][0]["output_directory"])
    made = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    return made[0] if len(made) == 1 else out


def run_azbuild_build(
    template: Path, tmp: Path, *args: str, env: dict[str, str] | None = None
) -> Outcome:
    """`azbuild build TEMPLATE ARGS` with its outputs in tmp/out/<name> and its work dirs
    in tmp/work; the Outcome says what it printed and left. The simulated first boot is
    skipped: the shared builds (conftest.py's pair_built) and the non-root build prove
    it, and each costs minutes under TCG."""
    output_dir = tmp / "out"
    work_root = tmp / "work"
    work_root.mkdir(exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(
        [*AZBUILD, "build", str(template), "--output-dir", str(output_dir), "--no-simulate",
         *args],
        capture_output=True, text=True, cwd=REPO,
        env=user_env(AZBUILD_WORK_DIR=str(work_root), **(env or {})),
        timeout=3600,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, build_dir(output_dir),
                   work_root, time.monotonic() - started)


def sigterm_build(template: Path, tmp: Path, args: list[str], when: str,
                  not_seen: str) -> Outcome:
    """Start `azbuild build`, send SIGTERM once stderr shows `when`, and wait for it."""
    work_root = tmp / "work"
    work_root.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [*AZBUILD, "build", str(template), *args, "--output-dir", str(tmp / "out"),
         "--no-simulate"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        env=user_env(AZBUILD_WORK_DIR=str(work_root)),
    )
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 900
    for line in proc.stderr:
        seen.append(line)
        if when in line:
            break
        assert time.monotonic() < deadline, not_seen
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=300)[1]
    return Outcome(proc.returncode, "", "".join(seen) + rest, build_dir(tmp / "out"),
                   work_root, 0)


def azbuild_domains(uri: str) -> list[str]:
    names = run(["virsh", "-c", uri, "list", "--all", "--name"]).stdout.split()
    return [n for n in names if n.startswith("azbuild-")]


def assert_nothing_left(outcome: Outcome, uri: str) -> None:
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert azbuild_domains(uri) == [], "a domain was left behind"
    assert list(outcome.work_root.iterdir()) == [], "a work directory was left behind"
    leftovers = list(outcome.output_dir.iterdir()) if outcome.output_dir.exists() else []
    assert leftovers == [], f"output was written: {leftovers}"


def validate_manifest(path: Path) -> dict[str, Any]:
    """manifest.json, validated against `azbuild schema --manifest`."""
    data: dict[str, Any] = json.loads(path.read_text())
    jsonschema.Draft202012Validator(manifest_json_schema()).validate(data)
    return data


def assert_failed_build_kept(outcome: Outcome, uri: str, name: str, step: str,
                             consoles: tuple[str, ...] = ("serial.log",)) -> dict[str, Any]:
    """No domain or work directory left; in the output directory exactly build.log, the
    consoles `consoles` (as <name>.<console>) and a failed manifest naming `step`: no image."""
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert azbuild_domains(uri) == [], "a domain was left behind"
    assert list(outcome.work_root.iterdir()) == [], "a work directory was left behind"
    kept_consoles = [f"{name}.{console}" for console in consoles]
    assert sorted(p.name for p in outcome.output_dir.iterdir()) == sorted(
        ["build.log", "manifest.json", *kept_consoles])
    manifest = validate_manifest(outcome.output_dir / "manifest.json")
    assert manifest["status"] == "failed"
    assert manifest["failure"]["step"] == step, manifest["failure"]
    assert manifest["failure"]["exit_code"] == outcome.returncode
    assert manifest["artifacts"] == []
    assert manifest["logs"] == ["build.log", *kept_consoles]
    assert list(manifest["steps"])[-1] == step
    assert f"build failed in step {step}" in (outcome.output_dir / "build.log").read_text()
    return manifest


def write_template(path: Path, body: str) -> Path:
    path.write_text(f'extends = ["{EXAMPLE}"]\n' + body)
    return path


# --- a base image that breaks every fixable requirement -------------------------------------


def open_guest(image: Path, fmt: str, readonly: bool) -> Any:
    g = launch([Drive(image, fmt, readonly)])
    roots = g.inspect_os()
    assert roots, f"no operating system found in {image}"
    g.mount_ro(roots[0], "/") if readonly else g.mount(roots[0], "/")
    return g


ROOT_HASH = "$6$azbuildtest$" + "x" * 86  # a set (if unusable) root password


def strip_hyperv_modules(initrd: Path, work: Path) -> None:
    """Rewrite a Debian initrd without the Hyper-V drivers (MODULES=most includes them)."""
    unpacked = work / "initrd"
    run(["unmkinitramfs", initrd, unpacked])
    main = unpacked / "main" if (unpacked / "main").is_dir() else unpacked
    removed = [p for p in main.rglob("*.ko*") if p.name.split(".")[0] in
               ("hv_vmbus", "hv_storvsc", "hv_netvsc", "hv_utils", "hv_balloon")]
    assert removed, "the base initrd held no Hyper-V modules to remove"
    for module in removed:
        module.unlink()
    files = sorted(str(p.relative_to(main)) for p in main.rglob("*"))
    with open(initrd, "wb") as out:
        cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=main,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        zstd = subprocess.Popen(["zstd", "-q", "-c"], stdin=cpio.stdout, stdout=out)
        assert cpio.stdin is not None and cpio.stdout is not None
        cpio.stdout.close()
        cpio.stdin.write(("\n".join(files) + "\n").encode())
        cpio.stdin.close()
        assert cpio.wait() == 0 and zstd.wait() == 0


# --- one successful build, shared ----------------------------------------------------------


def write_e2e_template(tmp: Path) -> Path:
    """The shared cloud-image build's template: both provisioner kinds, a sensitive
    variable, and a real reboot mid-provisioning (the connection drops, the build
    reconnects to the new boot and carries on)."""
    payload = tmp / "payload.txt"
    payload.write_text("uploaded by the file provisioner\n")
    return write_template(tmp / "e2e.toml", f"""
name = "e2e-debian"

[variables]
token = {{ default = "{SECRET}", sensitive = true }}

[output]
formats = ["vhd", "raw"]

[[provision]]
type = "shell"
inline = ["echo azbuild-e2e-marker > /etc/azbuild-e2e", "test \\"$GREETING\\" = hello",
          "echo the token is $TOKEN",
          "cat /proc/sys/kernel/random/boot_id | sudo tee /var/tmp/boot-before"]
env = {{ GREETING = "hello", TOKEN = "${{var.token}}" }}

[[provision]]
type = "reboot"
timeout = "20m"

[[provision]]
type = "shell"
inline = ["echo boot ids: $(cat /var/tmp/boot-before) $(cat /proc/sys/kernel/random/boot_id)",
          "test \\"$(cat /var/tmp/boot-before)\\" != \\"$(cat /proc/sys/kernel/random/boot_id)\\""]

[[provision]]
type = "file"
source = "{payload}"
destination = "/opt/azbuild-e2e/payload.txt"
mode = "0640"
""")


@pytest.fixture(scope="session")
def built(pair_built: Any) -> Outcome:
    """The cloud-image half of the shared `--jobs 2` build (conftest.py's pair_built)."""
    outcome: Outcome = pair_built.cloud
    assert outcome.returncode == 0, lines_of(outcome.stderr, "e2e-debian")
    return outcome


@pytest.fixture(scope="session")
def guest_files(built: Outcome) -> Iterator[Any]:
    """The exported RAW opened read-only with libguestfs."""
    g = open_guest(built.output_dir / "e2e-debian.raw", "raw", readonly=True)
    yield g
    g.close()


def test_build_writes_image_manifest_and_log(built: Outcome, libvirt_uri: str) -> None:
    out = built.output_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "build.log", "e2e-debian.raw", "e2e-debian.spdx.json", "e2e-debian.vhd",
        "manifest.json"]
    manifest = validate_manifest(out / "manifest.json")
    assert manifest["status"] == "succeeded" and manifest["failure"] is None
    assert manifest["logs"] == ["build.log"]
    assert manifest["template"] == "e2e-debian"
    assert manifest["ready"] is True
    assert manifest["distro"]["name"] == "debian"
    assert manifest["accelerator"]["used"] in ("kvm", "tcg")
    assert len(manifest["template_sha256"]) == 64
    by_file = {a["file"]: a for a in manifest["artifacts"]}
    raw, vhd = by_file["e2e-debian.raw"], by_file["e2e-debian.vhd"]
    assert raw["size"] == 4 * 1024**3
    assert vhd["size"] == raw["size"] + 512
    assert raw["allocated"] < raw["size"], "the RAW export is not sparse"
    for step in ("prepare", "boot", "connect", "provision", "shutdown", "export", "check"):
        assert step in manifest["steps"]
    assert manifest["time"]["waiting_on_guest_seconds"] > 0
    # The check's inventory, the inputs, and the SBOM beside the image (docs/manifest.md).
    inventory = manifest["inventory"]
    assert inventory["package_format"] == "deb"
    assert inventory["os_release"]["ID"] == "debian"
    by_name = {p["name"]: p for p in inventory["packages"]}
    assert by_name["libc6"]["source"] == "glibc"
    assert any(k["image"] and k["modules"] for k in inventory["kernels"])
    assert "console=ttyS0" in inventory["kernel_args"]["default"]
    assert manifest["inputs"]["source"]["digest"].startswith("sha256:")
    assert manifest["inputs"]["template_files"][-1]["path"].endswith(".toml")
    sbom = parse_spdx_file(str(out / "e2e-debian.spdx.json"))
    assert validate_full_spdx_document(sbom, "SPDX-2.3") == []
    assert len(sbom.packages) == len(inventory["packages"]) + 1
    # The timing table is logged at the end.
    assert "total" in built.stderr
    assert_nothing_left_but_outputs(built, libvirt_uri)
    # The provisioner echoed the sensitive value: masked in every output.
    assert "the token is <sensitive>" in (out / "build.log").read_text()
    for path in out.iterdir():
        if path.suffix in (".json", ".log"):
            assert SECRET not in path.read_text(), path
    assert SECRET not in built.stderr and SECRET not in built.stdout


def test_render_is_what_the_shared_builds_fed_their_guests(
    pair_built: Any, hostile_base: Path, test_installer_iso: Path, azurite: Any,
    demo_sas: str, tmp_path: Path,
) -> None:
    """`azbuild render` of each shared build's template, with the variables the build had,
    writes byte for byte the files the build fed its guest: the seed or the preseed and
    the installer's command line, the provisioner scripts, the Azure preparation. The
    build records each file's sha256 as render writes it (manifest inputs.guest_files),
    its generated keys shown as render's placeholders; the domains are not the guest's."""
    from test_iso_install import demo_iso, iso_vars

    variables = {
        "e2e-debian": ["--var", f"image={hostile_base}"],
        "demo": [*iso_vars(demo_iso(test_installer_iso)),
                 "--var", f"container_url={azurite.account_url}/built?{demo_sas}"],
    }
    outcomes = {"e2e-debian": pair_built.cloud, "demo": pair_built.demo}
    compared: dict[str, list[str]] = {}
    for name, template in pair_built.templates.items():
        outcome = outcomes[name]
        assert outcome.returncode == 0, lines_of(outcome.stderr, name)
        manifest = validate_manifest(outcome.output_dir / "manifest.json")
        fed = {f["name"]: f["sha256"] for f in manifest["inputs"]["guest_files"]}
        out = tmp_path / name
        proc = subprocess.run(
            [*AZBUILD, "render", str(template), *variables[name], "--out", str(out)],
            capture_output=True, text=True, cwd=REPO, timeout=300,
            env=user_env(AZBUILD_CACHE_DIR=str(pair_built.cache_dir)))
        assert proc.returncode == 0, proc.stderr
        rendered = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                    for path in out.iterdir() if not path.name.startswith("domain-")}
        assert fed == rendered, (name, sorted(fed), sorted(rendered))
        compared[name] = list(fed)
    # Both kinds of source, in the order the builds fed them: the seed, the installer's files.
    # cloud-image.toml's shell and file provisioners come first: the shell ones are 1, 3, 5.
    assert compared["e2e-debian"] == ["user-data", "meta-data", "provision-1.sh",
                                      "provision-3.sh", "provision-5.sh", "azure-prep.sh",
                                      "azure-check.sh", "deprovision.sh"]
    assert compared["demo"] == ["preseed.cfg", "kernel-cmdline.txt", "provision-1.sh",
                                "azure-prep.sh", "azure-check.sh", "deprovision.sh"]


def assert_nothing_left_but_outputs(outcome: Outcome, uri: str) -> None:
    assert azbuild_domains(uri) == []
    assert list(outcome.work_root.iterdir()) == []


def test_provisioners_effects_are_in_the_image(guest_files: Any) -> None:
    g = guest_files
    assert g.cat("/etc/azbuild-e2e").strip() == "azbuild-e2e-marker"
    assert g.cat("/opt/azbuild-e2e/payload.txt") == "uploaded by the file provisioner\n"
    assert g.statns("/opt/azbuild-e2e/payload.txt")["st_mode"] & 0o777 == 0o640
    motd = (REPO / "examples" / "files" / "motd").read_text()
    assert g.cat("/etc/motd") == motd


def test_base_breaks_every_fixable_requirement(hostile_base: Path) -> None:
    """So that the build passing proves each fix (checked by the offline checker)."""
    from builder.offline_check.guest_checks import guest_checks

    statuses = {c.id: c.status for c in guest_checks(hostile_base, "qcow2")}
    for requirement in ("R04", "R05", "R07", "R08", "R11", "R12"):
        assert statuses[requirement] == "fail", (requirement, statuses)


def test_azure_preparation_is_in_the_image(guest_files: Any, tmp_path: Path) -> None:
    """R03..R12 and R15 asserted from the exported image's own files."""
    from builder.image.initrd_list import list_initrd_file, modules_in

    g = guest_files
    # R03: the root filesystem is a plain partition.
    root_device = next(m for m, p in g.mountpoints().items() if p == "/")
    assert not root_device.startswith("/dev/mapper/"), root_device
    # R04: no swap in fstab, and the swap file is gone.
    fstab = [line.split() for line in g.cat("/etc/fstab").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert all(len(f) < 3 or f[2] != "swap" for f in fstab), fstab
    # R05: the Hyper-V drivers are in every initrd.
    initrds = [f for f in g.ls("/boot") if f.startswith("initrd.img-")]
    assert initrds
    for name in initrds:
        local = tmp_path / name
        g.download(f"/boot/{name}", str(local))
        modules = modules_in(list_initrd_file(local))
        assert {"hv_vmbus", "hv_storvsc", "hv_netvsc"} <= modules, (name, sorted(modules))
    # R07: the generated GRUB configuration's kernel lines.
    # Recovery entries ("single") take GRUB_CMDLINE_LINUX only, not the _DEFAULT key
    # Debian's preparation edits; Azure boots the default entry.
    linux_lines = [line for line in g.cat("/boot/grub/grub.cfg").splitlines()
                   if line.lstrip().startswith("linux") and "single" not in line.split()]
    assert linux_lines
    for line in linux_lines:
        words = line.split()
        for arg in ("console=ttyS0", "earlyprintk=ttyS0", "net.ifnames=0"):
            assert words.count(arg) == 1, (arg, line)  # once: the two keys deduplicated
        assert "quiet" not in words and "rhgb" not in words, line
        # initramfs-tools' init sleeps rootdelay on every boot: none on Debian
        assert not any(w.startswith("rootdelay=") for w in words), line
    # R08: the agent installed and enabled.
    status = g.cat("/var/lib/dpkg/status")
    assert "Package: waagent\nStatus: install ok installed" in status
    assert g.exists("/etc/systemd/system/multi-user.target.wants/walinuxagent.service")
    # The policy that kept the agent's daemon from starting in the build VM went with
    # the install: left behind, no package upgrade would ever restart a service.
    assert not g.exists("/usr/sbin/policy-rc.d")
    # R09: sshd installed and enabled.
    assert "Package: openssh-server\nStatus: install ok installed" in status
    assert g.exists("/etc/systemd/system/multi-user.target.wants/ssh.service")
    # R10: waagent mode, every key explicit; cloud-init disabled.
    assert_waagent_mode(g.cat("/etc/waagent.conf"))
    assert g.exists("/etc/cloud/cloud-init.disabled")
    # R11: sudoers without targetpw or ALL ALL.
    sudoers = [g.cat("/etc/sudoers")] + [g.cat(f"/etc/sudoers.d/{f}")
                                         for f in g.ls("/etc/sudoers.d")]
    for text in sudoers:
        for line in text.splitlines():
            words = line.split()
            assert words[:2] != ["Defaults", "targetpw"], line
            assert "".join(words) != "ALLALL=(ALL)ALL", line
    # R12: generalised.
    assert [f for f in g.ls("/etc/ssh") if f.startswith("ssh_host_")] == []
    root_hash = next(line for line in g.cat("/etc/shadow").splitlines()
                 if line.startswith("root:")).split(":")[1]
    assert root_hash.startswith(("!", "*")), "root's password is not locked"
    assert "azbuild:" not in g.cat("/etc/passwd")
    assert not g.exists("/home/azbuild")
    assert not g.exists("/root/.ssh/authorized_keys") or not g.cat(
        "/root/.ssh/authorized_keys").strip()
    assert not g.exists("/root/.bash_history")
    assert not g.exists("/var/lib/cloud/instance")
    assert not g.exists("/var/lib/cloud/instances") or g.ls("/var/lib/cloud/instances") == []
    assert not g.exists("/etc/ssh/sshd_config.d/90-azbuild.conf")
    # R15: what makes new host keys before ssh.service on the first boot stays.
    assert g.exists("/etc/systemd/system/azbuild-ssh-host-keygen.service")
    assert g.is_symlink("/etc/systemd/system/ssh.service.wants/azbuild-ssh-host-keygen.service")


def test_vhd_passes_check(built: Outcome) -> None:
    """A standalone `azbuild check` on the user's default path: no LIBGUESTFS_* variable
    and no AZBUILD_* variable set. Its appliance runs on the accelerator the KVM probe
    found (cached for this boot by the build), never on libguestfs's own KVM-first
    fallback, which hung for 22 minutes on a machine of this kind."""
    env = {k: v for k, v in user_env().items() if not k.startswith("AZBUILD_")}
    started = time.monotonic()
    proc = subprocess.run(
        [*AZBUILD, "check", str(built.output_dir / "e2e-debian.vhd"), "--json"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )
    seconds = time.monotonic() - started
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout
    assert report["ready"] is True
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert statuses["R01"] == "pass" and statuses["R02"] == "pass"
    manifest = json.loads((built.output_dir / "manifest.json").read_text())
    used = manifest["accelerator"]["used"]
    want = "['force_tcg'] for tcg" if used == "tcg" else "none for kvm"
    assert f"libguestfs appliance (direct backend, settings {want})" in proc.stderr
    # The build cached the probe's answer for this boot: the check did not probe again.
    assert "cached in" in proc.stderr, proc.stderr
    print(f"standalone check on the default path: {seconds:.1f}s")


def test_exported_image_boots_by_itself(built: Outcome, tmp_path: Path,
                                        libvirt_uri: str) -> None:
    """Through its own bootloader (no direct kernel boot) to a login prompt."""
    overlay = tmp_path / "overlay.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b",
         built.output_dir / "e2e-debian.raw", overlay])
    spec = DomainSpec(
        name=domain_name("e2e-boot"),
        vcpus=1,
        memory=1024**3,
        accelerator="tcg",
        serial_log=tmp_path / "serial.log",
        metadata=DomainMetadata.for_this_process("e2e-boot", tmp_path),
        disks=(Disk(overlay, format="qcow2"),),
        dac_label=default_dac_label(libvirt_uri),
    )
    with running_domain(spec, libvirt_uri) as domain:
        # No rootdelay on Debian (initramfs-tools' init would sleep it: R07), so the
        # exported image reaches its login prompt within 120 s even under TCG.
        assert domain.serial.wait_for(r"login:", 120, stop=domain.stopped_event), \
            domain.serial.tail()
        assert "Linux version" in domain.serial.text()
    assert azbuild_domains(libvirt_uri) == []


# --- failures --------------------------------------------------------------------------------


def test_sigterm_during_provisioning(cloud_image: Path, tmp_path: Path,
                                     libvirt_uri: str) -> None:
    template = write_template(tmp_path / "slow.toml", """
name = "e2e-sigterm"
[[provision]]
type = "shell"
inline = ["echo provisioning-started", "sleep 600"]
""")
    outcome = sigterm_build(template, tmp_path, ["--var", f"image={cloud_image}"],
                            "provisioning-started", "provisioning never started")
    assert outcome.returncode == 143, outcome.stderr[-3000:]
    assert "SIGTERM" in outcome.stderr
    manifest = assert_failed_build_kept(outcome, libvirt_uri, "e2e-sigterm", "provision")
    assert manifest["failure"]["error"] == "terminated by SIGTERM"


# The failing builds that only read their outcome run at once, in one batch: each waits
# mostly on its own TCG guest, so together they cost little more than the slowest alone.


def _failing_provisioner(cloud_image: Path, tmp: Path) -> tuple[Outcome, str]:
    template = write_template(tmp / "fail.toml", """
name = "e2e-fail"
[[provision]]
type = "shell"
inline = ["echo about to fail", "exit 1"]
""")
    return azbuild_build(template, cloud_image, tmp), ""


def _guest_that_never_boots(cloud_image: Path, tmp: Path) -> tuple[Outcome, str]:
    empty = tmp / "empty.raw"
    with open(empty, "wb") as f:
        f.truncate(64 * 1024**2)
        f.seek(510)
        f.write(b"\x55\xaa")  # an empty MBR: a blank disk (a file of zeros is no disk)
    # UEFI: OVMF reports on the serial console that it found nothing to boot, so the
    # watchdog fails at once (SeaBIOS prints only to the screen: that case waits out
    # the silent-console bound, and is covered in test_vm.py).
    template = write_template(tmp / "noboot.toml", """
name = "e2e-noboot"
[vm]
accelerator = "tcg"
firmware = "uefi"
""")
    return azbuild_build(template, empty, tmp), ""


def _wrong_host_key(cloud_image: Path, tmp: Path) -> tuple[Outcome, str]:
    """Pinning a key the guest does not have: the guest's own key is refused at once."""
    from builder.vm.keys import KeyPair

    pinned = KeyPair.generate("pinned")
    pinned.write_public(tmp / "host.pub")
    template = write_template(tmp / "wrongkey.toml", f"""
name = "e2e-wrongkey"
[communicator]
timeout = "10m"
host_key_file = "{tmp / 'host.pub'}"
""")
    return azbuild_build(template, cloud_image, tmp), pinned.fingerprint


def _ssh_never_answers(cloud_image: Path, tmp: Path) -> tuple[Outcome, str]:
    """A guest that boots but whose sshd never starts (masked in a copy of the image)."""
    image = tmp / "nossh.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", cloud_image, image])
    g = launch([Drive(image, "qcow2", readonly=False)])
    g.mount(g.inspect_os()[0], "/")
    g.ln_sf("/dev/null", "/etc/systemd/system/ssh.service")
    g.umount_all()
    g.shutdown()
    g.close()
    template = write_template(tmp / "nossh.toml", """
name = "e2e-nossh"
[communicator]
timeout = "75s"
""")
    return azbuild_build(template, image, tmp), ""


FAILING_BUILDS = {"fail": _failing_provisioner, "noboot": _guest_that_never_boots,
                  "wrongkey": _wrong_host_key, "nossh": _ssh_never_answers}


@pytest.fixture(scope="session")
def failed(cloud_image: Path,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Outcome, str]]:
    """Each failing build's Outcome (and what its test needs besides), all run at once."""
    with ThreadPoolExecutor(max_workers=len(FAILING_BUILDS)) as pool:
        futures = {name: pool.submit(build, cloud_image, tmp_path_factory.mktemp(name))
                   for name, build in FAILING_BUILDS.items()}
        return {name: future.result() for name, future in futures.items()}


def test_failing_provisioner(failed: dict[str, tuple[Outcome, str]], libvirt_uri: str) -> None:
    outcome, _ = failed["fail"]
    assert outcome.returncode == 1, outcome.stderr[-3000:]
    assert "provision" in outcome.stderr and "about to fail" in outcome.stderr
    manifest = assert_failed_build_kept(outcome, libvirt_uri, "e2e-fail", "provision")
    assert "about to fail" in manifest["failure"]["error"]


def test_guest_that_never_boots(failed: dict[str, tuple[Outcome, str]],
                                libvirt_uri: str) -> None:
    outcome, _ = failed["noboot"]
    assert outcome.returncode == 1, outcome.stderr[-3000:]
    assert "the guest did not start" in outcome.stderr
    assert "no bootable device" in outcome.stderr or "no output" in outcome.stderr
    assert "hint:" in outcome.stderr
    manifest = assert_failed_build_kept(outcome, libvirt_uri, "e2e-noboot", "boot")
    assert "the guest did not start" in manifest["failure"]["error"]
    assert manifest["failure"]["hint"]


def test_wrong_host_key(failed: dict[str, tuple[Outcome, str]], libvirt_uri: str) -> None:
    outcome, pinned_fingerprint = failed["wrongkey"]
    assert outcome.returncode == 1, outcome.stderr[-3000:]
    assert pinned_fingerprint in outcome.stderr
    assert outcome.stderr.count("SHA256:") >= 2, "both fingerprints must be named"
    assert_failed_build_kept(outcome, libvirt_uri, "e2e-wrongkey", "connect")


def test_ssh_never_answers(failed: dict[str, tuple[Outcome, str]], libvirt_uri: str) -> None:
    outcome, _ = failed["nossh"]
    assert outcome.returncode == 1, outcome.stderr[-3000:]
    assert "75s" in outcome.stderr or "timed out" in outcome.stderr
    assert "serial console" in outcome.stderr
    assert_failed_build_kept(outcome, libvirt_uri, "e2e-nossh", "connect")


def test_reboot_provisioner(built: Outcome) -> None:
    """A real reboot mid-provisioning (in the shared build): the connection drops, the
    build reconnects to the new boot and carries on."""
    assert "rebooting the guest" in built.stderr
    assert "boot ids:" in built.stderr
    assert "e2e-debian.raw" in {p.name for p in built.output_dir.iterdir()}
