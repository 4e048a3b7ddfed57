"""builder/inventory.py's parsers on real file texts, and the SPDX SBOM (builder/sbom.py)
validated by spdx-tools. Reading an inventory from a real image needs the libguestfs
appliance: tests/e2e/test_inventory_image.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import ExitStack, nullcontext
from datetime import UTC, datetime
from pathlib import Path

import pytest
from spdx_tools.spdx.model.document import Document
from spdx_tools.spdx.parser.json import json_parser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
from test_manifest import context

from builder.cli import main
from builder.errors import BuildError
from builder.inventory import (
    Inventory,
    Kernel,
    KernelArgs,
    Package,
    application_packages,
    default_kernel_args,
    dpkg_packages,
    enabled_units,
    grub_cmdline,
    kernels,
    parse_os_release,
    write_inventory,
)
from builder.offline_check.parsers import grub_kernel_lines
from builder.report.check_report import Report
from builder.sbom import package_url, sbom_document, sbom_path, write_sbom
from builder.steps.export import CheckFailed, write_image_sbom

# Stanzas of a Debian 12 /var/lib/dpkg/status (descriptions shortened), with a package
# removed but not purged (its configuration files remain) and one on hold.
DPKG_STATUS = """\
Package: bash
Essential: yes
Status: install ok installed
Priority: required
Section: shells
Installed-Size: 7164
Maintainer: Matthias Klose <doko@debian.org>
Architecture: amd64
Multi-Arch: foreign
Source: bash (5.2.15-2)
Version: 5.2.15-2+b8
Replaces: bash-completion (<< 20060301-0), bash-doc (<= 2.05-1)
Depends: base-files (>= 2.1.12), debianutils (>= 5.6-0.1)
Conffiles:
 /etc/bash.bashrc 89269e1298235f1b12b4c16e4065ad0d
 /etc/skel/.bashrc 0a1d3c5d9eb6f4b6a4e9e1f8b6b1b3d0
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter that executes
 commands read from the standard input or from a file.
 .
 Package: not-a-package (a continuation line)
Homepage: http://tiswww.case.edu/php/chet/bash/bashtop.html

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 13001
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u14
Description: GNU C Library: Shared libraries

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12462
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: i386
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u14
Description: GNU C Library: Shared libraries

Package: zlib1g
Status: hold ok installed
Priority: optional
Section: libs
Installed-Size: 168
Maintainer: Mark Brown <broonie@debian.org>
Architecture: amd64
Multi-Arch: same
Source: zlib
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime

Package: os-prober
Status: deinstall ok config-files
Priority: optional
Section: utils
Installed-Size: 139
Maintainer: Debian Install System Team <debian-boot@lists.debian.org>
Architecture: amd64
Version: 1.81
Conffiles:
 /etc/grub.d/30_os-prober 0b0b0e0b9d7ee8e30b2a0b8f2a2bd1c8
Description: utility to detect other OSes on a set of drives

Package: ca-certificates
Status: install ok installed
Priority: optional
Section: misc
Installed-Size: 384
Maintainer: Julien Cristau <jcristau@debian.org>
Architecture: all
Multi-Arch: foreign
Version: 20230311
Description: Common CA certificates
"""

OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""

# Rocky Linux 9's, which quotes single values and has a comment-free ANSI_COLOR.
OS_RELEASE_ROCKY = """\
NAME="Rocky Linux"
VERSION="9.4 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
ANSI_COLOR="0;32"
# a comment
CPE_NAME="cpe:/o:rocky:rocky:9::baseos"
"""


def test_dpkg_packages_reads_installed_and_held_packages_with_their_source() -> None:
    assert dpkg_packages(DPKG_STATUS) == [
        Package(name="bash", version="5.2.15-2+b8", architecture="amd64", source="bash"),
        Package(name="ca-certificates", version="20230311", architecture="all",
                source="ca-certificates"),
        Package(name="libc6", version="2.36-9+deb12u14", architecture="amd64",
                source="glibc"),
        Package(name="libc6", version="2.36-9+deb12u14", architecture="i386",
                source="glibc"),
        Package(name="zlib1g", version="1:1.2.13.dfsg-1", architecture="amd64",
                source="zlib"),
    ]


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a dpkg host")
def test_dpkg_packages_agrees_with_dpkg_query_on_this_host() -> None:
    """The host's own database, read by our parser and by dpkg itself."""
    text = Path("/var/lib/dpkg/status").read_text()
    out = subprocess.run(
        ["dpkg-query", "-W", "-f",
         "${db:Status-Status} ${Package} ${Version} ${Architecture} ${source:Package}\n"],
        check=True, capture_output=True, text=True).stdout
    expected = sorted(
        (name, version, arch, source)
        for status, name, version, arch, source in (line.split(" ") for line in out.splitlines())
        if status == "installed")
    parsed = sorted((p.name, p.version, p.architecture, p.source) for p in dpkg_packages(text))
    assert parsed == expected
    assert len(parsed) > 100


