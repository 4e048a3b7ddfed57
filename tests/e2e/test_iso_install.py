"""End to end through the ISO path: the demo template against the test installer ISO.

The installer is azbuild's stand-in for d-i (tests/installer/), fed the same
preseed.cfg azbuild renders for a real Debian netinst, appended to its initrd. One
build is shared by the tests that inspect its image; the failure cases stop early.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import installer  # the test installer's own parser gives the expected layout
import pytest
from azurite import blob_sha256
from test_build import (
    AZBUILD,
    REPO,
    Outcome,
    assert_failed_build_kept,
    assert_nothing_left,
    assert_nothing_left_but_outputs,
    azbuild_domains,
    lines_of,
    open_guest,
    run_azbuild_build,
    sigterm_build,
    validate_manifest,
)

from builder.run import run

pytestmark = pytest.mark.e2e

DEMO = REPO / "examples" / "demo.toml"


def build_iso(template: Path, iso: Path, tmp: Path, *extra: str) -> Outcome:
    return run_azbuild_build(template, tmp, *iso_vars(iso), *extra)


def iso_vars(iso: Path) -> list[str]:
    return ["--var", f"iso={iso}", "--var", f"checksum=file:{iso.parent / 'SHA256SUMS'}"]


def write_demo_template(tmp: Path) -> Path:
    """The README's demo, plus one [[publish]] entry into Azurite whose SAS comes in
    through a sensitive variable: one build serves the ISO-path and the publish tests.
    As a nightly template, it names what it publishes by its build (${build.*}): every
    build of it publishes a blob of its own, and its rebuilds are still the same template."""
    template = tmp / "demo.toml"
    template.write_text(
        f'extends = ["{DEMO}"]\n\n'
        '[variables]\ncontainer_url = { sensitive = true, description = "with its SAS" }\n\n'
        '[[publish]]\ntype = "azure-page-blob"\ncontainer_url = "${var.container_url}"\n'
        'blob = "demo-${name}-${build.timestamp}-${build.id}.vhd"\n')
    return template


def demo_iso(test_installer_iso: Path) -> Path:
    # The stable name, as the README's demo uses it (SHA256SUMS lists that name).
    return test_installer_iso.parent / "azbuild-test-installer.iso"


@pytest.fixture(scope="session")
def demo_built(pair_built: Any) -> Outcome:
    """The demo half of the shared `--jobs 2` build (conftest.py's pair_built)."""
    outcome: Outcome = pair_built.demo
    assert outcome.returncode == 0, lines_of(outcome.stderr, "demo")
    return outcome


@pytest.fixture(scope="session")
def demo_files(demo_built: Outcome) -> Iterator[Any]:
    g = open_guest(demo_built.output_dir / "demo.raw", "raw", readonly=True)
    yield g
    g.close()


def test_demo_builds_from_the_iso(demo_built: Outcome, libvirt_uri: str) -> None:
    out = demo_built.output_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "build.log", "demo.raw", "demo.spdx.json", "demo.vhd", "manifest.json"]
    manifest = validate_manifest(out / "manifest.json")
    assert manifest["status"] == "succeeded" and manifest["failure"] is None
    assert manifest["ready"] is True
    steps = list(manifest["steps"])
    assert steps.index("install") < steps.index("boot") < steps.index("azure preparation")
    log = (out / "build.log").read_text()
    assert "appended to the installer initrd" in log
    assert "the installer finished (the guest powered off)" in log
    # The installed disk's GRUB (the test installer's GRUB_TIMEOUT=5) boots at once.
    assert "pressed Enter at GRUB's menu" in log
    assert_nothing_left_but_outputs(demo_built, libvirt_uri)


