"""The pure parsing and judging functions of builder/offline_check/, on real-world file text."""

from __future__ import annotations

import shutil
import struct
import uuid
from pathlib import Path

import pytest

from builder.offline_check.disklabel import (
    Partition,
    parse_ebr,
    parse_gpt_entries,
    parse_gpt_header,
    parse_mbr,
    superblock_state,
)
from builder.offline_check.judge import (
    CloudInitState,
    judge_cmdline,
    judge_fallback_loader,
    judge_waagent_conf,
    kernel_version_status,
    password_locked,
    required_args,
    rootdelay_cost,
    sudoers_findings,
    sysv_enabled,
    unit_enabled,
    users_with_passwords,
)
from builder.offline_check.parsers import (
    bls_kernel_line,
    builtin_modules,
    cloud_datasources,
    fstab_swaps,
    grub_defaults,
    grub_kernel_lines,
    initramfs_sleep_line,
    initrd_version,
    parse_dpkg_status,
    parse_fstab,
    parse_grubenv,
    parse_key_values,
    parse_shell_assignments,
    shadow_password_field,
    version_tuple,
)
from builder.run import run

# ---------------------------------------------------------------- fstab (R04)

FSTAB = """\
# /etc/fstab: static file system information.
UUID=3f1b6a52-7d0e-4c3a-9a57-2b8e1f0c6d11 /               ext4    errors=remount-ro 0       1
# swap was on /dev/sda5 during installation
#UUID=0a5d  none            swap    sw              0       0
/dev/mapper/rhel-swap   none                    swap    defaults        0 0
/swapfile none swap sw 0 0   # trailing comment
tmpfs /tmp tmpfs
"""


def test_fstab_entries_and_swaps() -> None:
    entries = parse_fstab(FSTAB)
    assert [e.mountpoint for e in entries] == ["/", "none", "none", "/tmp"]
    assert entries[-1].options == "defaults"
    swaps = fstab_swaps(FSTAB)
    assert swaps == [
        "/etc/fstab:5: /dev/mapper/rhel-swap   none                    swap    defaults        0 0",
        "/etc/fstab:6: /swapfile none swap sw 0 0   # trailing comment",
    ]
    assert fstab_swaps("UUID=x / ext4 defaults 0 1\n") == []


# ---------------------------------------------------------------- grub (R07, R06)

DEFAULT_GRUB = """\
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=ttyS0 earlyprintk=ttyS0"  # serial
GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX rootdelay=300"
"""


def test_grub_defaults_with_grub_d_overrides() -> None:
    # Ubuntu cloud images set the serial console in /etc/default/grub.d/50-cloudimg-settings.cfg
    cloudimg = ('GRUB_CMDLINE_LINUX_DEFAULT="console=tty1 console=ttyS0"\n'
                'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX numa=off"\n')
    merged = grub_defaults([("/etc/default/grub", DEFAULT_GRUB),
                            ("/etc/default/grub.d/50-cloudimg-settings.cfg", cloudimg)])
    assert merged["GRUB_CMDLINE_LINUX_DEFAULT"] == (
        "console=tty1 console=ttyS0", "/etc/default/grub.d/50-cloudimg-settings.cfg:1")
    assert merged["GRUB_CMDLINE_LINUX"] == (
        "console=ttyS0 earlyprintk=ttyS0 rootdelay=300 numa=off",
        "/etc/default/grub.d/50-cloudimg-settings.cfg:2")
    assert merged["GRUB_TIMEOUT"] == ("5", "/etc/default/grub:2")


def test_shell_assignments_unquote_and_expand() -> None:
    values = parse_shell_assignments(DEFAULT_GRUB)
    assert values["GRUB_CMDLINE_LINUX_DEFAULT"] == ("quiet", 4)
    assert values["GRUB_CMDLINE_LINUX"] == (
        "console=ttyS0 earlyprintk=ttyS0 rootdelay=300", 6)
    assert values["GRUB_TIMEOUT"] == ("5", 2)