def test_application_packages_from_libguestfs_rpm_records() -> None:
    apps = [
        {"app2_name": "openssl", "app2_epoch": 1, "app2_version": "3.0.7",
         "app2_release": "27.el9", "app2_arch": "x86_64", "app2_source_package": ""},
        {"app2_name": "bash", "app2_epoch": 0, "app2_version": "5.1.8", "app2_release": "9.el9",
         "app2_arch": "x86_64", "app2_source_package": "bash"},
    ]
    assert application_packages(apps) == [
        Package(name="bash", version="5.1.8-9.el9", architecture="x86_64", source="bash"),
        Package(name="openssl", version="1:3.0.7-27.el9", architecture="x86_64",
                source="openssl"),
    ]


def test_parse_os_release() -> None:
    assert parse_os_release(OS_RELEASE) == {
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "NAME": "Debian GNU/Linux",
        "VERSION_ID": "12", "VERSION": "12 (bookworm)", "VERSION_CODENAME": "bookworm",
        "ID": "debian", "HOME_URL": "https://www.debian.org/",
        "SUPPORT_URL": "https://www.debian.org/support",
        "BUG_REPORT_URL": "https://bugs.debian.org/",
    }
    rocky = parse_os_release(OS_RELEASE_ROCKY)
    assert rocky["ID"] == "rocky" and rocky["ID_LIKE"] == "rhel centos fedora"
    assert rocky["CPE_NAME"] == "cpe:/o:rocky:rocky:9::baseos" and len(rocky) == 8
    assert parse_os_release('NAME="unbalanced\n') == {"NAME": "unbalanced"}


def test_kernels_from_boot_and_module_directories() -> None:
    boot = ["System.map-6.1.0-27-cloud-amd64", "System.map-6.1.0-28-cloud-amd64",
            "config-6.1.0-28-cloud-amd64", "grub", "initrd.img-6.1.0-28-cloud-amd64",
            "vmlinuz-6.1.0-27-cloud-amd64", "vmlinuz-6.1.0-28-cloud-amd64",
            ".vmlinuz-5.14.0-427.el9.x86_64.hmac", "vmlinuz-0-rescue-4c1f"]
    modules = ["6.1.0-28-cloud-amd64", "6.1.0-29-cloud-amd64"]
    assert kernels(boot, modules) == [
        Kernel(version="0-rescue-4c1f", image="/boot/vmlinuz-0-rescue-4c1f", modules=False),
        Kernel(version="6.1.0-27-cloud-amd64", image="/boot/vmlinuz-6.1.0-27-cloud-amd64",
               modules=False),
        Kernel(version="6.1.0-28-cloud-amd64", image="/boot/vmlinuz-6.1.0-28-cloud-amd64",
               modules=True),
        Kernel(version="6.1.0-29-cloud-amd64", image=None, modules=True),
    ]


def test_enabled_units_from_wants_directories() -> None:
    listing = {
        "multi-user.target.wants": ["ssh.service", "walinuxagent.service", "cron.service"],
        "sockets.target.wants": ["ssh.socket"],
        "timers.target.wants": ["apt-daily.timer"],
        "cloud-init.target.wants": ["cloud-init.service", "cloud-config.service"],
        "sysinit.target.requires": ["systemd-resolved.service"],
        "getty.target.wants": ["getty@tty1.service", "ssh.service"],
    }
    assert enabled_units(listing) == [
        "apt-daily.timer", "cloud-config.service", "cloud-init.service", "cron.service",
        "getty@tty1.service", "ssh.service", "ssh.socket", "systemd-resolved.service",
        "walinuxagent.service"]


GRUB_CFG = """\
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-x' {
\tlinux\t/boot/vmlinuz-6.1.0-28-cloud-amd64 root=PARTUUID=2d1f ro console=ttyS0 \
earlyprintk=ttyS0 rootdelay=300
\tinitrd\t/boot/initrd.img-6.1.0-28-cloud-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-x' {
\tmenuentry 'Debian GNU/Linux, with Linux 6.1.0-28-cloud-amd64 (recovery mode)' {
\t\tlinux\t/boot/vmlinuz-6.1.0-28-cloud-amd64 root=PARTUUID=2d1f ro single
\t}
}
"""

DEFAULT_GRUB = """\
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0 earlyprintk=ttyS0 rootdelay=300"
"""


def test_kernel_arguments() -> None:
    recovery_first = grub_kernel_lines(GRUB_CFG, "/boot/grub/grub.cfg")[::-1]
    assert default_kernel_args(recovery_first) == [
        "root=PARTUUID=2d1f", "ro", "console=ttyS0", "earlyprintk=ttyS0", "rootdelay=300"]
    assert default_kernel_args([]) is None
    assert grub_cmdline(DEFAULT_GRUB) == "console=ttyS0 earlyprintk=ttyS0 rootdelay=300"
    assert grub_cmdline('GRUB_CMDLINE_LINUX="a=1"\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n') == \
        "a=1 quiet"
    assert grub_cmdline(None) is None


