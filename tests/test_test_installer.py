"""The test installer (tests/installer/installer.py), azbuild's stand-in for d-i in the
end-to-end tests: it must accept exactly the preseed azbuild renders for a real Debian
netinst (BIOS), size partitions as partman does, and refuse what it cannot honour."""

from __future__ import annotations

from pathlib import Path

import installer
import pytest

from builder.answers import AnswerContext, installer_cmdline, render_answer_files
from builder.models import Template
from distros import resolve

ROOT_HASH = "$6$azbuildtest$" + "x" * 86
MB = installer.MB


def rendered_preseed(firmware: str = "bios") -> str:
    template = Template.model_validate({
        "name": "stand-in",
        "source": {"iso": "/srv/x.iso", "checksum": "sha256:" + "0" * 64},
        "distro": {"name": "debian", "version": "12"},
        "vm": {"firmware": firmware, "disk_size": "4GiB"},
    })
    ctx = AnswerContext(
        build_user="azbuild",
        ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBB user",
        host_key_private="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"
                         "-----END OPENSSH PRIVATE KEY-----",
        host_key_public="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICCCC host",
        root_password_hash=ROOT_HASH,
        firmware=firmware,  # type: ignore[arg-type]
        disk_size=4 * 1024**3,
    )
    return render_answer_files(resolve("debian", "12"), template, ctx)["preseed.cfg"]


def test_accepts_the_preseed_azbuild_renders() -> None:
    answers = installer.parse_preseed(rendered_preseed())
    installer.check_answers(answers)
    assert answers["passwd/root-password-crypted"].value == ROOT_HASH
    assert answers["preseed/late_command"].value.startswith("in-target sh -c ")
    name, parts = installer.parse_recipe(answers["partman-auto/expert_recipe"].value)
    assert name == answers["partman-auto/choose_recipe"].value
    assert [(p.mountpoint, p.bootable, p.filesystem) for p in parts] == [("/", True, "ext4")]


def test_refuses_the_uefi_preseed_it_cannot_honour() -> None:
    answers = installer.parse_preseed(rendered_preseed("uefi"))
    with pytest.raises(installer.InstallFailed, match="gpt"):
        installer.check_answers(answers)
    with pytest.raises(installer.InstallFailed, match=r"efi|iflabel|reusemethod"):
        installer.parse_recipe(answers["partman-auto/expert_recipe"].value)


@pytest.mark.parametrize(("line", "message"), [
    ("d-i partman-auto/method string lvm", "partman-auto/method"),
    ("d-i netcfg/disable_autoconfig boolean true", "does not support"),
    ("d-i passwd/make-user boolean true", "passwd/make-user"),
    ("nonsense", "owner question type value"),
])
def test_other_instructions_fail_like_d_i(line: str, message: str) -> None:
    with pytest.raises(installer.InstallFailed, match=message) as failure:
        installer.check_answers(installer.parse_preseed(line + "\n"))
    assert failure.value.step == "Load preseed file"


def test_continuation_lines_and_comments() -> None:
    answers = installer.parse_preseed(
        "# comment\n\nd-i partman-auto/expert_recipe string r :: \\\n"
        "  100 50 200 ext4 $primary{ } method{ format } format{ } mountpoint{ / } .\n"
    )
    assert answers["partman-auto/expert_recipe"].line == 3
    name, parts = installer.parse_recipe(answers["partman-auto/expert_recipe"].value)
    assert name == "r" and parts[0].maximum == 200 * MB


@pytest.mark.parametrize(("recipe", "message"), [
    ("r :: 100 50 200 ext4 method{ format } mountpoint{ / } .", "primary"),
    ("r :: 100 50 200 xfs $primary{ } method{ format } mountpoint{ / } .", "ext4"),
    ("r :: 100 50 200 ext4 $primary{ } method{ swap } .", "method"),
    ("r :: 100 50 200 ext4 $primary{ } method{ format } mountpoint{ /srv } .",
     "No root file system"),
    ("r :: 100 50 200 ext4 $primary{ } $lvmok{ } method{ format } mountpoint{ / } .",
     "lvmok"),
    ("no header", "header"),
])
def test_recipe_limits(recipe: str, message: str) -> None:
    with pytest.raises(installer.InstallFailed, match=message):
        installer.parse_recipe(recipe)


def test_allocation_shares_the_disk_like_partman() -> None:
    _, parts = installer.parse_recipe(
        "r :: 500 1000 1000 ext4 $primary{ } method{ format } mountpoint{ /boot } . "
        "2000 10000 -1 ext4 $primary{ } method{ format } mountpoint{ / } ."
    )
    space = 8000 * MB
    installer.allocate(parts, space)
    boot, root = parts
    assert boot.size <= 1000 * MB and boot.size >= 500 * MB
    assert root.size >= 2000 * MB
    assert sum(p.size for p in parts) <= space
    assert space - sum(p.size for p in parts) < 2 * installer.ALIGN
    assert all(p.size % installer.ALIGN == 0 for p in parts)


def test_allocation_refuses_a_disk_too_small() -> None:
    _, parts = installer.parse_recipe(
        "r :: 4096 10000 -1 ext4 $primary{ } method{ format } mountpoint{ / } ."
    )
    with pytest.raises(installer.InstallFailed, match="needs 4096 MB"):
        installer.allocate(parts, 1000 * MB)


