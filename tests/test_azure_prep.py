"""Azure preparation scripts: golden files per distro, shellcheck, and the shell helpers.

Regenerate the golden files after an intended change with

    AZBUILD_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_azure_prep.py

and review the diff under tests/golden/ before committing it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from builder.errors import UsageError
from builder.models import AgentSettings, Azure
from distros import resolve
from distros.azure_prep import (
    SCRIPT_NAMES,
    _environment,
    prep_context,
    prep_facts,
    prep_scripts,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("AZBUILD_UPDATE_GOLDEN") == "1"
SKIPS = {"R10": "the image brings its own agent configuration", "R11": "sudo is not installed"}

# (directory, distro, version, settings for Azure, firmware)
CASES: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("rhel-7", "rhel", "7", {}, "bios"),
    ("rhel-8", "rhel", "8", {}, "bios"),
    ("rhel-8-uefi", "rhel", "8", {}, "uefi"),
    ("rhel-9", "rhel", "9", {}, "bios"),
    ("rhel-9-cloud-init", "rhel", "9", {"provisioning": "cloud-init"}, "uefi"),
    ("centos-6", "centos", "6", {}, "bios"),
    ("centos-7", "centos", "7", {}, "bios"),
    ("centos-7-uefi", "centos", "7", {}, "uefi"),
    ("centos-stream9", "centos", "stream9", {}, "bios"),
    ("rocky-9", "rocky", "9", {}, "bios"),
    ("almalinux-8-uefi", "almalinux", "8", {}, "uefi"),
    ("oracle-8", "oracle", "8", {}, "bios"),
    ("oracle-9", "oracle", "9", {}, "bios"),
    ("ubuntu-22.04", "ubuntu", "22.04", {}, "bios"),
    ("ubuntu-24.04", "ubuntu", "24.04", {}, "bios"),
    ("ubuntu-24.04-cloud-init", "ubuntu", "24.04", {"provisioning": "cloud-init"}, "uefi"),
    ("debian-12", "debian", "12", {}, "bios"),
    ("debian-12-uefi", "debian", "12", {}, "uefi"),
    ("debian-12-cloud-init", "debian", "12", {"provisioning": "cloud-init"}, "bios"),
    (
        "debian-12-custom",
        "debian",
        "12",
        {
            "kernel_args_add": ["console=ttyS0", "rootdelay=300"],
            "kernel_args_remove": ["quiet", "splash"],
            "agent": {"resource_disk_filesystem": "xfs", "resource_disk_mount_point": "/mnt/data",
                      "enable_swap": False, "swap_size": 4096 * 1024**2},
            "skip": SKIPS,
        },
        "bios",
    ),
    ("sles-15", "sles", "15", {}, "bios"),
    ("sles-15-cloud-init", "sles", "15", {"provisioning": "cloud-init"}, "uefi"),
    ("opensuse-leap-15", "opensuse-leap", "15", {}, "bios"),
]


def _render(distro: str, version: str, settings: dict[str, Any], firmware: str) -> dict[str, str]:
    return prep_scripts(resolve(distro, version), Azure(**settings), firmware=firmware,
                        build_user="azbuild")


@pytest.fixture(scope="module", params=CASES, ids=[case[0] for case in CASES])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             ) -> tuple[str, dict[str, str], Path]:
    name, distro, version, settings, firmware = request.param
    scripts = _render(distro, version, settings, firmware)
    out = tmp_path_factory.mktemp(name)
    for filename, text in scripts.items():
        (out / filename).write_text(text)
    return name, scripts, out


def test_golden(rendered: tuple[str, dict[str, str], Path]) -> None:
    name, scripts, _ = rendered
    folder = GOLDEN / name
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for filename, text in scripts.items():
            (folder / filename).write_text(text)
    assert sorted(scripts) == sorted(SCRIPT_NAMES)
    for filename, text in scripts.items():
        golden = folder / filename
        assert golden.exists(), f"{golden} missing; run with AZBUILD_UPDATE_GOLDEN=1"
        assert text == golden.read_text(), (
            f"{name}/{filename} differs from its golden file; if intended, regenerate with "
            "AZBUILD_UPDATE_GOLDEN=1 and review the diff"
        )


def test_golden_folders_all_have_cases() -> None:
    """A golden folder without a case would never be checked again."""
    names = {case[0] for case in CASES}
    assert {p.name for p in GOLDEN.iterdir() if p.is_dir()} <= names


def test_bash_syntax(rendered: tuple[str, dict[str, str], Path]) -> None:
    _, scripts, out = rendered
    for filename in scripts:
        proc = subprocess.run(["bash", "-n", str(out / filename)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck(rendered: tuple[str, dict[str, str], Path]) -> None:
    _, scripts, out = rendered
    proc = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", *(str(out / f) for f in scripts)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout


# ---- what each family and version gets -------------------------------------------------


def test_rhel_version_differences() -> None:
    six = prep_facts(resolve("centos", "6"))
    assert (six.bootloader, six.initrd_tool, six.service_manager) == (
        "grub-legacy", "mkinitrd", "sysv")
    assert six.grub_config_bios == "/boot/grub/grub.conf"
    assert six.remove_network_manager and six.lis_check
    seven = prep_facts(resolve("rhel", "7"))
    assert (seven.network, seven.package_manager, seven.grubby) == ("ifcfg", "yum", False)
    assert seven.agent_extra_packages == ("python-pyasn1",)
    eight = prep_facts(resolve("rocky", "8"))
    assert eight.grubby and eight.grub_config_uefi == "/boot/efi/EFI/rocky/grub.cfg"
    nine = prep_facts(resolve("almalinux", "9"))
    assert nine.network == "keyfile" and nine.grub_config_uefi == "/boot/grub2/grub.cfg"


def test_rhel6_script_uses_legacy_tools() -> None:
    prep = _render("centos", "6", {}, "bios")["azure-prep.sh"]
    assert "mkinitrd $PRELOAD -f" in prep and "--preload=$module" in prep
    assert "chkconfig \"$2\" on" in prep
    assert "kernel %s %s" in prep and "/boot/grub/grub.conf" in prep
    assert "rpm -e --nodeps NetworkManager" in prep
    assert "microsoft-hyper-v" in prep  # the LIS check for 6.0-6.3
    assert "grub2-mkconfig" not in prep and "dracut" not in prep


def test_initrd_and_bootloader_per_family() -> None:
    debian = _render("debian", "12", {}, "bios")["azure-prep.sh"]
    assert "update-initramfs -u -k all" in debian and "/etc/initramfs-tools/modules" in debian
    assert "grub-mkconfig -o /boot/grub/grub.cfg" in debian
    rhel8 = _render("rhel", "8", {}, "uefi")["azure-prep.sh"]
    assert "dracut --force --regenerate-all" in rhel8
    assert "grubby --update-kernel=ALL" in rhel8
    assert "grub2-mkconfig -o /boot/efi/EFI/redhat/grub.cfg" in rhel8
    sles = _render("sles", "15", {}, "uefi")["azure-prep.sh"]
    assert "grub2-mkconfig -o /boot/grub2/grub.cfg" in sles
    assert "zypper --non-interactive install" in sles
    assert "DHCLIENT_SET_HOSTNAME=\"no\"" in sles


def test_waagent_settings_come_from_the_template() -> None:
    azure = Azure(agent=AgentSettings(resource_disk_filesystem="xfs",
                                      resource_disk_mount_point="/mnt/data",
                                      enable_swap=False, swap_size=4096 * 1024**2))
    scripts = prep_scripts(resolve("debian", "12"), azure, firmware="bios", build_user="azbuild")
    for line in ("Provisioning.Agent=waagent", "ResourceDisk.Filesystem=xfs",
                 "ResourceDisk.MountPoint=/mnt/data", "ResourceDisk.EnableSwap=n",
                 "ResourceDisk.SwapSizeMB=4096", "Provisioning.RegenerateSshHostKeyPair=y"):
        assert f"set_key /etc/waagent.conf {line.split('=')[0]} {line}" in scripts["azure-prep.sh"]
    assert "cloud-init.disabled" in scripts["azure-prep.sh"]


def test_cloud_init_mode() -> None:
    scripts = _render("ubuntu", "24.04", {"provisioning": "cloud-init"}, "bios")
    prep = scripts["azure-prep.sh"]
    assert "Provisioning.Agent=cloud-init" in prep
    assert "ResourceDisk.Format=n" in prep and "ResourceDisk.EnableSwap=n" in prep
    assert "datasource_list: [ Azure ]" in prep and "ssh_deletekeys: true" in prep
    assert "ResourceDisk.SwapSizeMB" not in prep
    assert "remove_file /etc/cloud/cloud-init.disabled" in prep


def test_skipped_requirements_are_reported_not_fixed() -> None:
    scripts = _render("debian", "12", {"skip": SKIPS}, "bios")
    prep, check = scripts["azure-prep.sh"], scripts["azure-check.sh"]
    assert "say 'R10 skipped: the image brings its own agent configuration'" in prep
    assert "set_key /etc/waagent.conf" not in prep
    assert "fix_sudoers /etc/sudoers" not in prep
    assert "result R10 skip 'the image brings its own agent configuration'" in check
    assert "result R11 skip 'sudo is not installed'" in check
    assert "\ncheck_R10\n" not in check and "\ncheck_R07\n" in check


def test_deprovision_removes_the_build_user_and_powers_off() -> None:
    script = _render("rhel", "9", {}, "bios")["deprovision.sh"]
    assert "waagent -force -deprovision" in script
    assert "BUILD_USER=azbuild" in script and "userdel -r -f \"$BUILD_USER\"" in script
    assert "export HISTSIZE=0" in script
    assert "/etc/ssh/sshd_config.d/90-azbuild.conf" in script
    assert "${AZBUILD_POWEROFF:-poweroff}" in script
    assert "trap finish EXIT" in script


@pytest.mark.parametrize(
    ("settings", "firmware", "user", "message"),
    [
        ({}, "efi", "azbuild", "firmware must be"),
        ({}, "bios", "root", "not a removable login name"),
        ({"kernel_args_add": ['console="ttyS0"']}, "bios", "azbuild", "cannot quote safely"),
        ({"hyperv_modules": ["hv vmbus"]}, "bios", "azbuild", "not a kernel module name"),
        ({"agent": {"resource_disk_mount_point": "/mnt/my disk"}}, "bios", "azbuild",
         "plain absolute path"),
    ],
)
def test_unsafe_settings_are_refused(settings: dict[str, Any], firmware: str, user: str,
                                     message: str) -> None:
    with pytest.raises(UsageError, match=message):
        prep_scripts(resolve("debian", "12"), Azure(**settings), firmware=firmware,
                     build_user=user)


def test_cloud_init_refused_on_rhel6() -> None:
    with pytest.raises(UsageError, match="cloud-init provisioning is not supported"):
        _render("rhel", "6", {"provisioning": "cloud-init"}, "bios")


# ---- the shell helpers, run for real in bash ---------------------------------------------


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The helper functions of the Debian scripts, with the default argument lists."""
    context = prep_context(resolve("debian", "12"), Azure(), firmware="bios",
                           build_user="azbuild")
    header = "ARGS_ADD='console=ttyS0 earlyprintk=ttyS0 rootdelay=300 net.ifnames=0'\n" \
             "ARGS_REMOVE='rhgb quiet crashkernel=auto'\nPROG=test\n"
    body = _environment().get_template("_lib.sh.j2").render(context)
    path = tmp_path_factory.mktemp("lib") / "lib.sh"
    path.write_text(header + body)
    return path