GRUB_CFG = """\
set default="0"
if [ x"${feature_menuentry_id}" = xy ]; then
  menuentry_id_option="--id"
fi
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-simple-x' {
\tload_video
\tlinux\t/boot/vmlinuz-6.1.0-28-cloud-amd64 root=UUID=x ro console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0 rootdelay=300 quiet
\tinitrd\t/boot/initrd.img-6.1.0-28-cloud-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-x' {
\tmenuentry 'Debian GNU/Linux, with Linux 6.1.0-28-cloud-amd64 (recovery mode)' --class debian {
\t\tlinux\t/boot/vmlinuz-6.1.0-28-cloud-amd64 root=UUID=x ro single
\t}
}
menuentry "CentOS Linux (3.10.0-1160.el7.x86_64) 7 (Core)" {
\tlinux16 /vmlinuz-3.10.0-1160.el7.x86_64 root=/dev/sda1 ro crashkernel=auto rhgb
\tlinuxefi /vmlinuz-3.10.0 root=/dev/sda1 $kernelopts
}
"""  # noqa: E501


def test_grub2_kernel_lines_titles_and_recovery() -> None:
    lines = grub_kernel_lines(GRUB_CFG, "/boot/grub/grub.cfg", {"kernelopts": "a=1 b"})
    assert [(kl.line, kl.kernel) for kl in lines] == [
        (7, "/boot/vmlinuz-6.1.0-28-cloud-amd64"),
        (12, "/boot/vmlinuz-6.1.0-28-cloud-amd64"),
        (16, "/vmlinuz-3.10.0-1160.el7.x86_64"),
        (17, "/vmlinuz-3.10.0"),
    ]
    assert lines[0].title == "Debian GNU/Linux" and not lines[0].recovery
    assert lines[1].recovery
    assert lines[2].title == "CentOS Linux (3.10.0-1160.el7.x86_64) 7 (Core)"
    assert lines[3].args == ("root=/dev/sda1", "a=1", "b")
    assert lines[0].evidence() == "/boot/grub/grub.cfg:7"


def test_legacy_grub_conf() -> None:
    conf = """default=0
title CentOS (2.6.32-754.el6.x86_64)
        root (hd0,0)
        kernel /vmlinuz-2.6.32-754.el6.x86_64 ro root=/dev/sda1 rhgb quiet numa=off
        initrd /initramfs-2.6.32-754.el6.x86_64.img
"""
    (kl,) = grub_kernel_lines(conf, "/boot/grub/grub.conf")
    assert kl.title == "CentOS (2.6.32-754.el6.x86_64)"
    assert kl.line == 4 and "numa=off" in kl.args


def test_bls_entry_with_grubenv_kernelopts() -> None:
    env = parse_grubenv("# GRUB Environment Block\nkernelopts=root=/dev/sda2 ro console=ttyS0\n"
                        + "#" * 100)
    assert env["kernelopts"] == "root=/dev/sda2 ro console=ttyS0"
    entry = ("title Rocky Linux (4.18.0-513.el8.x86_64) 8.9\nversion 4.18.0\n"
             "linux /vmlinuz-4.18.0-513.el8.x86_64\noptions $kernelopts rootdelay=300\n")
    kl = bls_kernel_line(entry, "/boot/loader/entries/x.conf", env)
    assert kl is not None and kl.line == 4
    assert kl.args == ("root=/dev/sda2", "ro", "console=ttyS0", "rootdelay=300")
    assert bls_kernel_line("title nothing\n", "/x.conf", env) is None


@pytest.mark.parametrize(
    ("args", "missing", "forbidden", "crash"),
    [
        ("console=ttyS0 earlyprintk=ttyS0 rootdelay=300", [], [], False),
        ("console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0 rootdelay=600", [], [], False),
        ("console=ttyS01 earlyprintk=ttyS0 rootdelay=30 quiet rhgb crashkernel=auto",
         ["console=ttyS0", "rootdelay=300"], ["quiet", "rhgb"], True),
        ("quietly=1 splash", ["console=ttyS0", "earlyprintk=ttyS0", "rootdelay=300"], [], False),
    ],
)
def test_judge_cmdline(args: str, missing: list[str], forbidden: list[str], crash: bool) -> None:
    assert judge_cmdline(args.split()) == (missing, forbidden, crash)


@pytest.mark.parametrize(
    ("args", "missing", "forbidden"),
    [
        ("console=ttyS0 earlyprintk=ttyS0", [], []),
        ("console=ttyS0 earlyprintk=ttyS0 rootdelay=300", [], ["rootdelay=300"]),
        ("console=ttyS0,115200n8 rootdelay=30 quiet", ["earlyprintk=ttyS0"],
         ["rootdelay=30", "quiet"]),
    ],
)
def test_judge_cmdline_initramfs_tools(args: str, missing: list[str], forbidden: list[str]
                                       ) -> None:
    """Debian and Ubuntu: initramfs-tools sleeps rootdelay, so none is wanted."""
    assert judge_cmdline(args.split(), "initramfs-tools") == (missing, forbidden, False)
    assert "rootdelay=300" not in required_args("initramfs-tools")
    assert "rootdelay=300" in required_args("dracut") and "rootdelay=300" in required_args("")


