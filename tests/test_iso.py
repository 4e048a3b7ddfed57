"""installer_and_label and extract_files on small ISOs built here with each family's layout."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest

from builder.errors import BuildError, UsageError
from builder.image.iso import extract_files, installer_and_label, treeinfo_images
from distros import resolve

KERNEL = b"MZ fake kernel " * 100
INITRD = b"\x1f\x8b fake initrd " * 100

TREEINFO = """\
[general]
family = Red Hat Enterprise Linux
version = 9.4
arch = x86_64

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img
efiboot.img = images/efiboot.img

[images-aarch64]
kernel = images/pxeboot/aarch64/vmlinuz
initrd = images/pxeboot/aarch64/initrd.img
"""


def make_iso(
    path: Path, files: dict[str, bytes], *, rock_ridge: bool = True, joliet: bool = True,
    label: str = "TEST",
) -> Path:
    """An ISO 9660 image holding `files`, with Rock Ridge and/or Joliet names, or only
    plain ISO 9660 names (upper case, '.' and '-' in directories turned into '_')."""
    iso = pycdlib.PyCdlib()
    iso.new(
        interchange_level=3, vol_ident=label,
        rock_ridge="1.09" if rock_ridge else None, joliet=3 if joliet else None,
    )
    made: set[str] = set()
    for counter, (name, data) in enumerate(sorted(files.items())):
        parts = name.split("/")
        for depth in range(1, len(parts)):
            key = "/".join(parts[:depth])
            if key not in made:
                made.add(key)
                iso.add_directory(
                    _dir_path(key),
                    rr_name=parts[depth - 1] if rock_ridge else None,
                    joliet_path="/" + key if joliet else None,
                )
        if rock_ridge or joliet:
            leaf = f"F{counter:06d}."  # the real name comes from Rock Ridge / Joliet
        else:
            leaf = parts[-1].upper().replace("-", "_")
            leaf += "" if "." in leaf else "."
        parent = _dir_path("/".join(parts[:-1])) if len(parts) > 1 else ""
        iso.add_fp(
            io.BytesIO(data), len(data), f"{parent}/{leaf};1",
            rr_name=parts[-1] if rock_ridge else None,
            joliet_path="/" + name if joliet else None,
        )
    iso.write(str(path))
    iso.close()
    return path


def _dir_path(key: str) -> str:
    return "/" + "/".join(p.upper().replace(".", "_").replace("-", "_") for p in key.split("/"))


def test_rhel_from_treeinfo_with_rock_ridge(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "rhel.iso", {
        ".treeinfo": TREEINFO.encode(),
        "images/pxeboot/vmlinuz": KERNEL,
        "images/pxeboot/initrd.img": INITRD,
        "EFI/BOOT/BOOTX64.EFI": b"efi",
    }, label="RHEL-9-4-x86_64")
    found, label = installer_and_label(iso, resolve("rhel", "9"))
    assert (found.kernel, found.initrd, found.source) == (
        "images/pxeboot/vmlinuz", "images/pxeboot/initrd.img", ".treeinfo")
    dest = tmp_path / "vmlinuz"
    extract_files(iso, {found.kernel: dest})
    assert dest.read_bytes() == KERNEL
    assert label == "RHEL-9-4-x86_64"


def test_treeinfo_path_that_differs_from_the_default_wins(tmp_path: Path) -> None:
    treeinfo = "[images-x86_64]\nkernel = isolinux/vmlinuz\ninitrd = isolinux/initrd.img\n"
    iso = make_iso(tmp_path / "ol.iso", {
        ".treeinfo": treeinfo.encode(),
        "isolinux/vmlinuz": KERNEL,
        "isolinux/initrd.img": INITRD,
    })
    found = installer_and_label(iso, resolve("oracle", "8"))[0]
    assert (found.kernel, found.initrd, found.source) == (
        "isolinux/vmlinuz", "isolinux/initrd.img", ".treeinfo")


def test_ubuntu_defaults_joliet_only(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "ubuntu.iso", {
        "casper/vmlinuz": KERNEL, "casper/initrd": INITRD, "md5sum.txt": b"",
    }, rock_ridge=False)
    found = installer_and_label(iso, resolve("ubuntu", "24.04"))[0]
    assert (found.kernel, found.initrd, found.source) == (
        "casper/vmlinuz", "casper/initrd", "distro")
    dest = tmp_path / "initrd"
    extract_files(iso, {"casper/initrd": dest})
    assert dest.read_bytes() == INITRD


def test_suse_plain_iso9660_names(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "sles.iso", {
        "boot/x86_64/loader/linux": KERNEL, "boot/x86_64/loader/initrd": INITRD,
    }, rock_ridge=False, joliet=False)
    found = installer_and_label(iso, resolve("sles", "15"))[0]
    assert found.kernel == "boot/x86_64/loader/linux"
    dest = tmp_path / "linux"
    extract_files(iso, {found.kernel: dest})
    assert dest.read_bytes() == KERNEL


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso not installed")
def test_debian_layout_made_by_xorriso(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "install.amd").mkdir(parents=True)
    (tree / "install.amd" / "vmlinuz").write_bytes(KERNEL)
    (tree / "install.amd" / "initrd.gz").write_bytes(INITRD)
    (tree / "README.txt").write_text("Debian\n")
    iso = tmp_path / "debian.iso"
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "Debian 12.8.0 amd64 n",
         "-o", str(iso), str(tree)],
        check=True, capture_output=True,
    )
    found, label = installer_and_label(iso, resolve("debian", "12"))
    assert (found.kernel, found.initrd, found.source) == (
        "install.amd/vmlinuz", "install.amd/initrd.gz", "distro")
    dest = tmp_path / "initrd.gz"
    extract_files(iso, {found.initrd: dest})
    assert dest.read_bytes() == INITRD
    assert label == "Debian 12.8.0 amd64 n"


def test_template_override_and_its_error(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "custom.iso", {
        ".treeinfo": TREEINFO.encode(),
        "images/pxeboot/vmlinuz": KERNEL, "images/pxeboot/initrd.img": INITRD,
        "custom/vmlinuz": KERNEL, "custom/initrd.img": INITRD,
    })
    distro = resolve("rocky", "9")
    found = installer_and_label(iso, distro, "/custom/vmlinuz", "custom/initrd.img")[0]
    assert (found.kernel, found.initrd, found.source) == (
        "custom/vmlinuz", "custom/initrd.img", "template")
    with pytest.raises(UsageError, match="custom/nope"):
        installer_and_label(iso, distro, "custom/nope")


def test_wrong_iso_lists_its_top_level(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "ubuntu.iso", {
        "casper/vmlinuz": KERNEL, "casper/initrd": INITRD, "md5sum.txt": b"",
    })
    with pytest.raises(BuildError) as err:
        installer_and_label(iso, resolve("debian", "12"))
    message = str(err.value)
    assert "install.amd/vmlinuz" in message
    assert "casper/" in message and "md5sum.txt" in message
    with pytest.raises(BuildError, match="not found"):
        extract_files(iso, {"install.amd/vmlinuz": tmp_path / "k"})
    assert not (tmp_path / "k").exists()


def test_not_an_iso(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.iso"
    bogus.write_bytes(b"\0" * 70000)
    with pytest.raises(BuildError, match="cannot read ISO"):
        installer_and_label(bogus, resolve("debian", "12"))


def test_treeinfo_parsing() -> None:
    assert treeinfo_images(TREEINFO) == ("images/pxeboot/vmlinuz", "images/pxeboot/initrd.img")
    assert treeinfo_images(TREEINFO, "aarch64") == (
        "images/pxeboot/aarch64/vmlinuz", "images/pxeboot/aarch64/initrd.img")
    assert treeinfo_images("[general]\nfamily = x\n") is None
    assert treeinfo_images("not an ini file") is None


def test_extract_files_copies_the_installer_in_one_reading(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "deb.iso", {"install.amd/vmlinuz": KERNEL,
                                          "install.amd/initrd.gz": INITRD})
    wanted = {"install.amd/vmlinuz": tmp_path / "k", "install.amd/initrd.gz": tmp_path / "i"}
    extract_files(iso, wanted)
    assert (tmp_path / "k").read_bytes() == KERNEL and (tmp_path / "i").read_bytes() == INITRD
    with pytest.raises(BuildError, match=r"install\.amd/gtk/initrd\.gz not found"):
        extract_files(iso, {"install.amd/gtk/initrd.gz": tmp_path / "g"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deb.iso", "i", "k"]
