"""`azbuild render` of every bundled example, and the step list of each kind of source:
what a build would feed the VM, written without downloading anything or starting one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from test_iso import make_iso

from builder import redact
from builder.cli import main
from builder.context import BuildContext, BuildOptions
from builder.plan import LABEL_AT_BUILD_TIME
from builder.provision import inline_script
from builder.render import _write_all, mask_for
from builder.steps import step_list
from builder.template import load_template
from distros import resolve

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.toml"))
ANSWER_FILES = {
    "rhel": {"ks.cfg"},
    "ubuntu": {"user-data", "meta-data"},
    "debian": {"preseed.cfg"},
    "suse": {"autoinst.xml"},
}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_renders(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    assert main(["render", str(example), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"domain-boot.xml", "azure-prep.sh", "azure-check.sh", "deprovision.sh"} <= names
    loaded = load_template(example)
    template = loaded.template
    if template.source.iso is None:
        assert {"user-data", "meta-data"} <= names
        return
    family = resolve(template.distro.name, template.distro.version).family
    assert ANSWER_FILES[family] <= names
    assert "kernel-cmdline.txt" in names
    install = ET.fromstring((out / "domain-install.xml").read_text())
    assert install.findtext("on_reboot") == "destroy"
    os_el = install.find("os")
    assert os_el is not None
    assert (os_el.findtext("kernel") or "").endswith("installer-kernel")
    assert "console=ttyS0" in (os_el.findtext("cmdline") or "")
    drives = [(d.get("device"), d.find("target").get("bus"))  # type: ignore[union-attr]
              for d in install.iter("disk")]
    # The target first, then the ISO (and the answer volume) as SATA CD-ROMs.
    assert drives[0] == ("disk", "virtio")
    assert all(d == ("cdrom", "sata") for d in drives[1:])
    assert len(drives) == (2 if family == "debian" else 3)
    initrd = os_el.findtext("initrd") or ""
    assert initrd.endswith("installer-initrd-answers" if family == "debian"
                           else "installer-initrd")


ISO_EXAMPLES = [p for p in EXAMPLES if load_template(p).template.source.iso is not None]
# Where each family's answer file puts the EFI system partition.
ESP_MARKS = {
    "rhel": ("ks.cfg", "part /boot/efi --fstype=efi"),
    "ubuntu": ("user-data", "path: /boot/efi"),
    "debian": ("preseed.cfg", "method{ efi }"),
    "suse": ("autoinst.xml", "<mount>/boot/efi</mount>"),
}


@pytest.mark.parametrize("example", ISO_EXAMPLES, ids=lambda p: p.stem)
def test_every_iso_example_renders_for_generation_2(example: Path, tmp_path: Path) -> None:
    """The example under the shipped gen2 layer: UEFI domains and an answer file with an
    EFI system partition, for every family."""
    layer = tmp_path / "gen2-variant.toml"
    layer.write_text(f'extends = ["gen2", "{os.path.relpath(example, tmp_path)}"]\n')
    template = load_template(layer).template
    assert template.vm.firmware == "uefi"
    family = resolve(template.distro.name, template.distro.version).family
    out = tmp_path / "rendered"
    assert main(["render", str(layer), "--out", str(out)]) == 0
    for name in ("domain-install.xml", "domain-boot.xml"):
        os_el = ET.fromstring((out / name).read_text()).find("os")
        assert os_el is not None and os_el.get("firmware") == "efi", name
    answer_file, mark = ESP_MARKS[family]
    assert mark in (out / answer_file).read_text()
    assert "uefi" in (out / "azure-prep.sh").read_text().splitlines()[1]


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="needs libvirt-clients")
def test_rendered_domains_pass_libvirts_schema(tmp_path: Path) -> None:
    for example in (REPO / "examples" / "demo.toml", REPO / "examples" / "rocky.toml"):
        out = tmp_path / example.stem
        assert main(["render", str(example), "--out", str(out)]) == 0
        for name in ("domain-install.xml", "domain-boot.xml"):
            proc = subprocess.run(["virt-xml-validate", str(out / name), "domain"],
                                  capture_output=True, text=True, check=False)
            assert proc.returncode == 0, (example.name, name, proc.stdout, proc.stderr)


def _step_names(example: Path) -> list[str]:
    loaded = load_template(example)
    template = loaded.template
    ctx = BuildContext(loaded=loaded, options=BuildOptions(),
                       distro=resolve(template.distro.name, template.distro.version),
                       uri="qemu:///system", output_dir=Path("/nonexistent"), build_id="0")
    return [name for name, _ in step_list(ctx)]


def test_iso_builds_install_then_boot_the_disk() -> None:
    names = _step_names(REPO / "examples" / "demo.toml")
    assert names[:4] == ["prepare", "fetch", "accelerator", "install"]
    assert "source disk" not in names and "seed" not in names
    assert names[4:6] == ["boot", "connect"]


def test_disk_image_builds_copy_and_seed() -> None:
    names = _step_names(REPO / "examples" / "cloud-image.toml")
    assert names[:4] == ["prepare", "source disk", "seed", "accelerator"]
    assert "install" not in names


# XML, YAML, JSON and shell metacharacters; TOKEN is what must never show.
TOKEN = "Tok3n-51c"
SECRET_TOML = TOKEN + '&<\\"q>'
SECRET_LAYER = """\
extends = ["{example}"]

