"""Azure preparation scripts: golden files per distro, shellcheck, and the shell helpers.

Regenerate the golden files after an intended change with

    AZBUILD_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_azure_prep.py

and review the diff under tests/golden/ before committing it.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.azure_prep import (
    SCRIPT_NAMES,
    _environment,
    host_keygen_unit,
    kernel_args,
    prep_context,
    prep_facts,
    prep_scripts,
)
from builder.errors import UsageError
from builder.models import AgentSettings, Azure
from distros import resolve

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
    assert 'update-initramfs -u -k "$kernel"' in debian
    assert "/etc/initramfs-tools/modules" in debian
    assert "update-initramfs -u -k all" not in debian  # only the initrds lacking a driver
    assert "grub-mkconfig -o /boot/grub/grub.cfg" in debian
    rhel8 = _render("rhel", "8", {}, "uefi")["azure-prep.sh"]
    assert 'dracut --force "$(initrd_of "$kernel")" "$kernel"' in rhel8
    assert "--regenerate-all" not in rhel8
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
        ({"agent": AgentSettings.model_construct(resource_disk_mount_point="/mnt/my disk")},
         "bios", "azbuild", "plain absolute path"),
    ],
)
def test_unsafe_settings_are_refused(settings: dict[str, Any], firmware: str, user: str,
                                     message: str) -> None:
    """The scripts' own guard: a template refuses these when it is loaded (the models check
    the same patterns, tests/test_bad_templates.py), so the settings bypass validation."""
    with pytest.raises(UsageError, match=message):
        prep_scripts(resolve("debian", "12"), Azure.model_construct(**settings),
                     firmware=firmware, build_user=user)


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


# ---- R07 per family: rootdelay, duplicates ------------------------------------------------


def test_rootdelay_per_initrd_tool() -> None:
    """Kept where dracut bounds the wait (RHEL family, SUSE); removed where initramfs-tools'
    init sleeps it on every boot (Debian, Ubuntu), whatever the template adds."""
    for distro, version in (("rhel", "9"), ("oracle", "8"), ("sles", "15")):
        add, remove = kernel_args(prep_facts(resolve(distro, version)), Azure())
        assert "rootdelay=300" in add and not any(a.startswith("rootdelay") for a in remove)
    for distro, version in (("debian", "12"), ("ubuntu", "24.04")):
        add, remove = kernel_args(prep_facts(resolve(distro, version)), Azure(
            kernel_args_add=["console=ttyS0", "rootdelay=300", "console=ttyS0"]))
        assert add == ["console=ttyS0"]
        assert remove[-1] == "rootdelay=*"
        scripts = _render(distro, version, {}, "bios")
        header = "ARGS_ADD='console=ttyS0 earlyprintk=ttyS0 net.ifnames=0'"
        assert header in scripts["azure-prep.sh"]
        assert "every boot waits %s s" in scripts["azure-check.sh"]


@pytest.fixture(scope="module")
def debian_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The helper functions of the Debian scripts with Debian's own argument lists."""
    scripts = _render("debian", "12", {}, "uefi")
    prep = scripts["azure-prep.sh"]
    helpers = prep[: prep.index('[ "$(id -u)" = 0 ] || die "run me as root"')]
    path = tmp_path_factory.mktemp("debian-lib") / "lib.sh"
    path.write_text(helpers)
    return path


def test_edit_args_removes_any_rootdelay_on_debian(debian_lib: Path) -> None:
    out = _bash(debian_lib, 'edit_args "quiet rootdelay=300 console=ttyS0 rootdelay=30" 1').stdout
    assert out.split() == ["console=ttyS0", "earlyprintk=ttyS0", "net.ifnames=0"]
    assert _bash(debian_lib, "is_removed rootdelay=300").returncode == 0
    assert _bash(debian_lib, "is_removed rootdelay").returncode == 1
    # a file named like the pattern's match does not change anything (no globbing)
    assert _bash(debian_lib, "cd /tmp && is_removed console=ttyS0").returncode == 1


