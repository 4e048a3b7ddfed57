"""R15 offline: systemd units parsed (builder/offline_check/units.py) and the judgement
whether anything makes SSH host keys before sshd starts (judge_host_keys), on the unit
files the distros ship: Debian 12's openssh-server 1:9.2p1-2+deb12u10 and cloud-init
22.4.2-1+deb12u4 packages, RHEL's openssh-server 7 and 8/9 units, SUSE's sshd.service,
and the unit azbuild's preparation writes (rendered from the real template)."""

from __future__ import annotations

import pytest

from builder.azure_prep import host_keygen_unit
from builder.offline_check.judge import HOST_KEYGEN_RE, CloudInitState, judge_host_keys
from builder.offline_check.units import UnitSet, parse_unit, units_running
from builder.report.check_report import Status
from distros import resolve

LIB = "/lib/systemd/system"
USR = "/usr/lib/systemd/system"
ETC = "/etc/systemd/system"
CLOUD_INIT_NETWORK = ("cloud-init-network.service", "cloud-init.service")

DEBIAN_SSH_SERVICE = """\
[Unit]
Description=OpenBSD Secure Shell server
Documentation=man:sshd(8) man:sshd_config(5)
After=network.target auditd.service
ConditionPathExists=!/etc/ssh/sshd_not_to_be_run

[Service]
EnvironmentFile=-/etc/default/ssh
ExecStartPre=/usr/sbin/sshd -t
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS
ExecReload=/usr/sbin/sshd -t
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RestartPreventExitStatus=255
Type=notify
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755

[Install]
WantedBy=multi-user.target
Alias=sshd.service
"""
DEBIAN_SSH_SOCKET = """\
[Unit]
Description=OpenBSD Secure Shell server socket
Before=sockets.target
ConditionPathExists=!/etc/ssh/sshd_not_to_be_run

[Socket]
ListenStream=22
Accept=no

[Install]
WantedBy=sockets.target
"""
DEBIAN_CLOUD_INIT_SERVICE = """\
[Unit]
Description=Initial cloud-init job (metadata service crawler)
DefaultDependencies=no
Wants=cloud-init-local.service
Wants=sshd-keygen.service
Wants=sshd.service
After=cloud-init-local.service
After=systemd-networkd-wait-online.service
After=networking.service
Before=network-online.target
Before=chronyd.service
Before=sshd-keygen.service
Before=sshd.service
Before=sysinit.target
Before=shutdown.target
Conflicts=shutdown.target
Before=systemd-user-sessions.service

[Service]
Type=oneshot
ExecStart=/usr/bin/cloud-init init
RemainAfterExit=yes
TimeoutSec=0

# Output needs to appear in instance console output
StandardOutput=journal+console

[Install]
WantedBy=cloud-init.target
"""
RHEL9_SSHD_SERVICE = """\
[Unit]
Description=OpenSSH server daemon
Documentation=man:sshd(8) man:sshd_config(5)
After=network.target sshd-keygen.target
Wants=sshd-keygen.target

[Service]
Type=notify
EnvironmentFile=-/etc/sysconfig/sshd
ExecStart=/usr/sbin/sshd -D $OPTIONS
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RestartSec=42s

[Install]
WantedBy=multi-user.target
"""
RHEL9_KEYGEN_TARGET = """\
[Unit]
Wants=sshd-keygen@rsa.service
Wants=sshd-keygen@ecdsa.service
Wants=sshd-keygen@ed25519.service
PartOf=sshd.service
"""
RHEL9_KEYGEN_TEMPLATE = """\
[Unit]
Description=OpenSSH %i Server Key Generation
ConditionFileNotEmpty=|!/etc/ssh/ssh_host_%i_key

[Service]
Type=oneshot
EnvironmentFile=-/etc/sysconfig/sshd
ExecStart=/usr/libexec/openssh/sshd-keygen %i

[Install]
WantedBy=sshd-keygen.target
"""
RHEL7_SSHD_SERVICE = """\
[Unit]
Description=OpenSSH server daemon
Documentation=man:sshd(8) man:sshd_config(5)
After=network.target sshd-keygen.service
Wants=sshd-keygen.service

[Service]
Type=notify
EnvironmentFile=/etc/sysconfig/sshd
ExecStart=/usr/sbin/sshd -D $OPTIONS
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RestartSec=42s

[Install]
WantedBy=multi-user.target
"""
RHEL7_KEYGEN_SERVICE = """\
[Unit]
Description=OpenSSH Server Key Generation
ConditionFileNotEmpty=|!/etc/ssh/ssh_host_rsa_key
ConditionFileNotEmpty=|!/etc/ssh/ssh_host_ecdsa_key
ConditionFileNotEmpty=|!/etc/ssh/ssh_host_ed25519_key
PartOf=sshd.service sshd.socket

[Service]
ExecStart=/usr/sbin/sshd-keygen
Type=oneshot
RemainAfterExit=yes
"""
SUSE_SSHD_SERVICE = """\
[Unit]
Description=OpenSSH Daemon
After=network.target

[Service]
Type=notify
EnvironmentFile=-/etc/sysconfig/ssh
ExecStartPre=/usr/sbin/sshd-gen-keys-start
ExecStartPre=/usr/sbin/sshd -t $SSHD_OPTS
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=always
TasksMax=infinity

[Install]
WantedBy=multi-user.target
"""
AZBUILD_UNIT = host_keygen_unit(resolve("debian", "12")) or ""
DISABLED = CloudInitState(True, False, "disabled by /etc/cloud/cloud-init.disabled")
ENABLED = CloudInitState(True, True, "enabled (/etc/systemd/system/cloud-init.target.wants/"
                         "cloud-init.service -> /lib/systemd/system/cloud-init.service)")