def _bash(lib: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; . {lib}; {code}"],
                          capture_output=True, text=True)


def test_edit_args_removes_and_adds_once(lib: Path) -> None:
    out = _bash(lib, 'edit_args "quiet splash console=ttyS0 crashkernel=auto" 1').stdout
    assert out.split() == ["splash", "console=ttyS0", "earlyprintk=ttyS0", "rootdelay=300",
                           "net.ifnames=0"]
    again = _bash(lib, f'edit_args "{out.strip()}" 1').stdout
    assert again == out  # idempotent
    assert _bash(lib, 'edit_args "rhgb quiet ro" 0').stdout.strip() == "ro"


def test_assigned_value_reads_the_last_active_line(lib: Path, tmp_path: Path) -> None:
    grub = tmp_path / "grub"
    grub.write_text('# GRUB_CMDLINE_LINUX="commented"\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
                    "GRUB_CMDLINE_LINUX='a b'\nGRUB_CMDLINE_LINUX=\"c d\"\n")
    assert _bash(lib, f"assigned_value {grub} GRUB_CMDLINE_LINUX").stdout == "c d\n"
    assert _bash(lib, f"assigned_value {grub} GRUB_CMDLINE_LINUX_DEFAULT").stdout == "quiet\n"
    assert _bash(lib, f"assigns {grub} GRUB_TIMEOUT").returncode == 1


def test_config_problems_skip_recovery_entries(lib: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "grub.cfg"
    good = "console=ttyS0 earlyprintk=ttyS0 rootdelay=300 net.ifnames=0"
    cfg.write_text(f"\tlinux\t/vmlinuz-6.1 root=UUID=x ro {good}\n"
                   "\tlinux\t/vmlinuz-6.1 root=UUID=x ro single\n")
    assert _bash(lib, f"config_problems {cfg}").stdout.strip() == ""
    cfg.write_text("\tlinux\t/vmlinuz-6.1 root=UUID=x ro quiet console=ttyS0\n")
    problems = _bash(lib, f"config_problems {cfg}").stdout.split()
    assert "unwanted:quiet" in problems and "missing:rootdelay=300" in problems
    assert _bash(lib, f"kernel_lines {cfg}").stdout.strip() == "1"


def test_version_lt(lib: Path) -> None:
    assert _bash(lib, "version_lt 2.6.32 3.8").returncode == 0
    assert _bash(lib, "version_lt 3.10.0 3.8").returncode == 1
    assert _bash(lib, "version_lt 2.6.37 2.6.37").returncode == 1