def test_partition_table_matches_the_recipe(demo_built: Outcome, tmp_path: Path) -> None:
    """The exported disk holds the layout the rendered preseed's expert recipe asks for."""
    run([*AZBUILD, "render", DEMO, "--out", tmp_path], cwd=REPO)
    answers = installer.parse_preseed((tmp_path / "preseed.cfg").read_text())
    _name, recipe = installer.parse_recipe(answers["partman-auto/expert_recipe"].value)
    raw = demo_built.output_dir / "demo.raw"
    table = json.loads(run(["sfdisk", "--json", raw]).stdout)["partitiontable"]
    assert table["label"] == "dos"
    parts = table["partitions"]
    assert len(parts) == len(recipe)
    disk_bytes = raw.stat().st_size
    for part, wanted in zip(parts, recipe, strict=True):
        size = part["size"] * 512
        assert part["type"] == "83"
        assert part.get("bootable", False) == wanted.bootable
        assert part["start"] * 512 % (1024 * 1024) == 0, "not MiB-aligned"
        assert size >= wanted.minimum
        if wanted.maximum is not None:
            assert size <= wanted.maximum
    # One unbounded partition takes the disk (all but the first MiB).
    if len(recipe) == 1 and recipe[0].maximum is None:
        assert parts[0]["size"] * 512 >= disk_bytes - 2 * 1024 * 1024


def test_installed_system_is_what_the_preseed_asked_for(demo_files: Any) -> None:
    g = demo_files
    assert g.vfs_type("/dev/sda1") == "ext4"
    fstab = [line.split() for line in g.cat("/etc/fstab").splitlines()
             if line.strip() and not line.startswith("#")]
    assert [(f[1], f[2]) for f in fstab] == [("/", "ext4")]
    assert fstab[0][0] == "UUID=" + g.vfs_uuid("/dev/sda1")
    # The preseed's settings (the host name is not among them: deprovisioning resets it).
    assert g.cat("/etc/timezone").strip() == "UTC"
    assert "LANG=en_US.UTF-8" in g.cat("/etc/default/locale")
    assert 'XKBLAYOUT="us"' in g.cat("/etc/default/keyboard")
    assert "deb http://deb.debian.org/debian bookworm main" in g.cat("/etc/apt/sources.list")
    # debian-installer/add-kernel-opts: the Azure arguments from the first boot on.
    assert "net.ifnames=0" in g.cat("/etc/default/grub")
    # net.ifnames=0 on the installer's command line: the installer wrote the NIC's name as
    # the installed system knows it, not its predictable name (ens16).
    interfaces = g.cat("/etc/network/interfaces")
    assert "allow-hotplug eth0" in interfaces and not re.search(r"\bens\d", interfaces)
    # The provisioners ran on the installed system.
    assert g.cat("/etc/motd") == (REPO / "examples" / "files" / "motd").read_text()
    # No swap, no LVM (R03, R04): the recipe and the image agree.
    assert g.lvs() == []
    assert not any(f[2] == "swap" for f in fstab)


# --- failures ---------------------------------------------------------------------------


def test_installer_failure_stops_the_build_at_once(
    test_installer_iso: Path, tmp_path: Path, libvirt_uri: str
) -> None:
    """An instruction the installer cannot follow: it prints d-i's failure marker and
    waits; the build fails on the marker, long before install.timeout."""
    answer = tmp_path / "lvm.cfg"
    answer.write_text("d-i partman-auto/method string lvm\n"
                      "d-i netcfg/get_hostname string {{ hostname }}\n")
    template = tmp_path / "lvm.toml"
    template.write_text(f'extends = ["{DEMO}"]\nname = "e2e-lvm"\n'
                        f'[install]\nanswer_file = "{answer}"\ntimeout = "1h"\n')
    stable = test_installer_iso.parent / "azbuild-test-installer.iso"
    outcome = build_iso(template, stable, tmp_path)
    assert outcome.returncode == 1, outcome.stderr[-3000:]
    assert "installer failed" in outcome.stderr
    assert "[!!]" in outcome.stderr and "partman-auto/method" in outcome.stderr
    assert outcome.seconds < 900, "waited for the timeout instead of the failure marker"
    kept = outcome.output_dir / "e2e-lvm.install-serial.log"
    assert "[!!] Load preseed file" in kept.read_text()
    manifest = assert_failed_build_kept(outcome, libvirt_uri, "e2e-lvm", "install",
                                        consoles=("install-serial.log",))
    assert "installer failed" in manifest["failure"]["error"]