INITRAMFS_INIT = Path("/usr/share/initramfs-tools/init")


def test_rootdelay_cost_names_the_sleep() -> None:
    text = (INITRAMFS_INIT.read_text() if INITRAMFS_INIT.exists() else
            'starttime=$((starttime + 1))\nif [ "$ROOTDELAY" ]; then\n\tsleep "$ROOTDELAY"\nfi\n')
    evidence = initramfs_sleep_line(text)
    assert evidence.startswith("/usr/share/initramfs-tools/init:")
    assert evidence.endswith('sleep "$ROOTDELAY"')
    cost = rootdelay_cost(["quiet", "rootdelay=300"], evidence)
    assert "every boot on Azure waits 300 s" in cost and evidence in cost
    assert rootdelay_cost(["quiet"], evidence) == ""


# ---------------------------------------------------------------- UEFI fallback loader (R14)

ESP = "ESP /dev/sda1 (at /boot/efi)"
SHIM, GRUB = 950_000, 2_500_000


@pytest.mark.parametrize(
    ("files", "shim", "prefix_in", "status", "fragment"),
    [
        # Debian with d-i's force-efi-extra-removable: shim, grub and the stub in EFI/debian
        ({"EFI/debian/shimx64.efi": SHIM, "EFI/debian/grubx64.efi": GRUB,
          "EFI/debian/grub.cfg": 120, "EFI/BOOT/BOOTX64.EFI": SHIM,
          "EFI/BOOT/grubx64.efi": GRUB}, True, None, "pass",
         "EFI/debian/grub.cfg (the prefix of a signed GRUB)"),
        # RHEL's shim-x64: fallback with the vendor's CSV
        ({"EFI/redhat/shimx64.efi": SHIM, "EFI/redhat/BOOTX64.CSV": 90,
          "EFI/BOOT/BOOTX64.EFI": SHIM, "EFI/BOOT/fbx64.efi": 80_000}, True, None, "pass",
         "shim's fallback EFI/BOOT/fbx64.efi with EFI/redhat/BOOTX64.CSV"),
        # grub-install --removable: prefix built in, names in FAT's upper case
        ({"EFI/BOOT/BOOTX64.EFI": GRUB}, False, "EFI/BOOT/BOOTX64.EFI", "pass",
         "/boot/grub built into EFI/BOOT/BOOTX64.EFI"),
        ({"EFI/boot/bootx64.efi": GRUB, "EFI/boot/grub.cfg": 60}, False, None, "pass",
         "reaches EFI/boot/grub.cfg"),
        # the corpus's broken image: the distro's loader only, no removable path
        ({"EFI/debian/shimx64.efi": SHIM, "EFI/debian/grubx64.efi": GRUB,
          "EFI/debian/grub.cfg": 120}, False, None, "fail",
         "no EFI/BOOT/BOOTX64.EFI (EFI/debian only)"),
        ({"EFI/BOOT/BOOTX64.EFI": 0}, False, None, "fail", "no EFI/BOOT/BOOTX64.EFI"),
        ({"EFI/BOOT/BOOTX64.EFI": SHIM, "EFI/debian/grub.cfg": 1}, True, None, "fail",
         "neither its second stage"),
        ({"EFI/BOOT/BOOTX64.EFI": GRUB}, False, None, "fail", "finds no grub.cfg"),
    ],
)
def test_judge_fallback_loader(files: dict[str, int], shim: bool, prefix_in: str | None,
                               status: str, fragment: str) -> None:
    got_status, evidence = judge_fallback_loader(ESP, files, shim, prefix_in)
    assert (got_status, fragment in evidence) == (status, True), evidence
    if status == "fail" and "no EFI/BOOT" in fragment:
        assert "empty UEFI variables" in evidence and "--removable" in evidence