def test_edit_args_deduplicates_across_the_two_keys(debian_lib: Path) -> None:
    linux = "console=ttyS0 earlyprintk=ttyS0 net.ifnames=0"
    out = _bash(debian_lib, f'edit_args "console=tty1 console=ttyS0 console=tty1" 1 "{linux}"')
    assert out.stdout.split() == ["console=tty1"]
    out = _bash(debian_lib, 'edit_args "splash" 1 "net.ifnames=0"').stdout
    assert out.split() == ["splash", "console=ttyS0", "earlyprintk=ttyS0"]


def _section(script: str, start: str, end: str) -> str:
    """One section of a rendered script, to run on its own (never the whole script)."""
    assert script.count(start) == 1, start
    return script[script.index(start): script.index(end, script.index(start))]


def test_grub_defaults_edited_once_and_deduplicated(debian_lib: Path, tmp_path: Path) -> None:
    """The R07 section of Debian's azure-prep.sh on a /etc/default/grub written by d-i with
    the arguments in both keys and a rootdelay: each argument ends up once, no rootdelay."""
    prep = _render("debian", "12", {}, "bios")["azure-prep.sh"]
    section = _section(prep, "DEFAULTS_CHANGED=0", "if [ \"$REGENERATE\" = 1 ]")
    root = tmp_path / "etc/default"
    root.mkdir(parents=True)
    grub = root / "grub"
    grub.write_text('GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet console=ttyS0 '
                    'earlyprintk=ttyS0 rootdelay=300 net.ifnames=0"\n'
                    'GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0"\n')
    section = section.replace("/etc/default/grub", str(grub))
    code = f"grub_files() {{ printf '%s\\n' {grub}; }}\n" + section.replace(
        "grub_files() {", "grub_files_unused() {")
    proc = _bash(debian_lib, code + "\necho REGENERATE=$REGENERATE")
    assert proc.returncode == 0, proc.stderr
    text = grub.read_text()
    assert 'GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0"' in text
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="earlyprintk=ttyS0"' in text
    again = _bash(debian_lib, code)
    assert again.returncode == 0 and "R07" not in again.stdout  # idempotent


# ---- R14: the removable-path boot loader ---------------------------------------------------


def test_r14_only_on_uefi() -> None:
    bios = _render("debian", "12", {}, "bios")
    assert "R14" not in bios["azure-prep.sh"].split("# ---- R07")[1]
    assert "result R14 skip \"BIOS image (Gen1)" in bios["azure-check.sh"]
    uefi = _render("rhel", "9", {}, "uefi")
    assert "# ---- R14: the removable-path boot loader" in uefi["azure-prep.sh"]
    assert "grub2-install --target=x86_64-efi" in uefi["azure-prep.sh"]
    assert "\ncheck_R14\n" in uefi["azure-check.sh"]
    skipped = _render("debian", "12", {"skip": {"R14": "Gen1 only"}}, "uefi")
    assert "result R14 skip 'Gen1 only'" in skipped["azure-check.sh"]
    assert "say 'R14 skipped: Gen1 only'" in skipped["azure-prep.sh"]


def _r14(distro: str, version: str, esp: Path) -> subprocess.CompletedProcess[str]:
    prep = _render(distro, version, {}, "uefi")["azure-prep.sh"]
    helpers = prep[: prep.index('[ "$(id -u)" = 0 ] || die "run me as root"')]
    section = _section(prep, "# ---- R14: the removable-path boot loader EFI/BOOT",
                       'if [ "$CHANGES" = 0 ]')
    assert "ensure_packages " not in section and "R05" not in section  # R14 alone runs here
    script = esp.parent / "r14.sh"
    script.write_text(helpers + f"ESP={esp}\n" + section + 'echo "CHANGES=$CHANGES"\n')
    return subprocess.run(["bash", str(script)], capture_output=True, text=True)


def _esp(tmp_path: Path, vendor: str, files: dict[str, bytes]) -> Path:
    esp = tmp_path / "esp"
    (esp / "EFI" / vendor).mkdir(parents=True)
    for name, data in files.items():
        (esp / "EFI" / vendor / name).write_bytes(data)
    return esp