[variables]
secret = {{ default = "{secret}", sensitive = true }}
{iso}
[[provision]]
type = "shell"
inline = ["echo '${{var.secret}}' > /root/token", "curl -H \\"X-Key: ${{var.secret}}\\" x"]
env = {{ TOKEN = "${{var.secret}}" }}
"""


def _parse(path: Path) -> None:
    """Parse `path` as its type says; raise if it does not parse."""
    name = path.name
    text = path.read_text()
    if name.endswith(".xml"):
        ET.fromstring(text)
    elif name in ("user-data", "meta-data"):
        yaml.safe_load(text)
    elif name.endswith(".json"):
        json.loads(text)
    elif name.endswith(".toml"):
        tomllib.loads(text)
    elif name.endswith(".sh"):
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, (name, proc.stderr)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_rendered_file_parses_with_secrets_masked(example: Path, tmp_path: Path) -> None:
    """A secret in the ISO path (the install domain XML), a provisioner's commands and
    env, and the root password: masked in a form each file type still parses with."""
    is_iso = load_template(example).template.source.iso is not None
    layer = tmp_path / "secret-layer.toml"
    layer.write_text(SECRET_LAYER.format(
        example=os.path.relpath(example, tmp_path), secret=SECRET_TOML,
        iso=('[source]\niso = "isos/${var.secret}.iso"\nchecksum = "sha256:' + "0" * 64
             + '"\n[install]\nroot_password = "${var.secret}"\n') if is_iso else "",
    ))
    out = tmp_path / "rendered"
    assert main(["render", str(layer), "--out", str(out)]) == 0
    files = sorted(out.iterdir())
    for path in files:
        assert TOKEN not in path.read_text(), path.name
        _parse(path)
    scripts = [p for p in files if p.name.startswith("provision-")]
    assert "echo '__sensitive__' > /root/token" in scripts[-1].read_text()
    if is_iso:
        install = ET.fromstring((out / "domain-install.xml").read_text())
        sources = [s.get("file") for s in install.iter("source")]
        assert any(s and "<sensitive>" in s for s in sources), sources


def test_provisioner_scripts_are_what_the_build_runs(tmp_path: Path) -> None:
    script = tmp_path / "setup.sh"
    script.write_text("#!/bin/sh\necho from a file\n")
    template = tmp_path / "t.toml"
    template.write_text(f"""\
extends = ["{os.path.relpath(REPO / "examples" / "cloud-image.toml", tmp_path)}"]
[[provision]]
type = "shell"
inline = ["apt-get update", "apt-get -y install nginx"]
[[provision]]
type = "reboot"
[[provision]]
type = "shell"
script = "setup.sh"
""")
    provisioners = load_template(template).template.provision
    out = tmp_path / "rendered"
    assert main(["render", str(template), "--out", str(out)]) == 0
    first = len(provisioners) - 2  # the example's own provisioners come first
    assert (out / f"provision-{first}.sh").read_text() == inline_script(
        ["apt-get update", "apt-get -y install nginx"])
    assert not (out / f"provision-{first + 1}.sh").exists()  # the reboot
    assert (out / f"provision-{first + 2}.sh").read_text() == script.read_text()


# Where Anaconda's kernel and initrd are in a RHEL-family ISO (the distro's default).
RHEL_INSTALLER = {"images/pxeboot/vmlinuz": b"k", "images/pxeboot/initrd.img": b"i"}


def _rhel_template(tmp_path: Path, iso: str, checksum: str) -> Path:
    template = tmp_path / "alma.toml"
    template.write_text(f"""\