def test_kernel_versions() -> None:
    assert version_tuple("6.1.0-28-cloud-amd64") == (6, 1, 0)
    assert version_tuple("2.6.32-754.el6.x86_64") == (2, 6, 32)
    assert kernel_version_status("6.1.0-28-cloud-amd64", False) == ("pass", "6.1.0-28-cloud-amd64")
    assert kernel_version_status("3.2.0-4-amd64", False)[0] == "warn"
    assert kernel_version_status("2.6.37", False)[0] == "fail"
    assert kernel_version_status("2.6.32-754.el6.x86_64", True)[0] == "warn"
    assert kernel_version_status("2.6.38", False)[0] == "warn"
    assert initrd_version("initrd.img-6.1.0-28-cloud-amd64") == "6.1.0-28-cloud-amd64"
    assert initrd_version("initramfs-4.18.0-513.el8.x86_64.img") == "4.18.0-513.el8.x86_64"
    assert initrd_version("initrd-5.14.21-150500.55.39-default") == "5.14.21-150500.55.39-default"
    assert initrd_version("vmlinuz-6.1") is None


def test_modules_builtin() -> None:
    text = ("kernel/drivers/hv/hv_vmbus.ko\nkernel/drivers/scsi/hv_storvsc.ko\n"
            "kernel/fs/ext4/ext4.ko\n")
    assert builtin_modules(text) == {"hv_vmbus", "hv_storvsc", "ext4"}


# ---------------------------------------------------------------- waagent.conf (R10)

DEBIAN_WAAGENT = """\
# Microsoft Azure Linux Agent Configuration
Provisioning.Agent=cloud-init
Provisioning.RegenerateSshHostKeyPair=n
ResourceDisk.Format=n
ResourceDisk.Filesystem=ext4
ResourceDisk.MountPoint=/mnt/resource
ResourceDisk.EnableSwap=n
ResourceDisk.SwapSizeMB=0
"""
CI_ON = CloudInitState(True, True, "enabled (/etc/systemd/system/cloud-init.target.wants/x)")
CI_OFF = CloudInitState(True, False, "disabled by /etc/cloud/cloud-init.disabled")
CI_NONE = CloudInitState(False, False, "not installed")


def _conf(**keys: str) -> dict[str, tuple[str, int]]:
    text = DEBIAN_WAAGENT
    for k, v in keys.items():
        key = k.replace("__", ".")
        lines = [ln for ln in text.splitlines() if not ln.startswith(key + "=")]
        text = "\n".join([*lines, f"{key}={v}"]) if v != "-" else "\n".join(lines)
    return parse_key_values(text)


def test_parse_key_values() -> None:
    conf = parse_key_values(DEBIAN_WAAGENT + "  Logs.Verbose = n  # comment\n")
    assert conf["Provisioning.Agent"] == ("cloud-init", 2)
    assert conf["Logs.Verbose"] == ("n", 9)
    assert "# Microsoft Azure Linux Agent Configuration" not in conf


def test_cloud_init_mode() -> None:
    status, evidence = judge_waagent_conf(_conf(), CI_ON)
    assert status == "pass"
    assert evidence.startswith("cloud-init mode")
    assert "Provisioning.Agent=cloud-init (/etc/waagent.conf:2)" in evidence
    status, evidence = judge_waagent_conf(_conf(ResourceDisk__Format="y"), CI_ON)
    assert status == "fail"
    assert "needs ResourceDisk.Format=n" in evidence
    assert "ResourceDisk.Format=y (/etc/waagent.conf:8)" in evidence
    status, evidence = judge_waagent_conf(_conf(), CI_OFF)
    assert status == "fail" and "not enabled" in evidence
    no_azure = CloudInitState(True, True, "enabled", ["NoCloud", "None"], "/etc/cloud/x.cfg: ...")
    assert judge_waagent_conf(_conf(), no_azure)[0] == "fail"
    no_keys = CloudInitState(True, True, "enabled", None, "", regenerates_host_keys=False)
    assert "ssh_genkeytypes" in judge_waagent_conf(_conf(), no_keys)[1]