ABSENT = CloudInitState(False, False, "not installed")


def _debian(files: dict[str, str] | None = None,
            links: dict[str, str] | None = None) -> UnitSet:
    """Debian 12 after `systemctl enable ssh` (and cloud-init installed), plus more."""
    return UnitSet(
        {f"{LIB}/ssh.service": DEBIAN_SSH_SERVICE, f"{LIB}/ssh.socket": DEBIAN_SSH_SOCKET,
         f"{LIB}/cloud-init.service": DEBIAN_CLOUD_INIT_SERVICE, **(files or {})},
        {f"{ETC}/sshd.service": f"{LIB}/ssh.service",
         f"{ETC}/multi-user.target.wants/ssh.service": f"{LIB}/ssh.service",
         f"{ETC}/cloud-init.target.wants/cloud-init.service": f"{LIB}/cloud-init.service",
         **(links or {})})


def _judge(units: UnitSet, ssh_unit: str | None = "ssh.service",
           cloud_init: CloudInitState = DISABLED, keys: tuple[str, ...] = (),
           sysv: tuple[str, str] | None = None) -> tuple[Status, str]:
    return judge_host_keys(keys, units, ssh_unit, sysv, cloud_init, CLOUD_INIT_NETWORK)


def test_parse_unit_lists_continuations_and_resets() -> None:
    parsed = parse_unit("# comment\n[Unit]\nAfter=a.service \\\n  b.service\n; other\n"
                        "After=c.target\n[Service]\nExecStart=\nExecStart=/bin/true x\n")
    assert parsed["Unit"]["After"] == ["a.service", "b.service", "c.target"]
    assert parsed["Service"]["ExecStart"] == ["/bin/true x"]  # the empty line reset it
    assert parse_unit(DEBIAN_SSH_SERVICE)["Install"]["Alias"] == ["sshd.service"]


def test_keygen_commands_recognised() -> None:
    for line in ("/usr/bin/ssh-keygen -A", "-/usr/bin/ssh-keygen -A -f /sysroot",
                 "/bin/sh -c 'test -e /etc/ssh/ssh_host_rsa_key || ssh-keygen -A'",
                 "/usr/libexec/openssh/sshd-keygen rsa", "/usr/sbin/sshd-gen-keys-start",
                 "/usr/sbin/sshd-keygen"):
        assert HOST_KEYGEN_RE.search(line), line
    for line in ("/usr/sbin/sshd -t", "/usr/bin/ssh-keygen -l -f /etc/ssh/x.pub",
                 "/usr/bin/cloud-init init", "/usr/bin/my-ssh-keygen-wrapper"):
        assert not HOST_KEYGEN_RE.search(line), line


def test_debian_waagent_mode_without_a_generator_fails() -> None:
    """Today's Debian defect: generalised, cloud-init disabled, nothing else."""
    status, evidence = _judge(_debian())
    assert status == "fail"
    assert evidence.startswith("no host keys in /etc/ssh and nothing makes them before "
                               "ssh.service starts (cloud-init disabled by "
                               "/etc/cloud/cloud-init.disabled)")
    assert "'no hostkeys available'" in evidence and "ssh-keygen -A" in evidence
    status, evidence = _judge(_debian(), cloud_init=ABSENT)
    assert status == "fail" and "(no unit runs ssh-keygen -A, sshd-keygen" in evidence


