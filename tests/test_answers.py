"""Answer files for every family: validated by the installers' own tools and schemas where
they exist, their structure asserted where they do not."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from passlib.hash import sha512_crypt
from pydantic import ValidationError
from pykickstart.constants import KS_SCRIPT_POST
from pykickstart.errors import KickstartError, KickstartParseWarning
from pykickstart.parser import KickstartParser
from pykickstart.version import makeVersion

from builder.answers import (
    AnswerContext,
    answer_media,
    guest_hostname,
    hash_password,
    installer_cmdline,
    installer_failure_patterns,
    installer_failure_regex,
    render_answer_files,
)
from builder.cli import main
from builder.errors import UsageError
from builder.image.iso import open_iso, read_file
from builder.models import Template
from builder.vm.volume import write_volume
from distros import Distro, resolve
from distros.rhel import RhelLike

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads(
    (Path(__file__).parent / "data" / "subiquity" / "autoinstall-schema.json").read_text()
)
CLOUD_CONFIG_SCHEMA = json.loads(
    (Path(__file__).parent / "data" / "cloud-init" / "schema-cloud-config-v1.json").read_text()
)
PLAIN_PASSWORD = "Plain-Secret-pa55!"
YAST = "{http://www.suse.com/1.0/yast2ns}"
CONFIG_TYPE = "{http://www.suse.com/1.0/configns}type"

KICKSTART_DISTROS = [
    ("rhel", "6"), ("rhel", "7"), ("rhel", "8"), ("rhel", "9"),
    ("centos", "6"), ("centos", "7"), ("centos", "stream8"), ("centos", "stream9"),
    ("rocky", "8"), ("rocky", "9"), ("almalinux", "8"), ("almalinux", "9"),
    ("oracle", "7"), ("oracle", "8"), ("oracle", "9"),
]
ALL_DISTROS = [
    *KICKSTART_DISTROS,
    ("ubuntu", "20.04"), ("ubuntu", "22.04"), ("ubuntu", "24.04"),
    ("debian", "11"), ("debian", "12"),
    ("sles", "12"), ("sles", "15"), ("opensuse-leap", "15"),
]
FIRMWARES = ["bios", "uefi"]


def _keypair(comment: str) -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return private, f"{public} {comment}"


HOST_PRIVATE, HOST_PUBLIC = _keypair("azbuild-host")
_, USER_PUBLIC = _keypair("azbuild-build-key")
ROOT_HASH = hash_password(PLAIN_PASSWORD)


def make_template(name: str, version: str, firmware: str = "bios",
                  azure: dict[str, Any] | None = None, **install: Any) -> Template:
    return Template.model_validate({
        "name": "answers-test",
        "source": {"iso": "/srv/x.iso", "checksum": "sha256:" + "0" * 64},
        "distro": {"name": name, "version": version},
        "vm": {"firmware": firmware, "disk_size": "30GiB"},
        "install": {"packages": ["vim", "sudo"], "root_password": PLAIN_PASSWORD, **install},
        "azure": azure or {},
    })


def make_ctx(firmware: str = "bios", root_hash: str | None = ROOT_HASH) -> AnswerContext:
    return AnswerContext(
        build_user="azbuild", ssh_public_key=USER_PUBLIC, host_key_private=HOST_PRIVATE,
        host_key_public=HOST_PUBLIC, root_password_hash=root_hash,
        firmware=firmware,  # type: ignore[arg-type]
        disk_size=30 * 1024**3,
    )


def render(name: str, version: str, firmware: str = "bios", root_hash: str | None = ROOT_HASH,
           azure: dict[str, Any] | None = None, **install: Any) -> tuple[Distro, dict[str, str]]:
    distro = resolve(name, version)
    files = render_answer_files(distro, make_template(name, version, firmware, azure, **install),
                                make_ctx(firmware, root_hash))
    return distro, files


# --- kickstart ---------------------------------------------------------------------------

def _pykickstart_errors(text: str, version: str) -> list[str]:
    """What `ksvalidator -v VERSION` does: parse strictly, parse warnings are errors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=KickstartParseWarning)
        parser = KickstartParser(makeVersion(version), errorsAreFatal=False)
        try:
            parser.readKickstartFromString(text)
        except KickstartError as exc:
            return [str(exc)]
    return [f"{parser.errorsCount} errors"] if parser.errorsCount else []


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize(("name", "version"), KICKSTART_DISTROS)
def test_kickstart_parses_for_its_version(name: str, version: str, firmware: str) -> None:
    distro, files = render(name, version, firmware)
    assert list(files) == ["ks.cfg"]
    assert isinstance(distro, RhelLike)
    assert _pykickstart_errors(files["ks.cfg"], distro.kickstart_version) == []