def test_waagent_mode() -> None:
    good = _conf(Provisioning__Agent="waagent", ResourceDisk__Format="y",
                 ResourceDisk__EnableSwap="y", ResourceDisk__SwapSizeMB="2048",
                 Provisioning__RegenerateSshHostKeyPair="y")
    assert judge_waagent_conf(good, CI_OFF)[0] == "pass"
    assert judge_waagent_conf(good, CI_NONE)[0] == "pass"
    status, evidence = judge_waagent_conf(good, CI_ON)
    assert status == "fail" and "cloud-init is enabled" in evidence
    no_size = dict(good, **{"ResourceDisk.SwapSizeMB": ("0", 9)})
    assert "positive ResourceDisk.SwapSizeMB" in judge_waagent_conf(no_size, CI_OFF)[1]
    keep_keys = dict(good, **{"Provisioning.RegenerateSshHostKeyPair": ("n", 3)})
    assert "RegenerateSshHostKeyPair=y" in judge_waagent_conf(keep_keys, CI_OFF)[1]
    no_format = dict(good, **{"ResourceDisk.Format": ("n", 4)})
    assert "waagent mode needs ResourceDisk.Format=y" in judge_waagent_conf(no_format, CI_OFF)[1]
    # Disabled by cloud-init.disabled, but its local unit still enabled: waagent checks the
    # unit and fails provisioning (seen by the simulation on the cloud image's build).
    local = CloudInitState(True, False, "disabled by /etc/cloud/cloud-init.disabled",
                           local_unit_link="/etc/systemd/system/cloud-init.target.wants/"
                           "cloud-init-local.service -> /lib/systemd/system/"
                           "cloud-init-local.service")
    status, evidence = judge_waagent_conf(good, local)
    assert status == "fail" and "waagent refuses to provision" in evidence


def test_auto_and_legacy_modes() -> None:
    auto = _conf(Provisioning__Agent="auto")
    status, evidence = judge_waagent_conf(auto, CI_ON)
    assert status == "pass" and "auto resolves to cloud-init" in evidence
    # auto without cloud-init means waagent provisions: Format=n is then wrong
    assert judge_waagent_conf(auto, CI_NONE)[0] == "fail"
    legacy = parse_key_values("Provisioning.Enabled=y\nResourceDisk.Format=y\n"
                              "ResourceDisk.EnableSwap=n\nResourceDisk.Filesystem=ext4\n"
                              "ResourceDisk.MountPoint=/mnt/resource\n"
                              "Provisioning.RegenerateSshHostKeyPair=y\n")
    assert judge_waagent_conf(legacy, CI_NONE) [0] == "pass"
    disabled = _conf(Provisioning__Agent="disabled")
    assert "provisioning is disabled" in judge_waagent_conf(disabled, CI_ON)[1]
    unset = _conf(Provisioning__Agent="-")
    assert "not set explicitly" in judge_waagent_conf(unset, CI_ON)[1]


def test_cloud_datasources() -> None:
    assert cloud_datasources("datasource_list: [ NoCloud, ConfigDrive, Azure, None ]\n") == [
        "NoCloud", "ConfigDrive", "Azure", "None"]
    assert cloud_datasources("datasource_list:\n  - Azure\n  - 'None'\nother: 1\n") == [
        "Azure", "None"]
    assert cloud_datasources("datasource_list: [\n NoCloud,\n Azure ]\n") == ["NoCloud", "Azure"]
    assert cloud_datasources("# datasource_list: [ Azure ]\ndatasource:\n  Azure: {}\n") is None


# ---------------------------------------------------------------- sudoers (R11)

SLES_SUDOERS = """\
Defaults always_set_home
Defaults secure_path="/usr/sbin:/usr/bin:/sbin:/bin"
Defaults env_reset
Defaults targetpw   # ask for the password of the target user i.e. root
ALL   ALL=(ALL) ALL   # WARNING! Only use this together with 'Defaults targetpw'!
root ALL=(ALL:ALL) ALL
#includedir /etc/sudoers.d
"""


def test_sudoers_sles_defaults_are_found() -> None:
    assert sudoers_findings(SLES_SUDOERS, "/etc/sudoers") == [
        "/etc/sudoers:4: Defaults targetpw   # ask for the password of the target user i.e. root",
        "/etc/sudoers:5: ALL   ALL=(ALL) ALL   # WARNING! Only use this together with "
        "'Defaults targetpw'!",
    ]