def test_wrong_iso_checksum(test_installer_iso: Path, tmp_path: Path,
                            libvirt_uri: str) -> None:
    outcome = build_iso(DEMO, test_installer_iso, tmp_path, "--var",
                        "checksum=sha256:" + "0" * 64)
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert "checksum mismatch" in outcome.stderr
    # The ISO is verified in the fetch step, before any domain: no console yet.
    assert_failed_build_kept(outcome, libvirt_uri, "demo", "fetch", consoles=())
    assert test_installer_iso.is_file(), "a local ISO that does not match is left alone"


def test_missing_iso(tmp_path: Path, libvirt_uri: str) -> None:
    outcome = build_iso(DEMO, tmp_path / "nothing.iso", tmp_path)
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert "nothing.iso" in outcome.stderr
    assert_nothing_left(outcome, libvirt_uri)
    assert azbuild_domains(libvirt_uri) == []


def test_sigterm_during_install(test_installer_iso: Path, tmp_path: Path,
                                libvirt_uri: str) -> None:
    """SIGTERM once the installer's domain runs: exit 143, the domain destroyed."""
    template = tmp_path / "term.toml"
    template.write_text(f'extends = ["{DEMO}"]\nname = "e2e-iso-term"\n')
    stable = test_installer_iso.parent / "azbuild-test-installer.iso"
    outcome = sigterm_build(template, tmp_path, iso_vars(stable),
                            "started domain azbuild-e2e-iso-term", "the installer never started")
    assert outcome.returncode == 143, outcome.stderr[-3000:]
    assert_failed_build_kept(outcome, libvirt_uri, "e2e-iso-term", "install",
                             consoles=("install-serial.log",))


def test_azbuild_publish_uploads_the_demos_vhd_to_azurite(
    demo_built: Outcome, azurite: Any
) -> None:
    """The demo's manifest says ready, so no --force is needed; only its data is sent."""
    vhd = demo_built.output_dir / "demo.vhd"
    manifest = json.loads((demo_built.output_dir / "manifest.json").read_text())
    [artifact] = [a for a in manifest["artifacts"] if a["file"] == "demo.vhd"]
    container = azurite.service().create_container("demo")
    proc = subprocess.run(
        [*AZBUILD, "publish", str(vhd), "--container-url", f"{azurite.account_url}/demo"],
        capture_output=True, text=True, cwd=REPO, timeout=1800, check=False,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    assert proc.returncode == 0, proc.stderr
    assert "verified sha256 " + artifact["sha256"] in proc.stdout
    blob = container.get_blob_client("demo.vhd")
    props = blob.get_blob_properties()
    assert props.metadata["azbuild_ready"] == "true"
    assert props.metadata["azbuild_sha256"] == artifact["sha256"]
    sent = int(proc.stdout.split("sent ")[1].split("(")[1].split(" bytes")[0])
    assert sent <= artifact["allocated"] * 1.01
    assert blob_sha256(blob) == artifact["sha256"]


def test_the_demo_build_s_publish_entry_uploaded_it(
    demo_built: Outcome, azurite: Any, demo_sas: str
) -> None:
    """`azbuild build` with a [[publish]] entry: the blob holds the image, the manifest
    records the upload, and no output holds the SAS."""
    manifest = json.loads((demo_built.output_dir / "manifest.json").read_text())
    steps = list(manifest["steps"])
    # The manifest is written in the last step, so its own timing is not in it.
    assert steps[-3:] == ["check", "simulate", "publish"], steps
    [record] = manifest["publish"]
    [artifact] = [a for a in manifest["artifacts"] if a["format"] == "vhd-fixed"]
    name = record["url"].removeprefix(f"{azurite.account_url}/built/")
    assert re.fullmatch(rf"demo-demo-\d{{8}}T\d{{6}}Z-{manifest['build_id']}\.vhd", name), name
    assert record["sha256"] == artifact["sha256"] and record["ready"] is True
    assert record["bytes_sent"] + record["bytes_skipped"] == artifact["size"]
    assert record["bytes_sent"] <= artifact["allocated"] * 1.01
    blob = azurite.service().get_container_client("built").get_blob_client(name)
    assert blob_sha256(blob) == artifact["sha256"]
    signature = demo_sas.split("sig=")[1].split("&")[0]
    for text in (demo_built.stdout, demo_built.stderr,
                 (demo_built.output_dir / "manifest.json").read_text(),
                 (demo_built.output_dir / "build.log").read_text()):
        assert signature not in text
