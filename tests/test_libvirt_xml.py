"""Domain XML is a pure function of DomainSpec: compared exactly, and checked
against libvirt's own schema when virt-xml-validate is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from builder.vm.libvirt import (
    SESSION_URI,
    SYSTEM_URI,
    Disk,
    DomainMetadata,
    DomainSpec,
    KernelBoot,
    connection_uri,
    default_dac_label,
    domain_name,
    domain_xml,
    read_metadata,
)

META = DomainMetadata(
    template="debian-12",
    work_dir=Path("/work/b1"),
    pid=1234,
    pid_start=5678,
    started="2026-11-27T12:00:00+00:00",
)

BASE = DomainSpec(
    name="azbuild-debian-12-0123abcd",
    vcpus=2,
    memory=1024**3,
    accelerator="tcg",
    serial_log=Path("/work/b1/serial.log"),
    metadata=META,
    disks=(Disk(Path("/work/b1/disk.qcow2")),),
)

HEAD = """\
  <name>azbuild-debian-12-0123abcd</name>
  <metadata>
    <azbuild:build>
      <azbuild:template>debian-12</azbuild:template>
      <azbuild:workdir>/work/b1</azbuild:workdir>
      <azbuild:pid start="5678">1234</azbuild:pid>
      <azbuild:started>2026-11-27T12:00:00+00:00</azbuild:started>
    </azbuild:build>
  </metadata>
  <memory unit="KiB">1048576</memory>
  <vcpu>2</vcpu>
"""
AZ_NS = 'xmlns:azbuild="https://azbuild.dev/xmlns/libvirt-domain/1"'
QEMU_NS = 'xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"'
SERIAL = """\
    <serial type="file">
      <source path="/work/b1/serial.log" />
      <target port="0" />
    </serial>
    <memballoon model="none" />
"""
MAIN_DISK = """\
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" />
      <source file="/work/b1/disk.qcow2" />
      <target dev="vda" bus="virtio" />
    </disk>
"""


def test_bios_disk_boot_minimal() -> None:
    expected = (
        f'<domain {AZ_NS} type="qemu">\n'
        + HEAD
        + """\
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <boot dev="hd" />
  </os>
  <features>
    <acpi />
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
"""
        + MAIN_DISK
        + SERIAL
        + "  </devices>\n</domain>\n"
    )
    assert domain_xml(BASE) == expected


def test_uefi_kvm_port_forward_and_seclabel() -> None:
    spec = replace(BASE, firmware="uefi", accelerator="kvm", ssh_port=2222, dac_label="+0:+0")
    expected = (
        f'<domain {AZ_NS} {QEMU_NS} type="kvm">\n'
        + HEAD
        + """\
  <os firmware="efi">
    <type arch="x86_64" machine="pc">hvm</type>
    <boot dev="hd" />
  </os>
  <features>
    <acpi />
  </features>
  <cpu mode="host-passthrough" />
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
"""
        + MAIN_DISK
        + SERIAL
        + """\
  </devices>
  <seclabel type="static" model="dac" relabel="no">
    <label>+0:+0</label>
  </seclabel>
  <qemu:commandline>
    <qemu:arg value="-netdev" />
    <qemu:arg value="user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22" />
    <qemu:arg value="-device" />
    <qemu:arg value="virtio-net-pci,netdev=n0,bus=pci.0,addr=0x10" />
  </qemu:commandline>
</domain>
"""
    )
    assert domain_xml(spec) == expected


def test_direct_kernel_boot_with_cdrom_and_readonly_disk() -> None:
    spec = replace(
        BASE,
        disks=(
            Disk(Path("/work/b1/disk.qcow2")),
            Disk(Path("/work/b1/seed.iso"), format="raw", bus="scsi", device="cdrom"),
            Disk(Path("/work/b1/extra.raw"), format="raw", readonly=True),
            Disk(Path("/work/b1/install.iso"), format="raw", bus="sata", device="cdrom"),
        ),
        kernel_boot=KernelBoot(Path("/work/b1/vmlinuz"), Path("/work/b1/initrd"),
                               "console=ttyS0 auto=true"),
        on_reboot="destroy",
    )
    expected = (
        f'<domain {AZ_NS} type="qemu">\n'
        + HEAD
        + """\
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <kernel>/work/b1/vmlinuz</kernel>
    <initrd>/work/b1/initrd</initrd>
    <cmdline>console=ttyS0 auto=true</cmdline>
  </os>
  <features>
    <acpi />
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type="scsi" index="0" model="virtio-scsi" />
"""
        + MAIN_DISK
        + """\
    <disk type="file" device="cdrom">
      <driver name="qemu" type="raw" />
      <source file="/work/b1/seed.iso" />
      <target dev="sda" bus="scsi" />
      <readonly />
    </disk>
    <disk type="file" device="disk">
      <driver name="qemu" type="raw" />
      <source file="/work/b1/extra.raw" />
      <target dev="vdb" bus="virtio" />
      <readonly />
    </disk>
    <disk type="file" device="cdrom">
      <driver name="qemu" type="raw" />
      <source file="/work/b1/install.iso" />
      <target dev="sdb" bus="sata" />
      <readonly />
    </disk>