def test_r14_copies_the_vendor_loader_with_shim_first(tmp_path: Path) -> None:
    esp = _esp(tmp_path, "ubuntu", {
        "shimx64.efi": b"MZ UEFI SHIM $Version: 15.7 $", "grubx64.efi": b"MZ grub",
        "mmx64.efi": b"MZ mok",
        "grub.cfg": b"search.fs_uuid x root\nconfigfile /boot/grub/grub.cfg\n",
        "BOOTX64.CSV": b"shimx64.efi,ubuntu,,\n"})
    proc = _r14("ubuntu", "24.04", esp)
    assert proc.returncode == 0, proc.stderr
    boot = esp / "EFI" / "BOOT"
    assert (boot / "BOOTX64.EFI").read_bytes().startswith(b"MZ UEFI SHIM")
    assert (boot / "grubx64.efi").is_file() and (boot / "mmx64.efi").is_file()
    assert not (boot / "BOOTX64.CSV").exists()
    assert (boot / "grub.cfg").read_text().endswith("configfile /EFI/ubuntu/grub.cfg\n")
    assert "R14 copied" in proc.stdout
    again = _r14("ubuntu", "24.04", esp)
    assert again.returncode == 0 and "CHANGES=0" in again.stdout, again.stdout
    assert "not changed" in again.stdout


def test_r14_leaves_a_working_fallback_alone(tmp_path: Path) -> None:
    """RHEL's shim-x64 ships EFI/BOOT/BOOTX64.EFI and fbx64.efi, which boots through
    EFI/redhat/BOOTX64.CSV: nothing to do."""
    esp = _esp(tmp_path, "redhat", {"shimx64.efi": b"MZ UEFI SHIM", "grubx64.efi": b"MZ",
                                     "BOOTX64.CSV": b"shimx64.efi,Red Hat,,\n"})
    (esp / "EFI" / "BOOT").mkdir()
    (esp / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"MZ UEFI SHIM")
    (esp / "EFI" / "BOOT" / "fbx64.efi").write_bytes(b"MZ fallback")
    proc = _r14("rhel", "9", esp)
    assert proc.returncode == 0, proc.stderr
    assert "CHANGES=0" in proc.stdout and "shim fallback with" in proc.stdout


def test_r14_fails_clearly_without_an_esp(tmp_path: Path) -> None:
    proc = _r14("debian", "12", tmp_path / "nothing")
    assert proc.returncode == 1
    assert "R14" in proc.stderr and "is the EFI system partition mounted" in proc.stderr


# ---- issue 15: NetworkManager, cloud-init networking, sshd, packages ------------------------


def _cloud_cfg(script: str) -> Any:
    body = script.split("<<'CLOUDCFG'; then\n", 1)[1].split("\nCLOUDCFG\n", 1)[0]
    return yaml.safe_load(body)


@pytest.mark.parametrize(("distro", "version", "applies"), [
    ("rhel", "9", False), ("oracle", "8", False), ("sles", "15", False),
    ("opensuse-leap", "15", False), ("ubuntu", "24.04", True), ("debian", "12", True)])
def test_cloud_init_network_per_family(distro: str, version: str, applies: bool) -> None:
    prep = _render(distro, version, {"provisioning": "cloud-init"}, "bios")["azure-prep.sh"]
    cfg = _cloud_cfg(prep)
    assert cfg["datasource"]["Azure"]["apply_network_config"] is applies
    assert cfg["datasource_list"] == ["Azure"]
    if not applies:  # the NIC stays with NetworkManager or wicked: eth0 is configured
        assert ("eth0.nmconnection" in prep or "ifcfg-eth0" in prep)
        assert "cloud-init writes eth0's configuration" not in prep


@pytest.mark.parametrize(("distro", "version", "unmanaged"), [
    ("rhel", "8", True), ("rhel", "9", True), ("rocky", "9", True), ("oracle", "7", True),
    ("oracle", "9", True), ("rhel", "7", False), ("centos", "7", False), ("ubuntu", "24.04", False),
    ("sles", "15", False)])
