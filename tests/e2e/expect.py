"""What the end-to-end tests expect of a prepared image, shared by the tests that read one
(a real build's exported disk, a prepared chroot)."""

from __future__ import annotations

# R10 in waagent mode: every key the preparation writes, with its value.
WAAGENT_MODE = {
    "Provisioning.Agent": "waagent",
    "Provisioning.RegenerateSshHostKeyPair": "y",
    "ResourceDisk.Format": "y",
    "ResourceDisk.Filesystem": "ext4",
    "ResourceDisk.MountPoint": "/mnt/resource",
    "ResourceDisk.EnableSwap": "y",
    "ResourceDisk.SwapSizeMB": "2048",
}


def assert_waagent_mode(waagent_conf: str) -> None:
    """/etc/waagent.conf sets every R10 key explicitly, as the waagent mode wants it."""
    conf = dict(line.split("=", 1) for line in waagent_conf.splitlines()
                if "=" in line and not line.lstrip().startswith("#"))
    for key, wanted in WAAGENT_MODE.items():
        assert conf.get(key) == wanted, (key, conf.get(key))