def test_sudoers_clean_and_variants() -> None:
    debian = ("Defaults\tenv_reset\nDefaults\tuse_pty\nroot\tALL=(ALL:ALL) ALL\n"
              "%sudo\tALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n")
    assert sudoers_findings(debian, "/etc/sudoers") == []
    assert sudoers_findings("# Defaults targetpw\n#ALL ALL=(ALL) ALL\n", "/x") == []
    assert sudoers_findings("Defaults !targetpw\n", "/x") == []
    assert sudoers_findings("Defaults:%wheel env_keep+=X, targetpw\n", "/x") == [
        "/x:1: Defaults:%wheel env_keep+=X, targetpw"]
    assert sudoers_findings("ALL ALL=(ALL:ALL) NOPASSWD: ALL\n", "/x") == [
        "/x:1: ALL ALL=(ALL:ALL) NOPASSWD: ALL"]
    assert sudoers_findings("Defaults env_reset,\\\n    targetpw\n", "/x") == [
        "/x:1: Defaults env_reset, targetpw"]
    assert sudoers_findings("build ALL=(ALL) NOPASSWD: ALL\n", "/x") == []


# ---------------------------------------------------------------- shadow (R12)

SHADOW = """\
root:*:19700:0:99999:7:::
daemon:*:19700:0:99999:7:::
azureuser:$6$abc$def:19700:0:99999:7:::
locked:!$6$abc$def:19700:0:99999:7:::
"""
PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
azureuser:x:1000:1000::/home/azureuser:/bin/bash
locked:x:1001:1001::/home/locked:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""


def test_shadow() -> None:
    assert shadow_password_field(SHADOW, "root") == "*"
    assert shadow_password_field(SHADOW, "nobody") is None
    assert password_locked("*") and password_locked("!") and password_locked("!!")
    assert password_locked("!$6$x$y")
    assert not password_locked("$6$x$y") and not password_locked("")
    assert users_with_passwords(PASSWD, SHADOW) == ["azureuser"]


# ---------------------------------------------------------------- service enablement (R08, R09)

LINKS = {
    "/etc/systemd/system/sshd.service": "/lib/systemd/system/ssh.service",
    "/etc/systemd/system/multi-user.target.wants/ssh.service": "/lib/systemd/system/ssh.service",
    "/etc/systemd/system/multi-user.target.wants/walinuxagent.service":
        "/lib/systemd/system/walinuxagent.service",
    "/etc/systemd/system/cloud-init.service": "/dev/null",
    "/usr/lib/systemd/system/multi-user.target.wants/getty.target": "../getty.target",
}


def test_unit_enabled() -> None:
    assert unit_enabled(["ssh.service", "sshd.service"], LINKS) == (
        True, "/etc/systemd/system/multi-user.target.wants/ssh.service -> "
        "/lib/systemd/system/ssh.service")
    # enabled through an alias: asking for sshd.service finds the ssh.service wants link
    assert unit_enabled(["sshd.service"], LINKS)[0] is True
    assert unit_enabled(["walinuxagent.service", "waagent.service"], LINKS)[0] is True
    assert unit_enabled(["cloud-init.service"], LINKS) == (
        False, "/etc/systemd/system/cloud-init.service -> /dev/null (masked)")
    assert unit_enabled(["waagent.service"], {})[0] is None
    # a relative link made by hand (no preset) counts as well
    manual = {"/etc/systemd/system/multi-user.target.wants/waagent.service":
              "../waagent.service"}
    assert unit_enabled(["waagent.service"], manual)[0] is True
    # the alias link alone does not enable anything
    alias_only = {"/etc/systemd/system/sshd.service": "/lib/systemd/system/ssh.service"}
    assert unit_enabled(["ssh.service", "sshd.service"], alias_only)[0] is None


def test_sysv_enabled() -> None:
    rc = {"/etc/rc3.d": ["K01waagent", "S55sshd", "README"], "/etc/rc2.d": ["S01ssh"]}
    assert sysv_enabled(["sshd", "ssh"], rc) == "/etc/rc2.d/S01ssh"
    assert sysv_enabled(["waagent"], rc) is None


def test_dpkg_status() -> None:
    status = """\
Package: waagent
Status: deinstall ok config-files
Version: 2.7.3-1

Package: openssh-server
Status: install ok installed
Priority: optional
Description: secure shell (SSH) server
 Package: not-a-package
Version: 1:9.2p1-2+deb12u3

Package: cloud-init
Status: install ok installed
Version: 22.4.2-1
"""
    assert parse_dpkg_status(status) == {
        "openssh-server": "1:9.2p1-2+deb12u3", "cloud-init": "22.4.2-1"}


# ---------------------------------------------------------------- superblock (R13)


def _superblock(state: int, compat: int = 0x4, incompat: int = 0x2C2) -> bytes:
    sb = bytearray(1024)
    struct.pack_into("<H", sb, 0x38, 0xEF53)
    struct.pack_into("<H", sb, 0x3A, state)
    struct.pack_into("<II", sb, 0x5C, compat, incompat)
    return bytes(sb)