def test_accelerated_networking_vfs_unmanaged(distro: str, version: str, unmanaged: bool) -> None:
    prep = _render(distro, version, {}, "bios")["azure-prep.sh"]
    conf = "/etc/NetworkManager/conf.d/99-azure-unmanaged-devices.conf"
    assert (conf in prep) is unmanaged
    if unmanaged:
        body = prep.split("<<'NMCONF'; then\n", 1)[1].split("\nNMCONF\n", 1)[0]
        parser = configparser.ConfigParser(comment_prefixes=("#",))
        parser.read_string(body)
        assert parser["keyfile"]["unmanaged-devices"] == "driver:mlx4_core,driver:mlx5_core"
        rule = prep.split("<<'UDEV'; then\n", 1)[1].split("\nUDEV\n", 1)[0].splitlines()[-1]
        assert rule == ('SUBSYSTEM=="net", DRIVERS=="hv_pci", ACTION!="remove", '
                        'ENV{NM_UNMANAGED}="1"')


def test_rhel_family_sshd_keepalive(tmp_path: Path) -> None:
    prep = _render("rhel", "8", {}, "bios")["azure-prep.sh"]
    assert "ClientAliveInterval 180" not in _render("debian", "12", {}, "bios")["azure-prep.sh"]
    program = prep.split("awk '\n  !done && /^[ \\t]*ClientAliveInterval", 1)[1]
    program = "\n  !done && /^[ \\t]*ClientAliveInterval" + program.split("\n' ", 1)[0] + "\n"
    config = tmp_path / "sshd_config"
    config.write_text("PermitRootLogin no\n#ClientAliveInterval 0\nMatch User anoncvs\n"
                      "  X11Forwarding no\n")
    out = subprocess.run(["awk", program, str(config)], capture_output=True, text=True).stdout
    assert out.splitlines() == ["PermitRootLogin no", "#ClientAliveInterval 0",
                                "ClientAliveInterval 180", "Match User anoncvs",
                                "  X11Forwarding no"]
    config.write_text("ClientAliveInterval 30\n")
    out = subprocess.run(["awk", program, str(config)], capture_output=True, text=True).stdout
    assert out == "ClientAliveInterval 180\n"


def test_packages_in_one_transaction() -> None:
    prep = _render("rhel", "9", {"provisioning": "cloud-init"}, "bios")["azure-prep.sh"]
    calls = [ln for ln in prep.splitlines() if ln.startswith("ensure_packages ")]
    assert calls == ["ensure_packages R08:WALinuxAgent R09:openssh-server R10:cloud-init "
                     "Hyper-V:hyperv-daemons"]
    assert prep.count("dnf -y install") == 1
    debian = _render("debian", "12", {"skip": {"R08": "own agent"}}, "bios")["azure-prep.sh"]
    assert [ln for ln in debian.splitlines() if ln.startswith("ensure_packages ")] == [
        "ensure_packages R09:openssh-server"]
    assert "hyperv-daemons" not in _render("centos", "6", {}, "bios")["azure-prep.sh"]


def _check_fn(distro: str, version: str, call: str, tmp_path: Path
              ) -> subprocess.CompletedProcess[str]:
    """The helpers and check functions of azure-check.sh (not its main part), then `call`."""
    check = _render(distro, version, {}, "uefi")["azure-check.sh"]
    helpers = check[: check.index('result R01 skip "checked on the finished image')]
    script = tmp_path / "check.sh"
    script.write_text(helpers + call + "\n")
    return subprocess.run(["bash", str(script)], capture_output=True, text=True)


def test_in_guest_r14(tmp_path: Path) -> None:
    esp = _esp(tmp_path, "debian", {"shimx64.efi": b"MZ UEFI SHIM", "grubx64.efi": b"MZ",
                                    "grub.cfg": b"configfile /boot/grub/grub.cfg\n"})
    out = _check_fn("debian", "12", f"ESP={esp}; check_R14", tmp_path).stdout
    assert out.startswith("R14 fail no EFI/BOOT/BOOTX64.EFI on the ESP"), out
    assert "empty UEFI variables" in out
    assert _r14("debian", "12", esp).returncode == 0
    out = _check_fn("debian", "12", f"ESP={esp}; check_R14", tmp_path).stdout
    assert out.startswith(f"R14 pass {esp}/EFI/BOOT/BOOTX64.EFI, configuration: "), out