def test_azbuild_unit_enabled_passes() -> None:
    unit = f"{ETC}/azbuild-ssh-host-keygen.service"
    link = f"{ETC}/ssh.service.wants/azbuild-ssh-host-keygen.service"
    status, evidence = _judge(_debian({unit: AZBUILD_UNIT}, {link: unit}))
    assert status == "pass", evidence
    assert evidence == (
        "no host keys in /etc/ssh; made before ssh.service starts by "
        f"azbuild-ssh-host-keygen.service ({unit}: ExecStart=/usr/bin/ssh-keygen -A; "
        "azbuild-ssh-host-keygen.service Before=ssh.service; started by "
        f"{link} -> {unit})")


def test_azbuild_unit_not_enabled_or_masked_fails() -> None:
    unit = f"{ETC}/azbuild-ssh-host-keygen.service"
    status, evidence = _judge(_debian({unit: AZBUILD_UNIT}))
    assert status == "fail"
    assert ("azbuild-ssh-host-keygen.service (/etc/systemd/system/azbuild-ssh-host-keygen."
            "service: ExecStart=/usr/bin/ssh-keygen -A) is neither enabled nor pulled in by "
            "ssh.service") in evidence
    vendor = f"{LIB}/azbuild-ssh-host-keygen.service"  # masked by a link in /etc
    masked = _debian({vendor: AZBUILD_UNIT}, {
        unit: "/dev/null", f"{ETC}/ssh.service.wants/azbuild-ssh-host-keygen.service": vendor})
    status, evidence = _judge(masked)
    assert status == "fail" and ("azbuild-ssh-host-keygen.service would make them but is masked "
                                 f"({unit} -> /dev/null)") in evidence
    unordered = AZBUILD_UNIT.replace("Before=ssh.service", "Before=multi-user.target")
    status, evidence = _judge(_debian({unit: unordered}, {
        f"{ETC}/multi-user.target.wants/azbuild-ssh-host-keygen.service": unit}))
    assert status == "fail" and "is not ordered before ssh.service" in evidence


def test_a_drop_in_of_ssh_service_counts() -> None:
    dropin = f"{ETC}/ssh.service.d/keys.conf"
    status, evidence = _judge(_debian({dropin: "[Service]\nExecStartPre=/usr/bin/ssh-keygen -A\n"}))
    assert status == "pass", evidence
    assert f"ssh.service itself ({dropin}: ExecStartPre=/usr/bin/ssh-keygen -A)" in evidence


def test_cloud_init_makes_the_keys_where_it_runs() -> None:
    status, evidence = _judge(_debian(), cloud_init=ENABLED)
    assert status == "pass", evidence
    assert evidence.endswith("by cloud-init's ssh module (" + ENABLED.evidence
                             + "; cloud-init.service Before=sshd.service)")
    elsewhere = CloudInitState(True, True, "enabled", ["NoCloud"],
                               "/etc/cloud/cloud.cfg.d/90.cfg: datasource_list: [NoCloud]")
    status, evidence = _judge(_debian(), cloud_init=elsewhere)
    assert status == "fail" and "cloud-init has no Azure datasource" in evidence
    no_keys = CloudInitState(True, True, "enabled", regenerates_host_keys=False)
    assert "ssh_genkeytypes: []" in _judge(_debian(), cloud_init=no_keys)[1]
    # Without the sshd.service alias (ssh not enabled), Before=sysinit.target still
    # orders cloud-init's network stage before ssh.service (default dependencies).
    bare = UnitSet({f"{LIB}/ssh.service": DEBIAN_SSH_SERVICE,
                    f"{LIB}/cloud-init.service": DEBIAN_CLOUD_INIT_SERVICE}, {})
    status, evidence = _judge(bare, cloud_init=ENABLED)
    assert status == "pass"
    assert "cloud-init.service Before=sysinit.target, which ssh.service follows" in evidence