"""
        + SERIAL
        + "  </devices>\n</domain>\n"
    )
    assert domain_xml(spec) == expected


def test_kernel_boot_without_initrd() -> None:
    spec = replace(BASE, kernel_boot=KernelBoot(Path("/boot/vmlinuz"), None, "console=ttyS0"))
    xml = domain_xml(spec)
    assert "<kernel>/boot/vmlinuz</kernel>\n    <cmdline>console=ttyS0</cmdline>" in xml
    assert "<initrd>" not in xml and "<boot " not in xml


def test_metadata_round_trips() -> None:
    assert read_metadata(domain_xml(BASE)) == META
    no_start = replace(META, pid_start=None)
    xml = domain_xml(replace(BASE, metadata=no_start))
    assert '<azbuild:pid>1234</azbuild:pid>' in xml
    assert read_metadata(xml) == no_start
    assert read_metadata("<domain><name>x</name></domain>") is None


def test_port_forward_only_with_a_port() -> None:
    assert "qemu:" not in domain_xml(BASE)
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in domain_xml(replace(BASE, ssh_port=40022))


def test_domain_names() -> None:
    assert domain_name("debian-12", "0123abcd") == "azbuild-debian-12-0123abcd"
    generated = domain_name("debian-12")
    assert generated.startswith("azbuild-debian-12-")
    assert len(generated.rsplit("-", 1)[1]) == 8
    assert generated != domain_name("debian-12")


def test_connection_uri() -> None:
    assert connection_uri("qemu+ssh://h/system") == "qemu+ssh://h/system"
    assert connection_uri(None) == (SYSTEM_URI if os.geteuid() == 0 else SESSION_URI)
    assert default_dac_label(SESSION_URI) is None
    assert default_dac_label(SYSTEM_URI) == f"+{os.getuid()}:+{os.getgid()}"


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="needs libvirt-clients")
@pytest.mark.parametrize(
    "spec",
    [
        BASE,
        replace(BASE, firmware="uefi", accelerator="kvm", ssh_port=2222, dac_label="+0:+0"),
        replace(
            BASE,
            disks=(Disk(Path("/a.qcow2")), Disk(Path("/s.iso"), "raw", "scsi", "cdrom")),
            kernel_boot=KernelBoot(Path("/k"), Path("/i"), "x=1"),
            on_reboot="destroy",
        ),
    ],
    ids=["bios", "uefi-kvm-net", "kernel-cdrom"],
)
def test_libvirt_schema_accepts(spec: DomainSpec, tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(domain_xml(spec))
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_connection_hint_names_the_libvirt_group_for_users_on_system() -> None:
    from builder.vm.libvirt import connection_hint

    error = ("Failed to connect socket to '/var/run/libvirt/libvirt-sock': "
             "Permission denied")
    hint = connection_hint("qemu:///system", error, 1001)
    assert "libvirt group" in hint and "qemu:///session" in hint
    assert "libvirt group" not in connection_hint("qemu:///system", error, 0)
    no_bus = "internal error: Unable to get system bus connection: Could not connect"
    assert "auth_unix_rw" in connection_hint("qemu:///system", no_bus, 1001)
    assert "libvirtd running" in connection_hint("qemu:///system", "No such file", 0)
    assert "qemu:///session" in connection_hint("qemu:///session", "boom", 1001)


def test_root_on_the_session_uri_is_refused_before_anything_starts() -> None:
    import pytest

    from builder.errors import UsageError
    from builder.vm.libvirt import refuse_unsupported_uri

    with pytest.raises(UsageError, match="qemu:///session as root is not supported"):
        refuse_unsupported_uri("qemu:///session", 0)
    refuse_unsupported_uri("qemu:///session", 1001)
    refuse_unsupported_uri("qemu:///system", 0)