def test_in_guest_r07_says_what_rootdelay_costs(tmp_path: Path) -> None:
    problems = "unwanted:quiet unwanted:rootdelay=300"
    out = _check_fn("ubuntu", "24.04", f'explain "{problems}"', tmp_path).stdout
    assert out.strip() == (f"{problems} (initramfs-tools: its init sleeps rootdelay "
                           "unconditionally, so every boot waits 300 s)")
    out = _check_fn("rhel", "9", 'arg_problems "console=ttyS0 earlyprintk=ttyS0 '
                    'net.ifnames=0" 1', tmp_path).stdout
    assert out.strip() == "missing:rootdelay=300"  # dracut families keep it


# ---- R15: SSH host keys made before sshd starts --------------------------------------------

UNIT_PATH = "/etc/systemd/system/azbuild-ssh-host-keygen.service"


@pytest.mark.parametrize(("distro", "version", "keygen"), [
    ("debian", "11", None), ("debian", "12", None), ("ubuntu", "20.04", None),
    ("ubuntu", "24.04", None),
    ("rhel", "9", "/usr/lib/systemd/system/sshd-keygen@.service"),
    ("rocky", "8", "/usr/lib/systemd/system/sshd-keygen@.service"),
    ("centos", "7", "/usr/lib/systemd/system/sshd-keygen.service"),
    ("centos", "6", "/etc/rc.d/init.d/sshd"),
    ("sles", "12", "/usr/sbin/sshd-gen-keys-start"),
    ("opensuse-leap", "15", "/usr/sbin/sshd-gen-keys-start")])
def test_r15_unit_only_where_sshd_makes_no_keys(distro: str, version: str,
                                                keygen: str | None) -> None:
    assert prep_facts(resolve(distro, version)).ssh_host_keygen == keygen
    scripts = _render(distro, version, {}, "bios")
    prep, check = scripts["azure-prep.sh"], scripts["azure-check.sh"]
    assert "\ncheck_R15\n" in check
    if keygen:
        assert host_keygen_unit(resolve(distro, version)) is None
        assert "R15" not in prep.split("# ---- R09")[1] and UNIT_PATH not in check
        assert f"if [ -e {keygen} ]; then" in check
    else:
        assert f"if ensure_file {UNIT_PATH} 644 <<'UNIT'; then" in prep
        assert "ensure_service R15 azbuild-ssh-host-keygen.service" in prep
    # The unit outlives generalisation: no path deprovision.sh removes matches it.
    words = scripts["deprovision.sh"].replace("\\\n", " ").split()
    assert not any(fnmatch.fnmatchcase(UNIT_PATH, w) for w in words if w.startswith("/"))