def test_rhel_9_keygen_template_through_its_target() -> None:
    units = UnitSet(
        {f"{USR}/sshd.service": RHEL9_SSHD_SERVICE, f"{USR}/sshd-keygen.target":
         RHEL9_KEYGEN_TARGET, f"{USR}/sshd-keygen@.service": RHEL9_KEYGEN_TEMPLATE},
        {f"{ETC}/multi-user.target.wants/sshd.service": f"{USR}/sshd.service"})
    assert [(u.name, line) for u, line in units_running(units, HOST_KEYGEN_RE)] == [
        (f"sshd-keygen@{kind}.service", f"ExecStart=/usr/libexec/openssh/sshd-keygen {kind}")
        for kind in ("ecdsa", "ed25519", "rsa")]
    status, evidence = _judge(units, "sshd.service", ABSENT)
    assert status == "pass", evidence
    assert evidence == (
        "no host keys in /etc/ssh; made before sshd.service starts by sshd-keygen@ecdsa.service "
        "(/usr/lib/systemd/system/sshd-keygen@.service: ExecStart=/usr/libexec/openssh/"
        "sshd-keygen ecdsa; sshd.service After=sshd-keygen.target, sshd-keygen.target pulls "
        "sshd-keygen@ecdsa.service in (and waits for it); started by sshd.service "
        "Wants=sshd-keygen.target, sshd-keygen.target Wants=sshd-keygen@ecdsa.service); "
        "likewise sshd-keygen@ed25519.service, sshd-keygen@rsa.service")
    # Without the target's Wants= nothing starts the instances: not a key maker.
    unwanted = UnitSet({**units.files, f"{USR}/sshd-keygen.target": "[Unit]\n"}, units.links)
    status, evidence = _judge(unwanted, "sshd.service", ABSENT)
    assert status == "fail" and "no unit runs ssh-keygen -A" in evidence


def test_rhel_7_keygen_service_and_suse_exec_start_pre() -> None:
    rhel7 = UnitSet({f"{USR}/sshd.service": RHEL7_SSHD_SERVICE,
                     f"{USR}/sshd-keygen.service": RHEL7_KEYGEN_SERVICE}, {})
    status, evidence = _judge(rhel7, "sshd.service", ABSENT)
    assert status == "pass"
    assert ("sshd-keygen.service (/usr/lib/systemd/system/sshd-keygen.service: "
            "ExecStart=/usr/sbin/sshd-keygen; sshd.service After=sshd-keygen.service; "
            "started by sshd.service Wants=sshd-keygen.service)") in evidence
    suse = UnitSet({f"{USR}/sshd.service": SUSE_SSHD_SERVICE}, {})
    status, evidence = _judge(suse, "sshd.service", ABSENT)
    assert status == "pass"
    assert evidence.endswith("sshd.service itself (/usr/lib/systemd/system/sshd.service: "
                             "ExecStartPre=/usr/sbin/sshd-gen-keys-start)")


def test_host_keys_in_the_image_and_sysv_scripts() -> None:
    status, evidence = _judge(_debian(), keys=("/etc/ssh/ssh_host_ed25519_key",))
    assert status == "pass" and "(R12 judges whether they belong there)" in evidence
    rhel6 = ("/etc/rc.d/init.d/sshd",
             "KEYGEN=/usr/bin/ssh-keygen\ndo_rsa_keygen() {\n\t$KEYGEN -q -t rsa\n}\n")
    status, evidence = _judge(UnitSet({}, {}), None, ABSENT, sysv=rhel6)
    assert (status, evidence) == (
        "pass", "no host keys in /etc/ssh; /etc/rc.d/init.d/sshd makes them before it starts sshd")
    debian_init = ("/etc/init.d/ssh", "check_config() {\n\t/usr/sbin/sshd $SSHD_OPTS -t\n}\n")
    assert _judge(UnitSet({}, {}), None, ABSENT, sysv=debian_init)[0] == "fail"
    assert _judge(UnitSet({}, {}), None, ABSENT)[0] == "fail"


@pytest.mark.parametrize("distro", ["debian", "ubuntu"])
def test_the_unit_azbuild_writes_is_what_the_check_accepts(distro: str) -> None:
    """The prep's unit, enabled as `systemctl enable` does it ([Install] WantedBy)."""
    version = {"debian": "12", "ubuntu": "24.04"}[distro]
    text = host_keygen_unit(resolve(distro, version))
    assert text is not None
    wanted_by = parse_unit(text)["Install"]["WantedBy"]
    path = f"{ETC}/azbuild-ssh-host-keygen.service"
    units = _debian({path: text}, {f"{ETC}/{w}.wants/azbuild-ssh-host-keygen.service": path
                                   for w in wanted_by})
    assert _judge(units)[0] == "pass"