# --- the NIC's name, as netcfg writes it -------------------------------------------------

def fake_sysfs(root: Path, address: str = "0000:00:10.0", slot: str | None = "16",
               acpi_index: str | None = None) -> Path:
    """A sysfs laid out as the kernel does for a virtio NIC (eth0) on a PCI device, with
    the ACPI hotplug slot QEMU's i440fx machine exposes for it."""
    device = root / "devices/pci0000:00" / address
    (device / "virtio0/net/eth0").mkdir(parents=True)
    if acpi_index is not None:
        (device / "acpi_index").write_text(acpi_index + "\n")
    net = root / "class/net/eth0"
    net.mkdir(parents=True)
    (net / "device").symlink_to(device / "virtio0")
    if slot is not None:
        slot_dir = root / "bus/pci/slots" / slot
        slot_dir.mkdir(parents=True)
        (slot_dir / "address").write_text(address.rsplit(".", 1)[0] + "\n")
    return root


def debian_cmdline(template_args: list[str] | None = None) -> str:
    template = Template.model_validate({
        "name": "stand-in",
        "source": {"iso": "/srv/x.iso", "checksum": "sha256:" + "0" * 64},
        "distro": {"name": "debian", "version": "12"},
        "install": {"kernel_args": template_args or []},
    })
    return installer_cmdline(resolve("debian", "12"), template)


def test_azbuilds_installer_cmdline_gives_the_installed_systems_name(tmp_path: Path) -> None:
    """The demo's NIC sits in PCI slot 0x10: d-i would write ens16, which the installed
    system (net.ifnames=0, R07) never has. azbuild's command line makes it eth0."""
    sys_root = fake_sysfs(tmp_path)
    cmdline = debian_cmdline()
    assert installer.interface_name(cmdline, sys_root, "eth0") == "eth0"
    without = " ".join(a for a in cmdline.split() if a != "net.ifnames=0")
    assert installer.interface_name(without, sys_root, "eth0") == "ens16"
    assert installer.interfaces_file("eth0").endswith(
        "allow-hotplug eth0\niface eth0 inet dhcp\n"
    )


@pytest.mark.parametrize(("address", "slot", "acpi_index", "expected"), [
    ("0000:00:10.0", "16", None, "ens16"),  # ACPI hotplug slot (QEMU pc)
    ("0000:00:03.0", "3", None, "ens3"),
    ("0000:00:10.1", "16", None, "ens16f1"),
    ("0000:00:10.0", None, None, "enp0s16"),  # no slot: the path name (QEMU q35 root bus)
    ("0000:01:00.0", None, None, "enp1s0"),  # behind a PCIe root port
    ("0001:02:1f.0", None, None, "enP1p2s31"),
    ("0000:00:10.0", "16", "2", "eno2"),  # a firmware index wins over the slot
    ("0000:00:10.0", "16", "0", "ens16"),  # index 0 means none
])
def test_predictable_names(tmp_path: Path, address: str, slot: str | None,
                           acpi_index: str | None, expected: str) -> None:
    sys_root = fake_sysfs(tmp_path, address, slot, acpi_index)
    assert installer.predictable_name(sys_root, "eth0") == expected
    assert installer.interface_name("console=ttyS0 net.ifnames=0", sys_root, "eth0") == "eth0"
    assert installer.interface_name("console=ttyS0 net.ifnames=1", sys_root, "eth0") == expected


def test_a_nic_without_a_pci_device_keeps_its_kernel_name(tmp_path: Path) -> None:
    (tmp_path / "class/net/eth0").mkdir(parents=True)
    assert installer.predictable_name(tmp_path, "eth0") == "eth0"
    assert installer.predictable_name(tmp_path, "missing0") == "missing0"


def test_the_printed_iso_path_and_the_stable_one_both_validate_the_demo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/demo.toml says to use the path make-test-installer-iso.sh prints: its
    versioned name must be in the SHA256SUMS the demo checks against, as the stable name is.
    The ISO is a small one laid out as the test installer's (xorriso, as the script)."""
    import subprocess

    from builder.cli import main

    repo = Path(__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    (tree / "install.amd").mkdir(parents=True)
    (tree / ".disk").mkdir()
    for name in ("install.amd/vmlinuz", "install.amd/initrd.gz", ".disk/azbuild-test-installer"):
        (tree / name).write_text("stand-in\n")
    iso = tmp_path / "installer" / "azbuild-test-installer-0123456789abcdef.iso"
    iso.parent.mkdir()
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "AZBUILD_TEST_INSTALLER",
                    "-o", str(iso), str(tree)], check=True, capture_output=True)
    printed = subprocess.run(["bash", str(repo / "scripts" / "name-test-installer-iso.sh"),
                              str(iso)], check=True, capture_output=True, text=True).stdout
    assert printed.strip() == str(iso)
    stable = iso.parent / "azbuild-test-installer.iso"
    assert stable.resolve() == iso
    checksum = f"checksum=file:{iso.parent / 'SHA256SUMS'}"
    for path in (iso, stable):
        code = main(["validate", str(repo / "examples" / "demo.toml"), "--var", f"iso={path}",
                     "--var", checksum])
        assert code == 0, capsys.readouterr().err