def test_r15_unit_written_is_the_one_systemd_reads() -> None:
    for distro, version in (("debian", "12"), ("ubuntu", "24.04")):
        unit = host_keygen_unit(resolve(distro, version))
        assert unit is not None
        prep = _render(distro, version, {"provisioning": "cloud-init"}, "uefi")["azure-prep.sh"]
        assert prep.split("<<'UNIT'; then\n", 1)[1].split("UNIT\n", 1)[0] == unit
        parser = configparser.ConfigParser(comment_prefixes=("#",), interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep case
        parser.read_string(unit)
        assert dict(parser["Unit"]) == {
            "Description": "Make missing SSH host keys before the SSH server starts",
            "ConditionPathExistsGlob": "!/etc/ssh/ssh_host_*_key",
            "Before": "ssh.service"}
        assert dict(parser["Service"]) == {"Type": "oneshot",
                                           "ExecStart": "/usr/bin/ssh-keygen -A"}
        assert dict(parser["Install"]) == {"WantedBy": "ssh.service"}


def _r15_check(tmp_path: Path, unit: str | None, enabled: bool) -> str:
    """check_R15 of Debian 12's azure-check.sh on a scratch unit file, as in a chroot."""
    check = _render("debian", "12", {}, "bios")["azure-check.sh"]
    helpers = check[: check.index('result R01 skip "checked on the finished image')]
    path = tmp_path / "azbuild-ssh-host-keygen.service"
    if unit is not None:
        path.write_text(unit)
    script = tmp_path / "check.sh"
    script.write_text(helpers.replace(UNIT_PATH, str(path))
                      + f"service_enabled() {{ {'true' if enabled else 'false'}; }}\n"
                      + "in_chroot() { true; }\n"  # the unit file's own ordering
                      + "check_R15\n")
    return subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_in_guest_r15(tmp_path: Path) -> None:
    unit = host_keygen_unit(resolve("debian", "12"))
    assert unit is not None
    assert _r15_check(tmp_path, unit, enabled=True) == (
        "R15 pass azbuild-ssh-host-keygen.service enabled and ordered before ssh.service: "
        "/usr/bin/ssh-keygen -A when there is no host key")
    assert _r15_check(tmp_path, unit, enabled=False).startswith(
        "R15 fail azbuild-ssh-host-keygen.service not enabled: nothing makes host keys")
    unordered = unit.replace("Before=ssh.service", "Before=multi-user.target")
    assert _r15_check(tmp_path, unordered, enabled=True) == (
        "R15 fail azbuild-ssh-host-keygen.service not ordered before ssh.service "
        "(Before=multi-user.target)")
    (tmp_path / "azbuild-ssh-host-keygen.service").unlink()
    assert _r15_check(tmp_path, None, enabled=True).startswith(
        f"R15 fail no {tmp_path}/azbuild-ssh-host-keygen.service: deprovisioning removes")
    # A family whose sshd makes its keys: the distro's file must be there.
    out = _check_fn("sles", "15", "check_R15", tmp_path).stdout
    expected = ("R15 pass" if Path("/usr/sbin/sshd-gen-keys-start").exists()
                else "R15 fail no /usr/sbin/sshd-gen-keys-start: nothing makes")
    assert out.startswith(expected), out


OL9_REPOS = """\
[ol9_baseos_latest]
name=Oracle Linux 9 BaseOS Latest ($basearch)
enabled=1

[ol9_addons]
name=Oracle Linux 9 Addons ($basearch)
gpgcheck=1
enabled=0

[ol9_codeready_builder]
name=Oracle Linux 9 CodeReady Builder ($basearch)
enabled=0
"""


def _enable_repository(repos: Path, name: str) -> subprocess.CompletedProcess[str]:
    prep = _render("oracle", "9", {}, "bios")["azure-prep.sh"]
    helpers = prep[: prep.index('[ "$(id -u)" = 0 ] || die "run me as root"')]
    script = repos.parent / "repo.sh"
    script.write_text(helpers.replace("/etc/yum.repos.d", str(repos))
                      + f"enable_repository R08 {name}\n" + 'echo "CHANGES=$CHANGES"\n')
    return subprocess.run(["bash", str(script)], capture_output=True, text=True)


def test_oracle_prep_enables_the_addons_repository_where_the_agent_is(tmp_path: Path) -> None:
    """R08 on Oracle Linux: WALinuxAgent is in ol<N>_addons, which an installed system
    lists but leaves disabled. Only that section's `enabled` changes, once."""
    prep = _render("oracle", "9", {}, "bios")["azure-prep.sh"]
    assert "enable_repository R08 ol9_addons" in prep
    assert prep.index("enable_repository R08") < prep.index("ensure_packages R08:WALinuxAgent")
    assert "enable_repository" not in _render("almalinux", "9", {}, "bios")["azure-prep.sh"]
    repos = tmp_path / "yum.repos.d"
    repos.mkdir()
    (repos / "oracle-linux-ol9.repo").write_text(OL9_REPOS)
    first = _enable_repository(repos, "ol9_addons")
    assert first.returncode == 0, first.stderr
    assert "CHANGES=1" in first.stdout and "R08 enabled the repository ol9_addons" in first.stdout
    text = (repos / "oracle-linux-ol9.repo").read_text()
    assert text == OL9_REPOS.replace("gpgcheck=1\nenabled=0", "gpgcheck=1\nenabled=1")
    again = _enable_repository(repos, "ol9_addons")
    assert "CHANGES=0" in again.stdout
    missing = _enable_repository(repos, "ol8_addons")
    assert missing.returncode == 0 and "no repository ol8_addons" in missing.stderr