def test_in_process_kickstart_check_is_not_vacuous() -> None:
    _, files = render("rhel", "8")
    assert _pykickstart_errors(files["ks.cfg"] + "\nnosuchcommand\n", "RHEL8") != []
    assert _pykickstart_errors(files["ks.cfg"] + "\npart / --bogus\n", "RHEL8") != []
    assert _pykickstart_errors(files["ks.cfg"].replace("%end", "", 1), "RHEL8") != []


@pytest.mark.skipif(shutil.which("ksvalidator") is None and not Path(".venv/bin/ksvalidator")
                    .exists(), reason="ksvalidator not installed")
@pytest.mark.parametrize(("version", "firmware"), [("6", "bios"), ("7", "uefi"), ("8", "bios"),
                                                  ("9", "uefi")])
def test_ksvalidator_accepts_rhel(version: str, firmware: str, tmp_path: Path) -> None:
    """The real `ksvalidator` command on one kickstart per syntax version (the in-process
    parse above covers every distro and firmware)."""
    distro, files = render("rhel", version, firmware)
    assert isinstance(distro, RhelLike)
    ks = tmp_path / "ks.cfg"
    ks.write_text(files["ks.cfg"])
    tool = shutil.which("ksvalidator") or ".venv/bin/ksvalidator"
    ok = subprocess.run([tool, "-v", distro.kickstart_version, str(ks)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The validator is not vacuous: an unknown command fails it.
    ks.write_text(files["ks.cfg"] + "\nnosuchcommand --x\n")
    bad = subprocess.run([tool, "-v", distro.kickstart_version, str(ks)],
                         capture_output=True, text=True)
    assert bad.returncode != 0


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize("version", ["6", "9"])
def test_kickstart_content(version: str, firmware: str) -> None:
    _, files = render("rhel", version, firmware)
    ks = files["ks.cfg"]
    lines = ks.splitlines()
    commands = [line for line in lines if line and not line.startswith(("#", " "))]
    assert "poweroff" in commands
    assert not any(c.startswith(("logvol", "volgroup", "raid", "autopart")) for c in commands)
    assert not any("swap" in c for c in commands)
    parts = [c for c in commands if c.startswith("part ")]
    if firmware == "uefi":
        assert parts[0].startswith("part /boot/efi --fstype=efi")
    else:
        assert all("/boot/efi" not in p for p in parts)
    assert parts[-1].startswith("part / ") and "--grow" in parts[-1]
    assert f"rootpw --iscrypted {ROOT_HASH}" in commands
    assert "services --enabled=sshd" in commands
    post = ks[ks.index("%post"):]
    assert USER_PUBLIC in post
    assert HOST_PRIVATE.strip() in post and HOST_PUBLIC in post
    assert "NOPASSWD: ALL" in post and "/etc/sudoers.d/90-azbuild" in post
    assert "rm -f /etc/ssh/ssh_host_*_key" in post
    packages = ks[ks.index("%packages"):ks.index("%end")].split()
    assert {"openssh-server", "sudo", "vim", "@core"} <= set(packages)
    assert packages.count("sudo") == 1


def _kickstart(name: str, version: str, firmware: str = "bios", **kwargs: Any) -> Any:
    """pykickstart's parsed handler of the rendered ks.cfg."""
    distro, files = render(name, version, firmware, **kwargs)
    assert isinstance(distro, RhelLike)
    parser = KickstartParser(makeVersion(distro.kickstart_version))
    parser.readKickstartFromString(files["ks.cfg"])
    return parser.handler


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize(("name", "version"), KICKSTART_DISTROS)
def test_kickstart_installs_the_agent_from_the_dvd(name: str, version: str,
                                                    firmware: str) -> None:
    """8 and later: the agent (and cloud-init in cloud-init mode) from the DVD's AppStream,
    so that an unregistered RHEL, whose DVD is gone after the install, has it (R08)."""
    distro = resolve(name, version)
    waagent = set(_kickstart(name, version, firmware).packages.packageList)
    cloud = set(_kickstart(name, version, firmware,
                           azure={"provisioning": "cloud-init"}).packages.packageList)
    assert {"openssh-server", "sudo", "vim"} <= waagent
    assert ("hyperv-daemons" in waagent) == (distro.major >= 7)
    on_dvd = distro.major >= 8 and name != "oracle"
    assert ("WALinuxAgent" in waagent) == on_dvd
    assert "cloud-init" not in waagent
    assert ({"WALinuxAgent", "cloud-init"} <= cloud) == on_dvd


def test_kickstart_registers_rhel_in_post_only_when_asked() -> None:
    handler = _kickstart("rhel", "9", "uefi", rhel_activation_key="azbuild-key",
                         rhel_organization="1234567")
    posts = [script for script in handler.scripts if script.type == KS_SCRIPT_POST]
    assert len(posts) == 2 and all(script.errorOnFail for script in posts)
    assert posts[-1].inChroot
    assert posts[-1].script.strip() == (
        "subscription-manager register --org=1234567 --activationkey=azbuild-key"
    )
    plain = _kickstart("rhel", "9")
    assert not any("subscription-manager" in script.script for script in plain.scripts)


@pytest.mark.parametrize(("name", "install", "message"), [
    ("rocky", {"rhel_activation_key": "k", "rhel_organization": "1"}, "RHEL only"),
    ("rhel", {"rhel_activation_key": "k"}, "both"),
    ("rhel", {"rhel_activation_key": "k'; reboot", "rhel_organization": "1"}, "letters"),
    ("debian", {"ubuntu_kernel": "azure"}, "Ubuntu only"),
])
def test_distro_specific_install_keys_are_checked(name: str, install: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_template(name, "9" if name != "debian" else "12", **install)


def test_kickstart_locked_root_without_password() -> None:
    _, files = render("rocky", "9", root_hash=None)
    assert "rootpw --lock" in files["ks.cfg"].splitlines()


def test_kickstart_setup_script_is_valid_shell(tmp_path: Path) -> None:
    _, files = render("almalinux", "9")
    ks = files["ks.cfg"]
    script = ks[ks.index("%post --erroronfail\n") + 20:ks.rindex("%end")]
    path = tmp_path / "post.sh"
    path.write_text(script)
    subprocess.run(["sh", "-n", str(path)], check=True)


# --- Ubuntu autoinstall --------------------------------------------------------------------

@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize("version", ["20.04", "22.04", "24.04"])
def test_autoinstall_validates_against_subiquity_schema(version: str, firmware: str) -> None:
    _, files = render("ubuntu", version, firmware)
    assert sorted(files) == ["meta-data", "user-data"]
    assert files["user-data"].startswith("#cloud-config\n")
    doc = yaml.safe_load(files["user-data"])
    auto = doc["autoinstall"]
    jsonschema.validate(auto, SCHEMA)
    assert auto["shutdown"] == "poweroff"
    assert auto["ssh"]["install-server"] is True
    assert {"openssh-server", "sudo", "vim"} <= set(auto["packages"])

    storage = auto["storage"]
    assert storage["swap"] == {"size": 0}
    kinds = {item["type"] for item in storage["config"]}
    assert not any(k.startswith("lvm") or k == "raid" for k in kinds)
    disk = storage["config"][0]
    assert disk["type"] == "disk" and disk["ptable"] == "gpt"
    flags = {item.get("flag") for item in storage["config"] if item["type"] == "partition"}
    mounts = {item["path"] for item in storage["config"] if item["type"] == "mount"}
    formats = {item["fstype"] for item in storage["config"] if item["type"] == "format"}
    assert "swap" not in formats
    if firmware == "uefi":
        assert "boot" in flags and mounts == {"/", "/boot/efi"}
    else:
        assert "bios_grub" in flags and mounts == {"/"}

    user_data = auto["user-data"]
    (user,) = user_data["users"]
    assert user["name"] == "azbuild" and user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["ssh_authorized_keys"] == [USER_PUBLIC]
    assert user_data["ssh_keys"] == {"ed25519_private": HOST_PRIVATE.strip() + "\n",
                                     "ed25519_public": HOST_PUBLIC}
    assert user_data["ssh_deletekeys"] is True and user_data["ssh_genkeytypes"] == ["ed25519"]
    # Subiquity hands this section to cloud-init on the installed system.
    jsonschema.Draft4Validator(CLOUD_CONFIG_SCHEMA).validate(user_data)
    assert auto["late-commands"][0][-3:] == ["-p", ROOT_HASH, "root"]

    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "azbuild-answers-test", "local-hostname": "azbuild"}


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize("version", ["20.04", "22.04", "24.04"])
def test_autoinstall_kernel_is_generic_unless_azure_is_asked(version: str, firmware: str) -> None:
    _, files = render("ubuntu", version, firmware)
    assert "kernel" not in yaml.safe_load(files["user-data"])["autoinstall"]
    _, files = render("ubuntu", version, firmware, ubuntu_kernel="azure")
    auto = yaml.safe_load(files["user-data"])["autoinstall"]
    jsonschema.validate(auto, SCHEMA)
    # Subiquity's `kernel` section: exactly one of `package` or `flavor`.
    assert auto["kernel"] == {"package": "linux-azure"}


def test_autoinstall_schema_rejects_a_broken_file() -> None:
    _, files = render("ubuntu", "22.04")
    auto = yaml.safe_load(files["user-data"])["autoinstall"]
    auto["keyboard"] = {"layuot": "us"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(auto, SCHEMA)


def test_cloud_config_schema_rejects_a_broken_section() -> None:
    _, files = render("ubuntu", "22.04")
    user_data = yaml.safe_load(files["user-data"])["autoinstall"]["user-data"]
    user_data["ssh_keys"]["ed25519_private"] = 42
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(CLOUD_CONFIG_SCHEMA).validate(user_data)


def test_autoinstall_without_root_password_has_no_late_commands() -> None:
    _, files = render("ubuntu", "24.04", root_hash=None)
    assert "late-commands" not in yaml.safe_load(files["user-data"])["autoinstall"]


# --- Debian preseed ------------------------------------------------------------------------

_PRESEED_LINE = re.compile(
    r"^(?P<owner>d-i|tasksel|popularity-contest) (?P<question>[a-z0-9-]+(/[A-Za-z0-9_-]+)+) "
    r"(?P<type>string|boolean|select|multiselect|note|password)(?: (?P<value>.*))?$"
)


def _preseed(text: str) -> dict[str, tuple[str, str]]:
    answers: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _PRESEED_LINE.match(line)
        assert match, f"not 'owner question type value': {line!r}"
        answers[match["question"]] = (match["type"], match["value"] or "")
    return answers


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize("version", ["11", "12"])
def test_preseed_lines_and_content(version: str, firmware: str, tmp_path: Path) -> None:
    _, files = render("debian", version, firmware)
    assert list(files) == ["preseed.cfg"]
    answers = _preseed(files["preseed.cfg"])
    assert answers["debian-installer/exit/poweroff"] == ("boolean", "true")
    assert answers["partman-auto/method"] == ("string", "regular")
    assert answers["passwd/root-password-crypted"] == ("password", ROOT_HASH)
    assert answers["time/zone"] == ("string", "UTC")
    assert answers["keyboard-configuration/xkb-keymap"] == ("select", "us")
    assert set(answers["pkgsel/include"][1].split()) == {"openssh-server", "sudo", "vim"}
    recipe = answers["partman-auto/expert_recipe"][1]
    assert "swap" not in recipe and "lvm" not in recipe
    assert "mountpoint{ / }" in recipe
    label = answers["partman-partitioning/choose_label"][1]
    if firmware == "uefi":
        assert "method{ efi }" in recipe and label == "gpt"
    else:
        assert "method{ efi }" not in recipe and label == "msdos"

    late = answers["preseed/late_command"][1]
    encoded = re.search(r"echo ([A-Za-z0-9+/=]+) \| base64 -d \| sh", late)
    assert encoded and late.startswith("in-target sh -c ")
    script = base64.b64decode(encoded[1]).decode()
    assert USER_PUBLIC in script and HOST_PRIVATE.strip() in script and HOST_PUBLIC in script
    assert "NOPASSWD: ALL" in script and "systemctl enable ssh.service" in script
    path = tmp_path / "late.sh"
    path.write_text(script)
    subprocess.run(["sh", "-n", str(path)], check=True)


@pytest.mark.skipif(shutil.which("debconf-set-selections") is None, reason="needs debconf")
@pytest.mark.parametrize("firmware", FIRMWARES)
def test_preseed_passes_debconf_syntax_check(firmware: str, tmp_path: Path) -> None:
    _, files = render("debian", "12", firmware)
    good = tmp_path / "preseed.cfg"
    good.write_text(files["preseed.cfg"])
    ok = subprocess.run(["debconf-set-selections", "--checkonly", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.cfg"
    bad.write_text(files["preseed.cfg"] + "d-i incomplete\n")
    assert subprocess.run(["debconf-set-selections", "--checkonly", str(bad)],
                          capture_output=True).returncode != 0


def test_preseed_locks_root_without_password() -> None:
    _, files = render("debian", "12", root_hash=None)
    assert _preseed(files["preseed.cfg"])["passwd/root-password-crypted"] == ("password", "!")


# --- AutoYaST --------------------------------------------------------------------------------

def _find(root: ET.Element, path: str) -> ET.Element:
    element = root.find("/".join(YAST + part for part in path.split("/")))
    assert element is not None, path
    return element


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize(("name", "version"), [("sles", "12"), ("sles", "15"),
                                               ("opensuse-leap", "15")])
def test_autoyast_structure(name: str, version: str, firmware: str) -> None:
    _, files = render(name, version, firmware)
    assert list(files) == ["autoinst.xml"]
    root = ET.fromstring(files["autoinst.xml"].encode())
    assert root.tag == YAST + "profile"
    mode = _find(root, "general/mode")
    # <halt> powers off after stage 1; final_halt would halt the first boot (Profile.rb
    # turns it into an init script) and stop the build's provisioning boot.
    assert mode.findtext(YAST + "halt") == "true"
    assert mode.find(YAST + "halt").get(CONFIG_TYPE) == "boolean"  # type: ignore[union-attr]
    assert mode.find(YAST + "final_halt") is None and mode.find(YAST + "final_reboot") is None
    assert mode.findtext(YAST + "second_stage") == "false"
    assert mode.findtext(YAST + "confirm") == "false"

    (drive,) = _find(root, "partitioning").findall(YAST + "drive")
    assert drive.find(YAST + "type") is None  # a plain disk, not CT_LVM / CT_RAID
    partitions = drive.findall(f"{YAST}partitions/{YAST}partition")
    assert all(p.find(YAST + "lvm_group") is None for p in partitions)
    filesystems = [p.findtext(YAST + "filesystem") for p in partitions]
    mounts = [p.findtext(YAST + "mount") for p in partitions]
    assert "swap" not in filesystems and "swap" not in mounts
    assert not any("lvm" in element.tag for element in root.iter())
    label = drive.findtext(YAST + "disklabel")
    if firmware == "uefi":
        assert label == "gpt" and mounts == ["/boot/efi", "/"] and filesystems[0] == "vfat"
        assert _find(root, "bootloader/loader_type").text == "grub2-efi"
    else:
        assert label == "msdos" and mounts == ["/"]
        assert _find(root, "bootloader/loader_type").text == "grub2"

    users = {u.findtext(YAST + "username"): u for u in _find(root, "users")}
    assert users["root"].findtext(YAST + "user_password") == ROOT_HASH
    assert users["root"].findtext(YAST + "encrypted") == "true"
    keys = [e.text for e in users["azbuild"].iter(YAST + "listentry")]
    assert keys == [USER_PUBLIC]

    packages = {e.text for e in _find(root, "software/packages")}
    assert {"wicked", "openssh", "sudo", "vim"} <= packages
    assert _find(root, "software/packages").get(CONFIG_TYPE) == "list"
    enabled = [e.text for e in _find(root, "services-manager/services/enable")]
    assert enabled == ["sshd"]
    assert _find(root, "keyboard/keymap").text == "english-us"
    script = _find(root, "scripts/chroot-scripts/script/source").text or ""
    assert HOST_PRIVATE.strip() in script and USER_PUBLIC in script
    assert 'printf \'%s ALL=(ALL) NOPASSWD: ALL\\n\' "$user"' in script


def _addons(root: ET.Element) -> list[dict[str, str | None]]:
    entries = root.findall(f"{YAST}add-on/{YAST}add_on_products/{YAST}listentry")
    return [{key: e.findtext(YAST + key) for key in ("media_url", "product_dir", "product")}
            for e in entries]


def _software(root: ET.Element) -> tuple[list[str | None], set[str | None]]:
    products = [e.text for e in root.findall(f"{YAST}software/{YAST}products/{YAST}product")]
    packages = {e.text for e in _find(root, "software/packages")}
    return products, packages


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_sles15_full_medium_selects_the_product_and_adds_the_modules(firmware: str) -> None:
    _, files = render("sles", "15", firmware)
    root = ET.fromstring(files["autoinst.xml"].encode())
    products, packages = _software(root)
    assert products == ["SLES"]
    assert _find(root, "software/products").get(CONFIG_TYPE) == "list"
    assert _addons(root) == [
        {"media_url": "relurl://", "product_dir": "/Module-Basesystem",
         "product": "sle-module-basesystem"},
        {"media_url": "relurl://", "product_dir": "/Module-Server-Applications",
         "product": "sle-module-server-applications"},
        {"media_url": "relurl://", "product_dir": "/Module-Public-Cloud",
         "product": "sle-module-public-cloud"},
    ]
    assert _find(root, "add-on/add_on_products").get(CONFIG_TYPE) == "list"
    assert _find(root, "suse_register/do_registration").text == "false"
    # The agent comes from the Public Cloud module during the install (R08 only checks it).
    assert {"python-azure-agent", "wicked", "openssh", "sudo"} <= packages
    assert "cloud-init" not in packages


def test_suse_cloud_init_mode_installs_cloud_init_with_the_agent() -> None:
    for name in ("sles", "opensuse-leap"):
        _, files = render(name, "15", azure={"provisioning": "cloud-init"})
        _, packages = _software(ET.fromstring(files["autoinst.xml"].encode()))
        assert {"python-azure-agent", "cloud-init"} <= packages, name


def test_sles12_dvd_is_one_product_without_the_agent() -> None:
    """SLES 12's DVD is the SLES product alone; the agent is in the online Public Cloud
    module, so the install does not ask for it (the preparation installs it)."""
    _, files = render("sles", "12")
    root = ET.fromstring(files["autoinst.xml"].encode())
    products, packages = _software(root)
    assert products == [] and root.find(YAST + "add-on") is None
    assert _find(root, "suse_register/do_registration").text == "false"
    assert "python-azure-agent" not in packages


@pytest.mark.parametrize(("version", "release"), [("15", "$releasever"), ("15.5", "15.5")])
def test_leap_adds_the_oss_repository_for_the_agent(version: str, release: str) -> None:
    _, files = render("opensuse-leap", version, "uefi")
    root = ET.fromstring(files["autoinst.xml"].encode())
    products, packages = _software(root)
    assert products == []
    assert _addons(root) == [{
        "media_url": f"http://download.opensuse.org/distribution/leap/{release}/repo/oss/",
        "product_dir": "/", "product": None,
    }]
    assert root.find(YAST + "suse_register") is None  # Leap has no registration
    assert "python-azure-agent" in packages and "cloud-init" not in packages


# --- across families -------------------------------------------------------------------------

@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize(("name", "version"), ALL_DISTROS)
def test_no_plain_password_anywhere(name: str, version: str, firmware: str) -> None:
    distro, files = render(name, version, firmware)
    assert set(files) == set(distro.answer_files)
    for text in files.values():
        assert PLAIN_PASSWORD not in text
    assert sha512_crypt.verify(PLAIN_PASSWORD, ROOT_HASH)
    assert any(ROOT_HASH in text for text in files.values())


def test_hash_password_is_sha512_crypt() -> None:
    hashed = hash_password("x")
    assert hashed.startswith("$6$") and sha512_crypt.verify("x", hashed)
    assert hash_password("x") != hashed  # salted


def test_context_rejects_bad_values() -> None:
    with pytest.raises(UsageError, match="SHA-512"):
        make_ctx(root_hash=PLAIN_PASSWORD)
    with pytest.raises(UsageError, match="user"):
        AnswerContext("root", USER_PUBLIC, HOST_PRIVATE, HOST_PUBLIC, None, "bios", 1)
    with pytest.raises(UsageError, match="ed25519"):
        AnswerContext("azbuild", USER_PUBLIC, HOST_PRIVATE, "ssh-rsa AAAA x", None, "bios", 1)


def test_user_answer_file_gets_the_same_variables(tmp_path: Path) -> None:
    (tmp_path / "common.j2").write_text("user={{ user }}\n")
    own = tmp_path / "my-user-data.j2"
    own.write_text(
        "#cloud-config\n{% include 'common.j2' %}key={{ ssh_public_key }}\n"
        "hash={{ root_password_hash }}\nfw={{ firmware }} disk={{ disk_mib }}\n"
        "distro={{ distro.name }} {{ version }}\n"
    )
    _, files = render("ubuntu", "22.04", "uefi", answer_file=str(own))
    assert files["user-data"] == (
        f"#cloud-config\nuser=azbuild\nkey={USER_PUBLIC}\nhash={ROOT_HASH}\n"
        "fw=uefi disk=30720\ndistro=ubuntu 22.04\n"
    )
    assert files["meta-data"].startswith("instance-id: azbuild-answers-test")


def test_user_answer_file_errors(tmp_path: Path) -> None:
    own = tmp_path / "ks.cfg.j2"
    own.write_text("rootpw {{ root_pasword }}\n")
    with pytest.raises(UsageError) as err:
        render("rhel", "9", answer_file=str(own))
    assert "root_pasword" in str(err.value) and "root_password_hash" in (err.value.hint or "")
    own.write_text("{% if %}\n")
    with pytest.raises(UsageError, match=r"ks.cfg.j2:1"):
        render("rhel", "9", answer_file=str(own))
    with pytest.raises(UsageError, match="not found"):
        render("rhel", "9", answer_file=str(tmp_path / "missing.j2"))


# --- installer command line and media --------------------------------------------------------

@pytest.mark.parametrize(("name", "version", "label", "expected"), [
    ("rhel", "9", "RHEL-9-4-0-BaseOS-x86_64",
     "inst.ks=hd:LABEL=OEMDRV:/ks.cfg inst.stage2=hd:LABEL=RHEL-9-4-0-BaseOS-x86_64 inst.text "
     "net.ifnames=0 console=ttyS0,115200"),
    ("centos", "7", "CentOS 7 x86_64",
     "inst.ks=hd:LABEL=OEMDRV:/ks.cfg inst.stage2=hd:LABEL=CentOS\\x207\\x20x86_64 inst.text "
     "net.ifnames=0 console=ttyS0,115200"),
    ("centos", "6", "CentOS_6.10_Final",
     "ks=hd:LABEL=OEMDRV:/ks.cfg text net.ifnames=0 console=ttyS0,115200"),
    ("rocky", "8", None,
     "inst.ks=hd:LABEL=OEMDRV:/ks.cfg inst.text net.ifnames=0 console=ttyS0,115200"),
    ("ubuntu", "24.04", None, "autoinstall ds=nocloud console=ttyS0,115200"),
    ("debian", "12", None, "auto=true priority=critical net.ifnames=0 console=ttyS0,115200"),
    ("sles", "15", None,
     "autoyast=device:///autoinst.xml textmode=1 net.ifnames=0 console=ttyS0,115200"),
])
def test_installer_cmdline(name: str, version: str, label: str | None, expected: str) -> None:
    template = make_template(name, version)
    assert installer_cmdline(resolve(name, version), template, label) == expected


@pytest.mark.parametrize(("name", "version"), [
    *KICKSTART_DISTROS, ("debian", "11"), ("debian", "12"),
    ("sles", "12"), ("sles", "15"), ("opensuse-leap", "15"),
])
def test_installer_names_the_nic_as_the_installed_system_will(name: str, version: str) -> None:
    """d-i's netcfg writes the install-time NIC name into /etc/network/interfaces,
    Anaconda binds its profile to it, AutoYaST's keep_install_network copies the
    installer's ifcfg-<name>: all must see eth0, the name the installed system gets from
    the net.ifnames=0 that R07 puts on its kernel command line."""
    template = make_template(name, version)
    assert "net.ifnames=0" in template.azure.kernel_args_add
    args = installer_cmdline(resolve(name, version), template, "LABEL").split()
    assert args.count("net.ifnames=0") == 1


def test_installer_cmdline_appends_template_kernel_args() -> None:
    template = make_template("debian", "12", kernel_args=["net.ifnames=0", "debug"])
    assert installer_cmdline(resolve("debian", "12"), template) == (
        "auto=true priority=critical net.ifnames=0 console=ttyS0,115200 debug"
    )
    ubuntu = make_template("ubuntu", "24.04", kernel_args=["net.ifnames=0"])
    assert installer_cmdline(resolve("ubuntu", "24.04"), ubuntu).endswith(
        "console=ttyS0,115200 net.ifnames=0"
    )


@pytest.mark.parametrize(("name", "version", "kind", "label"), [
    ("rhel", "8", "volume", "OEMDRV"),
    ("ubuntu", "22.04", "volume", "CIDATA"),
    ("debian", "12", "initrd", None),
    ("sles", "15", "volume", "OEMDRV"),
])
def test_answer_media(name: str, version: str, kind: str, label: str | None,
                      tmp_path: Path) -> None:
    distro, files = render(name, version)
    media = answer_media(distro, files)
    assert (media.kind, media.label) == (kind, label)
    assert media.files == {k: v.encode() for k, v in files.items()}
    if media.label:
        # The volume the install step writes: installers see the files under their names.
        volume = tmp_path / "answers.iso"
        write_volume(volume, media.label, media.files)
        with open_iso(volume) as reader:
            assert reader.pvd.volume_identifier.decode().strip() == label
            for file_name, data in media.files.items():
                assert read_file(reader, file_name) == data


# --- failure signs on the serial console -----------------------------------------------------

FAILURES = {
    ("rhel", "9"): [
        "Traceback (most recent call last):",
        "An unknown error has occured, look at the /tmp/anaconda-tb* file(s) for more details",
        "The following error occurred on line 12 of the kickstart file:",
        "[  120.1] dracut-initqueue[612]: Warning: dracut-initqueue timeout - starting timeout "
        "scripts",
    ],
    ("ubuntu", "22.04"): [
        "finish: subiquity/Install/install/curthooks: FAIL: installing kernel",
        "autoinstall config did not validate against schema",
        "An error occurred. Press enter to start a shell",
    ],
    ("debian", "12"): [
        # Raw serial output of the real d-i (newt) failing to reach its mirror.
        "\x1b[0m\x1b(B\x1b[30m\x1b[47m \x1b[31m[!!] Download installer components\x1b[30m ",
        "\x1b[47m Downloading a file failed:      ",
        "  [!!] Partition disks",
        "Installation step failed",
        "Failed to retrieve the preconfiguration file",
    ],
    ("sles", "15"): [
        "Error while fetching the profile: device:///autoinst.xml",
        "AutoYaST: error processing the profile",
        "Package installation failed",
    ],
}
NORMAL = [
    "Starting installer, one moment...",
    "anaconda 34.25.4.9-1.el9 for Red Hat Enterprise Linux 9.4 started.",
    "finish: subiquity/Install/install/curthooks: SUCCESS: configuring target",
    "  [.] Installing the base system",
    "Installing required packages (3/120)",
    "[  OK  ] Finished dracut-initqueue.service - dracut initqueue hook.",
    "Reached target Power-Off.",
]


@pytest.mark.parametrize(("distro_key", "lines"), list(FAILURES.items()))
def test_failure_patterns(distro_key: tuple[str, str], lines: list[str]) -> None:
    patterns = installer_failure_patterns(resolve(*distro_key))
    assert patterns
    for line in lines:
        assert any(p.search(line) for p in patterns), line
    for line in NORMAL:
        assert not any(p.search(line) for p in patterns), (distro_key, line)


@pytest.mark.parametrize(("distro_key", "lines"), list(FAILURES.items()))
def test_failure_regex_is_every_pattern_at_once(distro_key: tuple[str, str],
                                                lines: list[str]) -> None:
    """The one expression a build watches the console with: case-insensitive patterns
    stay case-insensitive, the others stay exact."""
    regex = installer_failure_regex(resolve(*distro_key))
    for line in lines:
        assert regex.search(line), line
    for line in NORMAL:
        assert not regex.search(line), (distro_key, line)


def test_failure_regex_keeps_each_patterns_case_rule() -> None:
    assert installer_failure_regex(resolve("debian", "12")).search("INSTALLATION STEP FAILED")
    rhel = installer_failure_regex(resolve("rhel", "9"))
    assert rhel.search("Traceback (most recent call last):")
    assert not rhel.search("traceback (most recent call last):")


def test_preseed_targets_the_first_virtio_disk_and_boots_with_azure_args() -> None:
    _, files = render("debian", "12")
    answers = _preseed(files["preseed.cfg"])
    assert answers["partman-auto/disk"] == ("string", "/dev/vda")
    opts = answers["debian-installer/add-kernel-opts"][1].split()
    assert "console=ttyS0" in opts and "net.ifnames=0" in opts
    # initramfs-tools sleeps the whole rootdelay at every boot: added by the Azure prep.
    assert not any(opt.startswith("rootdelay=") for opt in opts)


@pytest.mark.parametrize(("name", "hostname"), [
    ("demo", "demo"), ("Rocky_9.4", "Rocky-9-4"), ("ubuntu-24.04", "ubuntu-24-04"),
    ("a__b", "a-b"), ("x" * 63, "x" * 63), ("9-._", "9"),
])
def test_the_guest_hostname_is_one_dns_label(name: str, hostname: str) -> None:
    # d-i's netcfg asks again for a name with '_' (until install.timeout); '.' starts a domain.
    assert guest_hostname(name) == hostname


def test_every_answer_file_and_the_seed_get_the_dns_label(tmp_path: Path) -> None:
    for example in ("rocky", "debian", "ubuntu"):  # AutoYaST names no host
        text = (REPO / "examples" / f"{example}.toml").read_text()
        template = tmp_path / f"{example}.toml"
        template.write_text(re.sub(r'^name = ".*"$', 'name = "Gold_img.v2"', text, count=1,
                                   flags=re.M))
        out = tmp_path / f"r-{example}"
        assert main(["render", str(template), "--out", str(out)]) == 0
        lines = [line for p in out.iterdir() if p.suffix not in (".sh", ".xml")
                 for line in p.read_text().splitlines()
                 if "hostname" in line and "mirror" not in line]
        assert lines and all("Gold-img-v2" in line for line in lines), (example, lines)
