"""The requirements table (builder/requirements.py) and the places it drives."""

from __future__ import annotations

import fnmatch

from builder.azure_prep import prep_scripts
from builder.models import Azure
from builder.requirements import (
    AGENT_MODES,
    CLOUD_INIT_INSTANCE,
    GUEST_IDS,
    HISTORY_FILES,
    INSTALLER_LEFTOVERS,
    LEASE_DIRS,
    TITLES,
    arg_matches,
    kernel_args_for,
)
from distros import resolve


def test_ids_in_order() -> None:
    assert list(TITLES) == [f"R{n:02d}" for n in range(1, 16)]
    assert tuple(f"R{n:02d}" for n in range(3, 16)) == GUEST_IDS


def test_rootdelay_by_initrd_tool() -> None:
    debian, dracut = kernel_args_for("initramfs-tools"), kernel_args_for("dracut")
    assert "rootdelay=300" in dracut.required and "rootdelay=300" not in debian.required
    assert debian.always_removed == ("rootdelay=*",) and dracut.always_removed == ()
    assert kernel_args_for("something new") == dracut
    assert arg_matches("rootdelay=10", "rootdelay=*") and not arg_matches("rootdelay", "rhgb")


def test_every_mode_sets_the_same_keys_explicitly() -> None:
    for mode in AGENT_MODES.values():
        keys = [k for k, _ in mode.fixed] + list(mode.from_settings)
        assert len(keys) == len(set(keys))
        assert {"Provisioning.Agent", "ResourceDisk.Format", "ResourceDisk.EnableSwap"} <= set(keys)


def test_deprovision_removes_every_leak_the_check_looks_for() -> None:
    script = prep_scripts(resolve("rhel", "9"), Azure(), firmware="bios",
                          build_user="azbuild")["deprovision.sh"]
    words = script.replace("\\\n", " ").split()

    def removed(path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, w) for w in words if w.startswith("/"))

    for path in (*INSTALLER_LEFTOVERS.checked, *CLOUD_INIT_INSTANCE.checked):
        assert removed(path), path
    for name in HISTORY_FILES.checked:
        assert removed(f"/root/{name}") and removed(f"/home/user/{name}"), name
    for directory, pattern in LEASE_DIRS.items():
        assert removed(f"{directory}/{pattern.replace('*', 'x')}"), directory
    assert removed("/etc/ssh/ssh_host_ed25519_key")
