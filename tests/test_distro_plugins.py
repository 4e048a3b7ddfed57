"""The distro plugins: every registered class says every fact, and a new one that does not
is refused when its module is imported."""

from __future__ import annotations

import pkgutil
import re

import pytest

import distros
from builder.answers import (
    ANSWER_TEMPLATE_DIR,
    AnswerContext,
    answer_variables,
    render_answer_files,
)
from builder.models import Template
from distros import _NOT_PLUGINS, Distro, all_distros, register, resolve, unset_facts
from distros.debian import DebianLike
from distros.facts import PrepFacts

REGISTERED = sorted(all_distros(), key=lambda cls: cls.name)
EVERY_VERSION = [(cls, version) for cls in REGISTERED for version in cls.versions]


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.name)
def test_every_registered_distro_sets_every_fact(cls: type[Distro]) -> None:
    assert unset_facts(cls) == []
    # Set on the class or a family base, never just declared on Distro.
    for name in Distro.__annotations__:
        owner = next(klass for klass in cls.__mro__ if name in vars(klass))
        assert owner is not Distro or name == "aliases", name


def test_the_facts_checked_cover_the_installer_and_the_preparation() -> None:
    declared = set(Distro.__annotations__)
    assert {"installer_kernel", "answer_files", "answer_volume_label", "failure_patterns",
            "base_packages", "keymaps", "package_query", "initrd_lister",
            "network_style", "efi_vendor", "cloud_init_network"} <= declared


@pytest.mark.parametrize(("cls", "version"), EVERY_VERSION,
                         ids=[f"{c.name}-{v}" for c, v in EVERY_VERSION])
def test_every_version_has_its_behaviour(cls: type[Distro], version: str) -> None:
    distro = resolve(cls.name, version)
    facts = distro.prep_facts()
    assert isinstance(facts, PrepFacts)
    assert facts.family == cls.family and facts.label == distro.label
    args = distro.installer_args("SOME LABEL")
    assert args and all(arg and " " not in arg for arg in args)
    for pattern in cls.failure_patterns:
        re.compile(pattern)
    for name in cls.answer_files:
        assert (ANSWER_TEMPLATE_DIR / f"{name}.j2").is_file(), name
    assert isinstance(distro.agent_at_install, bool)


def test_families_share_their_base() -> None:
    names = {cls.name: cls for cls in REGISTERED}
    assert issubclass(names["debian"], DebianLike) and issubclass(names["ubuntu"], DebianLike)
    assert {cls.family for cls in REGISTERED} == {"rhel", "ubuntu", "debian", "suse"}


def test_the_installer_facts_say_what_the_family_comparisons_said() -> None:
    # They replace `family == "rhel"` (the build reads the ISO label) and
    # `family == "ubuntu"` (install.ubuntu_kernel applies).
    assert {cls.name for cls in REGISTERED if cls.installer_takes_iso_label} == {
        cls.name for cls in REGISTERED if cls.family == "rhel"}
    assert [cls.name for cls in REGISTERED if cls.azure_kernel_choice] == ["ubuntu"]
    # ... and `distro.name != "rhel"` (install.rhel_activation_key applies).
    assert [cls.name for cls in REGISTERED if cls.registers_subscription] == ["rhel"]


def test_a_plugin_that_leaves_a_fact_unset_is_refused() -> None:
    class Halfway(DebianLike):
        name = "halfway"
        pretty_name = "Halfway Linux"
        family = "debian"
        versions = ("1",)
        installer_kernel = "install/vmlinuz"
        installer_initrd = "install/initrd.gz"
        answer_files = ("preseed.cfg",)
        answer_volume_label = None
        agent_package = "waagent"
        network_style = "ifupdown"

    assert unset_facts(Halfway) == ["failure_patterns", "efi_vendor", "installer_args()"]
    with pytest.raises(TypeError, match="Halfway does not set: failure_patterns, efi_vendor"):
        register(Halfway)
    with pytest.raises(ValueError, match="unknown distro 'halfway'"):
        resolve("halfway", "1")


def test_a_complete_plugin_is_one_class() -> None:
    class Complete(DebianLike):
        name = "complete"
        pretty_name = "Complete Linux"
        family = "debian"
        versions = ("1",)
        installer_kernel = "install/vmlinuz"
        installer_initrd = "install/initrd.gz"
        answer_files = ("preseed.cfg",)
        answer_volume_label = None
        failure_patterns = (r"\[!!\]",)
        agent_package = "waagent"
        network_style = "ifupdown"
        efi_vendor = "complete"

        def installer_args(self, iso_label: str | None) -> tuple[str, ...]:
            return ("auto=true",)

    assert unset_facts(Complete) == []
    facts = Complete(Complete.parse_version("1")).prep_facts()
    assert (facts.efi_vendor, facts.network, facts.initrd_tool) == (
        "complete", "ifupdown", "initramfs-tools")


def test_every_plugin_module_is_found_and_registers_a_distro() -> None:
    # A new module in distros/ is loaded by name, without a list to extend.
    modules = {module.name for module in pkgutil.iter_modules(distros.__path__)}
    plugins = {cls.__module__.removeprefix("distros.") for cls in REGISTERED}
    assert plugins == modules - _NOT_PLUGINS
    assert [cls.name for cls in all_distros()][:2] == ["debian", "rhel"]  # by module name


@pytest.mark.parametrize(("name", "version", "keymap"), [
    ("sles", "15", "german"), ("opensuse-leap", "15", "german"),
    ("rhel", "9", "de"), ("debian", "12", "de"), ("ubuntu", "24.04", "de"),
])
def test_the_keymap_variable_is_the_plugins_name_for_the_layout(
        name: str, version: str, keymap: str) -> None:
    template = Template.model_validate({
        "name": "keymap", "source": {"iso": "/srv/x.iso", "checksum": "sha256:" + "0" * 64},
        "distro": {"name": name, "version": version}, "install": {"keyboard": "de"},
    })
    distro = resolve(name, version)
    context = AnswerContext(
        build_user="azbuild", ssh_public_key="ssh-ed25519 AAAAuser u",
        host_key_private="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"
                         "-----END OPENSSH PRIVATE KEY-----",
        host_key_public="ssh-ed25519 AAAAhost h", root_password_hash=None, firmware="bios",
        disk_size=30 * 1024**3)
    variables = answer_variables(distro, template, context)
    assert variables["keymap"] == keymap
    assert variables["suse_keymap"] == "german"  # AutoYaST's name, for every family as before
    if distro.family == "suse":
        assert "<keymap>german</keymap>" in render_answer_files(distro, template, context)[
            "autoinst.xml"]