def test_superblock_state() -> None:
    assert superblock_state(_superblock(1)) == (True, "clean (s_state=0x0001, journal clean)")
    assert superblock_state(_superblock(1, compat=0)) == (
        True, "clean (s_state=0x0001, no journal)")
    assert superblock_state(_superblock(0)) == (False, "not clean (s_state=0x0000)")
    assert superblock_state(_superblock(1, incompat=0x2C6)) == (
        False, "needs_recovery (journal not replayed)")
    assert superblock_state(_superblock(3))[1] == "has errors (s_state=0x0003)"
    assert superblock_state(bytes(1024)) == (False, "no ext2/3/4 superblock")


# ---------------------------------------------------------------- partition tables (R03, R04)


def _mbr(entries: list[tuple[int, int, int]]) -> bytearray:
    sector = bytearray(512)
    for i, (ptype, lba, count) in enumerate(entries):
        struct.pack_into("<4xB3xII", sector, 446 + 16 * i, ptype, lba, count)
    sector[510:512] = b"\x55\xaa"
    return sector


def test_mbr_with_swap_in_a_logical_partition() -> None:
    # what the Debian installer's "all files in one partition" recipe writes
    table, parts = parse_mbr(bytes(_mbr([(0x83, 2048, 1000), (0x05, 4094, 2000)])))
    assert table == "msdos"
    assert [(p.number, p.type, p.start) for p in parts] == [
        (1, "0x83", 2048 * 512), (2, "0x05", 4094 * 512)]
    assert parts[1].extended and not parts[0].extended
    ebr = _mbr([(0x82, 2, 1998)])
    logical, nxt = parse_ebr(bytes(ebr), 4094, 4094, 5)
    assert logical == Partition(5, "0x82", 4096 * 512, 1998 * 512)
    assert nxt is None
    chained = _mbr([(0x83, 2, 100), (0x05, 200, 100)])
    logical, nxt = parse_ebr(bytes(chained), 4094, 4094, 5)
    assert logical is not None and logical.start == 4096 * 512 and nxt == 4294


def test_gpt_and_no_table() -> None:
    protective = _mbr([(0xEE, 1, 0xFFFFFFFF)])
    assert parse_mbr(bytes(protective)) == ("gpt", [])
    assert parse_mbr(bytes(512)) == ("none", [])
    header = bytearray(512)
    header[:8] = b"EFI PART"
    struct.pack_into("<QII", header, 72, 2, 128, 128)
    assert parse_gpt_header(bytes(header)) == (2, 128, 128)
    assert parse_gpt_header(bytes(512)) is None
    entries = bytearray(128 * 128)
    swap = uuid.UUID("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F")
    entries[128 : 128 + 16] = swap.bytes_le
    struct.pack_into("<QQ", entries, 128 + 32, 4096, 8191)
    assert parse_gpt_entries(bytes(entries), 128, 128) == [
        Partition(2, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", 4096 * 512, 4096 * 512)]


def test_real_sfdisk_tables(tmp_path: Path) -> None:
    """Tables written by sfdisk itself, read back by the parser."""
    if shutil.which("sfdisk") is None:
        pytest.skip("sfdisk is not installed")
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    run(["sfdisk", "-q", disk], input=b"label: dos\nstart=2048, size=20480, type=83\n"
        b"type=5\nsize=10240, type=82\n")
    data = disk.read_bytes()
    table, parts = parse_mbr(data[:512])
    assert table == "msdos" and [p.type for p in parts] == ["0x83", "0x05"]
    ext = parts[1]
    logical, _ = parse_ebr(data[ext.start : ext.start + 512], ext.start // 512,
                           ext.start // 512, 5)
    assert logical is not None and logical.type == "0x82" and logical.size == 10240 * 512
    run(["sfdisk", "-q", disk], input=b"label: gpt\nsize=20480, type=linux\n"
        b"size=10240, type=swap\n")
    data = disk.read_bytes()
    assert parse_mbr(data[:512]) == ("gpt", [])
    header = parse_gpt_header(data[512:1024])
    assert header is not None
    lba, count, size = header
    gparts = parse_gpt_entries(data[lba * 512 : lba * 512 + count * size], count, size)
    assert [p.type for p in gparts] == [
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"]
