"""`azbuild render` of every bundled example, and the step plan of each kind of source:
what a build would feed the VM, written without downloading anything or starting one."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from builder.cli import main
from builder.pipeline import BuildContext, BuildOptions
from builder.steps import plan
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


def _plan_names(example: Path) -> list[str]:
    loaded = load_template(example)
    template = loaded.template
    ctx = BuildContext(loaded=loaded, options=BuildOptions(),
                       distro=resolve(template.distro.name, template.distro.version),
                       uri="qemu:///system", output_dir=Path("/nonexistent"), build_id="0")
    return [name for name, _ in plan(ctx)]


def test_iso_builds_install_then_boot_the_disk() -> None:
    names = _plan_names(REPO / "examples" / "demo.toml")
    assert names[:3] == ["prepare", "accelerator", "install"]
    assert "source disk" not in names and "seed" not in names
    assert names[3:5] == ["boot", "connect"]


def test_disk_image_builds_copy_and_seed() -> None:
    names = _plan_names(REPO / "examples" / "cloud-image.toml")
    assert names[:4] == ["prepare", "source disk", "seed", "accelerator"]
    assert "install" not in names