name = "alma"
[source]
iso = "{iso}"
checksum = "{checksum}"
[distro]
name = "almalinux"
version = "9"
""")
    return template


def test_rhel_cmdline_has_the_stage2_label_of_a_local_iso(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "alma.iso", RHEL_INSTALLER, joliet=False,
                   label="AlmaLinux-9-4 x86_64")
    digest = hashlib.sha256(iso.read_bytes()).hexdigest()
    out = tmp_path / "rendered"
    template = _rhel_template(tmp_path, str(iso), f"sha256:{digest}")
    assert main(["render", str(template), "--out", str(out)]) == 0
    cmdline = (out / "kernel-cmdline.txt").read_text()
    assert "inst.stage2=hd:LABEL=AlmaLinux-9-4\\x20x86_64 " in cmdline
    assert not cmdline.startswith("#")


def test_rhel_cmdline_says_when_the_label_is_read_at_build_time(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    template = _rhel_template(tmp_path, "https://example.invalid/alma.iso", "sha256:" + "0" * 64)
    assert main(["render", str(template), "--out", str(out)]) == 0
    cmdline = (out / "kernel-cmdline.txt").read_text()
    assert cmdline.startswith(LABEL_AT_BUILD_TIME)
    assert "inst.stage2" not in cmdline.splitlines()[1]


def test_rhel_cmdline_reads_the_label_of_a_cached_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZBUILD_CACHE_DIR", str(tmp_path / "cache"))
    iso = make_iso(tmp_path / "dl.iso", RHEL_INSTALLER, label="ALMA9")
    digest = hashlib.sha256(iso.read_bytes()).hexdigest()
    (tmp_path / "cache" / "iso").mkdir(parents=True)
    iso.rename(tmp_path / "cache" / "iso" / f"sha256-{digest}.iso")
    out = tmp_path / "rendered"
    template = _rhel_template(tmp_path, "https://example.invalid/alma.iso", f"sha256:{digest}")
    assert main(["render", str(template), "--out", str(out)]) == 0
    assert "inst.stage2=hd:LABEL=ALMA9 " in (out / "kernel-cmdline.txt").read_text()


def test_other_families_get_no_stage2_note(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    assert main(["render", str(REPO / "examples" / "ubuntu.toml"), "--out", str(out)]) == 0
    cmdline = (out / "kernel-cmdline.txt").read_text()
    assert not cmdline.startswith("#") and "inst.stage2" not in cmdline


def test_a_non_empty_out_is_refused_and_force_replaces_it_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rendered"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier render")
    demo = str(REPO / "examples" / "demo.toml")
    assert main(["render", demo, "--out", str(out)]) == 2
    assert f"--out {out} is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["stale.txt"]
    assert main(["render", demo, "--out", str(out), "--force"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "stale.txt" not in names and "domain-boot.xml" in names
    assert [p.name for p in tmp_path.iterdir() if p.name != "rendered"] == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["render", demo, "--out", str(empty)]) == 0  # an empty --out is fine


def test_a_failed_write_leaves_nothing_and_keeps_the_old_out(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    out.mkdir()
    (out / "kept.txt").write_text("the earlier render")
    # The second file cannot be written (no such directory): the first one was.
    with pytest.raises(Exception, match="cannot write"):
        _write_all(out, {"a.txt": "a", "missing/b.txt": "b"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rendered"]
    assert [p.name for p in out.iterdir()] == ["kept.txt"]


def test_an_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    assert main(["render", str(REPO / "examples" / "demo.toml"), "--out", str(out)]) == 2
    assert out.read_text() == "x"


def test_secrets_are_masked_per_file_type() -> None:
    """The XML form of a secret (as ElementTree writes an attribute) is found and masked
    as XML text; a shell file gets one shell word."""
    secret = TOKEN + '&<"q>'
    redact.register(secret)
    try:
        element = ET.Element("source", file=secret)
        xml = ET.tostring(element, encoding="unicode")
        masked = redact.redact(xml, mask_for("domain-boot.xml"))
        assert ET.fromstring(masked).get("file") == "<sensitive>"
        assert redact.redact(f"echo {secret}", mask_for("provision-1.sh")) == "echo __sensitive__"
        assert redact.redact(f"k: '{secret}'", mask_for("user-data")) == "k: '<sensitive>'"
    finally:
        redact.clear()


def test_the_working_directory_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `render --out .` (or a parent of the cwd) would rename a new directory into the
    # place of the one the user's shell is in.
    here = tmp_path / "project" / "sub"
    here.mkdir(parents=True)
    (here / "mine.txt").write_text("the user's")
    monkeypatch.chdir(here)
    demo = str(REPO / "examples" / "demo.toml")
    for out in (".", "..", str(here)):
        assert main(["render", demo, "--out", out, "--force"]) == 2
        assert "is the directory you are in" in capsys.readouterr().err
    assert [p.name for p in here.iterdir()] == ["mine.txt"]
    assert Path.cwd() == here and here.is_dir()
    assert main(["render", demo, "--out", "rendered"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(Path(p).is_absolute() and Path(p).is_file() for p in printed)