def sample_inventory() -> Inventory:
    return Inventory(
        package_format="deb",
        packages=dpkg_packages(DPKG_STATUS),
        kernels=[Kernel(version="6.1.0-28-cloud-amd64",
                        image="/boot/vmlinuz-6.1.0-28-cloud-amd64", modules=True)],
        services=["ssh.service", "walinuxagent.service"],
        os_release=parse_os_release(OS_RELEASE),
        kernel_args=KernelArgs(default=["ro", "console=ttyS0"], grub_cmdline="console=ttyS0"),
    )


def test_package_urls() -> None:
    bash, _, libc, _, zlib = dpkg_packages(DPKG_STATUS)
    assert package_url(bash, "deb", "debian", "12") == \
        "pkg:deb/debian/bash@5.2.15-2%2Bb8?arch=amd64&distro=debian-12"
    assert package_url(libc, "deb", "debian", "12") == \
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=amd64&distro=debian-12&upstream=glibc"
    assert package_url(zlib, "deb", "debian", "") == \
        "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64&upstream=zlib"
    assert package_url(bash, "unknown", "debian", "12") is None


def _parsed(path: Path) -> Document:
    document: Document = json_parser.parse_from_file(str(path))
    return document


def test_sbom_is_valid_spdx_2_3(tmp_path: Path) -> None:
    target = sbom_path(tmp_path, "debian-12-cloud")
    document = sbom_document(sample_inventory(), "debian-12-cloud",
                             datetime(2026, 12, 1, 3, 0, tzinfo=UTC), namespace_id="0a1b2c3d")
    write_sbom(target, document, force=False)
    assert target.name == "debian-12-cloud.spdx.json"
    assert [p.name for p in tmp_path.iterdir()] == [target.name], "no temporary file is left"
    parsed = _parsed(target)
    assert validate_full_spdx_document(parsed, "SPDX-2.3") == []
    assert parsed.creation_info.document_namespace == \
        "https://spdx.org/spdxdocs/azbuild/debian-12-cloud-0a1b2c3d"
    assert [(p.name, p.version) for p in parsed.packages] == [
        ("debian-12-cloud", "Debian GNU/Linux 12 (bookworm)"),
        ("bash", "5.2.15-2+b8"), ("ca-certificates", "20230311"),
        ("libc6", "2.36-9+deb12u14"), ("libc6", "2.36-9+deb12u14"),
        ("zlib1g", "1:1.2.13.dfsg-1")]
    contained = [r.related_spdx_element_id for r in parsed.relationships
                 if r.relationship_type.name == "CONTAINS"]
    assert contained == [p.spdx_id for p in parsed.packages[1:]]
    assert len(set(contained)) == 5, "the two libc6 architectures have their own ids"


def test_sbom_of_an_image_without_packages_is_valid(tmp_path: Path) -> None:
    empty = Inventory(package_format="unknown", packages=[], kernels=[], services=[],
                      os_release={}, kernel_args=KernelArgs(default=None, grub_cmdline=None))
    target = tmp_path / "x.spdx.json"
    write_sbom(target, sbom_document(empty, "bare image", datetime.now(UTC)), force=False)
    assert validate_full_spdx_document(_parsed(target), "SPDX-2.3") == []


def test_write_inventory_is_the_manifest_form(tmp_path: Path) -> None:
    target = tmp_path / "inventory.json"
    write_inventory(sample_inventory(), target)
    assert Inventory.model_validate(json.loads(target.read_text())) == sample_inventory()


@pytest.mark.parametrize(("error", "kept"), [
    (None, True), (CheckFailed("not Azure-ready"), True), (BuildError("publish failed"), False)])
def test_the_build_s_sbom_goes_with_its_image(
    tmp_path: Path, error: BuildError | None, kept: bool
) -> None:
    ctx = context(tmp_path)
    ctx.report = Report(image="t.raw", checks=[])
    ctx.report.inventory = sample_inventory()
    target = ctx.output_dir / "t.spdx.json"
    with pytest.raises(BuildError) if error else nullcontext(), ExitStack() as stack:
        write_image_sbom(ctx, stack)
        assert validate_full_spdx_document(_parsed(target), "SPDX-2.3") == []
        if error:
            raise error
    assert target.exists() is kept
    assert [p.name for p in ctx.output_dir.iterdir()] == (["t.spdx.json"] if kept else [])


def test_check_inventory_of_a_missing_image_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "inventory.json"
    assert main(["check", str(tmp_path / "missing.raw"), "--inventory", str(target)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
